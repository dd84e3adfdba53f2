"""The training side of the run schema, read back from a real MLflow store: per-example test
outcomes, attention diagnostics that leave training alone, and training seconds that exclude
validation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from harness.config import RunConfig, resolve
from harness.models.lightning_module import AttentionTaskModule
from harness.tracking import MlflowRunLogger, experiment_id
from harness.train import RunResult, prepare, run_cell, train_run

TINY = {
    "model.d_model": 32,
    "model.n_layers": 1,
    "model.d_ff": 64,
    "model.d_k": 16,
    "train.batch_size": 32,
}
COPY = TINY | {"task.length": 5, "task.n_train": 500, "train.val_every": 20}


def _labelled_table(path: Path) -> Path:
    """Three classes of short texts of different lengths (so the batch has padding)."""
    words = {"cats": "meow purr", "dogs": "bark fetch tail wag", "fish": "swim fin"}
    rows = [
        {"text": f"The {w} story {' and' * (i % 4)} number {i}!", "label": label}
        for label, w in words.items()
        for i in range(40)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cell(task: str, tmp_path: Path) -> RunConfig:
    if task == "copy":
        overrides = COPY
    elif task == "text_cls":
        source = str(_labelled_table(tmp_path / "texts.jsonl"))
        overrides = TINY | {"task.source": source, "task.max_len": 16, "task.min_freq": 1}
    else:  # char_lm on the built-in corpus, short windows
        overrides = TINY | {"task.seq_len": 32, "task.n_train": 500}
    return resolve(task, "scaled_dot", "adam", lr=3e-3, steps=20, overrides=overrides)


def _outcomes(client: MlflowClient, run_id: str) -> dict[str, list]:
    return json.loads(Path(client.download_artifacts(run_id, "test_outcomes.json")).read_text())


@pytest.mark.parametrize("task", ["copy", "text_cls", "char_lm"])
def test_test_outcomes_add_up_to_the_test_metrics(
    task: str, tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    cfg = _cell(task, tmp_path)
    result = train_run(cfg, tracking_uri=tracking_uri, experiment="t")
    run = client.get_run(result.run_id)
    out = _outcomes(client, result.run_id)
    n_test = int(run.data.params["data.n_test"])
    assert set(out) == {"n_tokens", "correct", "loss_nats"}
    assert len(out["n_tokens"]) == len(out["correct"]) == len(out["loss_nats"]) == n_test
    assert all(0 <= c <= n for c, n in zip(out["correct"], out["n_tokens"], strict=True))
    assert all(v > 0 for v in out["loss_nats"])

    tokens = sum(out["n_tokens"])
    metrics = run.data.metrics
    assert sum(out["loss_nats"]) / tokens == pytest.approx(metrics["test/loss"], rel=1e-5)
    if task == "char_lm":
        assert set(out["n_tokens"]) == {32}  # every character of a window is scored
        bpc = sum(out["loss_nats"]) / tokens / math.log(2)
        assert bpc == pytest.approx(metrics["test/bpc"], rel=1e-5)
    else:
        assert set(out["n_tokens"]) == ({1} if task == "text_cls" else {5})
        assert sum(out["correct"]) / tokens == metrics["test/acc"]


def _start(client: MlflowClient, cfg: RunConfig) -> MlflowRunLogger:
    exp = experiment_id(client, "t")
    return MlflowRunLogger.start_run(client, exp, cfg.run_name, cfg.flat_params(), {})


def test_test_outcomes_are_in_test_split_order(client: MlflowClient, tmp_path: Path) -> None:
    cfg = _cell("copy", tmp_path)
    _, data, module = prepared = prepare(cfg)
    result = run_cell(cfg, _start(client, cfg), accelerator="cpu", prepared=prepared)
    out = _outcomes(client, result.run_id)
    # The trained module, asked directly about test example i, agrees with entry i.
    test = data.test
    with torch.no_grad():
        module.eval()
        logits, _ = module({"x": test.x, "score_mask": test.score_mask})
    hits = (logits.argmax(-1) == test.y[test.score_mask]).reshape(len(test), -1)
    assert out["correct"] == hits.sum(dim=1).tolist()
    assert 0 < sum(out["correct"]) < sum(out["n_tokens"])  # the order is visible in the data


def _run_copy(
    client: MlflowClient, cfg: RunConfig, module_class: type[AttentionTaskModule], **attrs: Any
) -> RunResult:
    """A copy cell trained with a module of `module_class`, initialised as `prepare` does."""
    task, data, _ = prepare(cfg)
    torch.manual_seed(cfg.seed)
    module = module_class(cfg, task, data)
    for key, value in attrs.items():
        setattr(module, key, value)
    return run_cell(cfg, _start(client, cfg), accelerator="cpu", prepared=(task, data, module))


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_attention_diagnostics_do_not_change_training(client: MlflowClient) -> None:
    # With dropout on, any draw of the global RNG by the diagnostics would change the masks
    # of every later training step, and with them the losses.
    overrides = COPY | {"model.dropout": 0.2, "train.val_every": 10}
    cfg = resolve("copy", "multihead", "adam", lr=3e-3, steps=30, overrides=overrides)
    on = _run_copy(client, cfg, AttentionTaskModule)
    off = _run_copy(client, cfg, AttentionTaskModule, attention_diagnostics=False)

    steps = [s for s, _ in _history(client, on.run_id, "attn/entropy/layer0")]
    assert steps == [0, 10, 20, 30]
    assert not _history(client, off.run_id, "attn/entropy/layer0")
    losses = _history(client, on.run_id, "train/loss")
    assert len(losses) == 30
    assert losses == _history(client, off.run_id, "train/loss")
    assert on.metrics == off.metrics


SLEEP = 0.5  # seconds per validation: far more than a tiny training step


class SlowValidation(AttentionTaskModule):
    """Real, slow work where the attention diagnostics run: at step 0 and in each validation."""

    def on_fit_start(self) -> None:
        super().on_fit_start()
        time.sleep(SLEEP)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        time.sleep(SLEEP)


@pytest.fixture
def one_thread() -> Any:
    """One torch thread, as a launcher's worker on a shared machine has: with the default two,
    OpenMP threads spinning against other busy processes made tiny steps 5-20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_seconds_exclude_validation(client: MlflowClient, one_thread: None) -> None:
    overrides = COPY | {"train.val_every": 1, "train.log_every": 5}
    cfg = resolve("copy", "scaled_dot", "adam", lr=3e-3, steps=10, overrides=overrides)
    started = time.perf_counter()
    result = _run_copy(client, cfg, SlowValidation)
    wall = time.perf_counter() - started
    assert len(_history(client, result.run_id, "val/acc")) == 10
    assert wall > 11 * SLEEP  # the sleeps really happened, inside this run

    windows = _history(client, result.run_id, "time/step_ms")
    assert [s for s, _ in windows] == [5, 10]
    training_seconds = sum(5 * ms / 1000 for _, ms in windows)
    # Counting the validations would make this at least 10 * SLEEP = 5 s; ten steps of this
    # model take about 0.3 s on one thread of a 2-core machine with a load average of 6.
    assert training_seconds < 10 * SLEEP / 2, training_seconds

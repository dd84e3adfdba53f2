"""The training side of the run schema, read back from a real MLflow store: per-example test
outcomes, the metric tags, a LightningModule given a ready-made model and optimizer, attention
diagnostics that leave training alone, and training seconds that exclude validation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

from harness import schema
from harness.config import RunConfig, resolve
from harness.models.lightning_module import AttentionTaskModule
from harness.models.transformer import AttentionModel
from harness.tracking import MlflowRunLogger, experiment_id
from harness.train import RunResult, prepare, run_cell, train_run
from tasks import get_task

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
    metric = get_task(task).metric
    result = train_run(cfg, tracking_uri=tracking_uri, experiment="t")
    run = client.get_run(result.run_id)
    out = _outcomes(client, result.run_id)
    n_test = int(run.data.params[schema.N_TEST])
    assert set(out) == {"n_tokens", "metric_sum", "loss_nats"}
    assert len(out["n_tokens"]) == len(out["metric_sum"]) == len(out["loss_nats"]) == n_test
    assert all(v > 0 for v in out["loss_nats"])
    lo, hi = metric.bounds  # each example's own metric lies in the bounds
    assert all(lo <= s / n <= hi for s, n in zip(out["metric_sum"], out["n_tokens"], strict=True))

    tokens = sum(out["n_tokens"])
    metrics = run.data.metrics
    logged = metrics[schema.test_metric(metric.name)]
    assert logged == result.metrics[schema.test_metric(metric.name)]
    assert sum(out["loss_nats"]) / tokens == pytest.approx(metrics["test/loss"], rel=1e-6)
    from_outcomes = sum(out["metric_sum"]) / tokens
    if all(float(v).is_integer() for v in out["metric_sum"]):  # a count: exact
        assert from_outcomes == logged
    else:  # sums of float32 values, added in another order on the device
        assert from_outcomes == pytest.approx(logged, rel=1e-6)
    if task == "char_lm":
        assert set(out["n_tokens"]) == {32}  # every character of a window is scored
        bits = [n / math.log(2) for n in out["loss_nats"]]  # per example: its nats in bits
        assert out["metric_sum"] == pytest.approx(bits, rel=1e-6)
    else:
        assert set(out["n_tokens"]) == ({1} if task == "text_cls" else {5})

    tags = run.data.tags  # how the report reads the metric
    assert tags[schema.METRIC] == metric.name and tags[schema.METRIC_LABEL] == metric.label
    assert tags[schema.METRIC_BOUNDS] == metric.bounds_text
    assert tags[schema.HIGHER_IS_BETTER] == str(metric.higher_is_better).lower()
    assert float(tags[schema.TARGET]) == get_task(task).target


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
    assert out["metric_sum"] == hits.sum(dim=1).tolist()  # accuracy: correct positions
    assert 0 < sum(out["metric_sum"]) < sum(out["n_tokens"])  # the order is visible in the data


def _run_copy(
    client: MlflowClient, cfg: RunConfig, module_class: type[AttentionTaskModule], **attrs: Any
) -> RunResult:
    """A copy cell trained with a module of `module_class`, with the model and optimizer
    `prepare` builds, handed over ready-made."""
    task, data, built = prepare(cfg)
    module = module_class(
        built.model,
        task=task,
        optimizer=built.optimizer_factory,
        scheduler=built.scheduler_factory,
        grad_clip=built.grad_clip,
    )
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


def test_module_trains_a_ready_made_model_with_a_ready_made_optimizer(
    client: MlflowClient,
) -> None:
    """Any model with AttentionModel's forward and any optimizer factory: here plain SGD at a
    constant rate (no scheduler), built outside the harness's optimizer registry."""
    cfg = resolve("copy", "scaled_dot", "adam", lr=3e-3, steps=40, overrides=COPY)
    task, data, _ = prepare(cfg)
    torch.manual_seed(0)
    model = AttentionModel(
        vocab_size=data.vocab_size, n_outputs=data.n_outputs, max_len=data.seq_len,
        head=task.kind, causal=task.causal, attention="scaled_dot", attention_params={},
        d_model=32, n_layers=1, d_ff=64, d_k=16, dropout=0.0,
    )  # fmt: skip
    module = AttentionTaskModule(
        model, task=task, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.25)
    )
    result = run_cell(cfg, _start(client, cfg), accelerator="cpu", prepared=(task, data, module))
    assert result.outcome == "ok" and module.model is model
    assert isinstance(module.trainer.optimizers[0], torch.optim.SGD)
    assert {value for _, value in _history(client, result.run_id, schema.LR_METRIC)} == {0.25}
    losses = [value for _, value in _history(client, result.run_id, schema.TRAIN_LOSS)]
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5])
    assert schema.test_metric(task.metric.name) in result.metrics


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

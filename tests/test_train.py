"""Real training runs recorded in a real MLflow store: the run schema, learning, divergence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from harness import schema
from harness.config import resolve
from harness.models.attention import ATTENTION, Attention, ScaledDotAttention
from harness.train import train_run
from tasks import get_task
from tasks.cache import build_data

# A small copy problem every attention kind learns in a few dozen steps.
SMALL = {"task.length": 5, "task.n_train": 2000, "train.val_every": 40, "train.log_every": 10}


def _run(tracking_uri: str, attention: str = "multihead", steps: int = 80, **kw):
    cfg = resolve(
        "copy",
        attention,
        kw.pop("optimizer", "adam"),
        lr=kw.pop("lr", 3e-3),
        steps=steps,
        overrides=SMALL | kw.pop("overrides", {}),
    )
    return cfg, train_run(cfg, tracking_uri=tracking_uri, experiment="t", **kw)


def _history(client: MlflowClient, run_id: str, key: str) -> list:
    return client.get_metric_history(run_id, key)


def test_run_records_the_whole_schema(tracking_uri: str, client: MlflowClient) -> None:
    cfg, result = _run(tracking_uri, steps=50)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "copy/multihead/adam/lr=0.003/seed=0"

    params = run.data.params
    for key in ("task", "attention", "optimizer", "lr", "seed", "phase", "steps"):
        assert key in params
    assert params["task"] == "copy" and params["lr"] == "0.003" and params["phase"] == "final"
    assert params["model.d_model"] == "64" and params["attention.n_heads"] == "4"
    assert params["task.length"] == "5" and params["optim.beta1"] == "0.9"
    facts = {k: v for k, v in params.items() if k.startswith("data.") or k == "model.n_params"}
    assert {k: v for k, v in params.items() if k not in facts} == cfg.flat_params()
    # split sizes: copy trains on task.n_train sequences, validates and tests on fixed sets
    assert params["data.n_train"] == "2000"
    assert int(params["data.n_val"]) > 0 and int(params["data.n_test"]) > 0
    assert int(params["model.n_params"]) > 10_000  # d_model 64, 2 layers, d_ff 256

    tags = run.data.tags
    assert tags["harness.cell_id"] == cfg.cell_id and len(cfg.cell_id) == 16
    assert tags["harness.phase"] == "final" and tags["harness.outcome"] == "ok"
    assert tags["harness.grid"] == "adhoc" and tags["harness.version"]

    loss = _history(client, result.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, 51))  # one point per step
    assert len(_history(client, result.run_id, "grad_norm")) == 50
    for key in ("lr", "time/step_ms", "throughput/tokens_per_s"):
        points = _history(client, result.run_id, key)
        assert [m.step for m in points] == [10, 20, 30, 40, 50], key
        assert all(m.value > 0 for m in points), key
    assert [m.step for m in _history(client, result.run_id, "val/acc")] == [40, 50]
    for layer in (0, 1):  # step 0 and every validation, on the same fixed batch
        for stat in ("logit_std", "entropy"):
            points = _history(client, result.run_id, f"attn/{stat}/layer{layer}")
            assert [m.step for m in points] == [0, 40, 50], (stat, layer)
            assert all(m.value > 0 for m in points), (stat, layer)
    for key in ("val/loss", "test/loss", "test/acc"):
        assert _history(client, result.run_id, key), key
    assert run.data.metrics["test/acc"] == pytest.approx(result.metrics["test/acc"])

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.json", "attention_maps.png", "test_outcomes.json"} <= artifacts
    assert schema.NO_ATTENTION_MAPS not in tags
    config = Path(client.download_artifacts(result.run_id, "config.json")).read_text()
    assert json.loads(config) == cfg.to_dict()
    png = Path(client.download_artifacts(result.run_id, "attention_maps.png")).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_cell_id_is_stable_and_changes_with_the_cell() -> None:
    a = resolve("copy", "additive", "sgd", lr=0.1, seed=1)
    assert a.cell_id == resolve("copy", "additive", "sgd", lr=0.1, seed=1).cell_id
    assert a.cell_id != resolve("copy", "additive", "sgd", lr=0.1, seed=2).cell_id
    assert a.cell_id != resolve("copy", "additive", "sgd", lr=0.3, seed=1).cell_id
    changed = resolve("copy", "additive", "sgd", lr=0.1, seed=1, overrides={"model.d_k": 32})
    assert a.cell_id != changed.cell_id


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_every_attention_kind_learns(
    tracking_uri: str, client: MlflowClient, attention: str
) -> None:
    _, result = _run(tracking_uri, attention, steps=120)
    loss = [m.value for m in _history(client, result.run_id, "train/loss")]
    start, end = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
    assert end < 0.5 * start, f"{attention}: train loss {start:.3f} -> {end:.3f}"
    # chance is 1/5 on a 5-symbol copy; learning shows well above it
    assert result.metrics["test/acc"] > 0.5, result.metrics


def test_same_seed_same_result_on_cpu(tracking_uri: str) -> None:
    _, a = _run(tracking_uri, "additive", steps=30, accelerator="cpu")
    _, b = _run(tracking_uri, "additive", steps=30, accelerator="cpu")
    assert a.metrics == b.metrics


def test_training_leaves_the_cached_data_as_a_fresh_build_gives_it(tracking_uri: str) -> None:
    """Workers keep built data for the next cell (tasks.cache): a run must not change it."""
    cfg, _ = _run(tracking_uri, "multihead", steps=20)
    task = get_task(cfg.task)
    trained_on = build_data(task, cfg.task_params, cfg.seed)  # the entry the run used
    fresh = task.build(cfg.task_params, cfg.seed)
    for name in ("train", "val", "test"):
        used, built = getattr(trained_on, name), getattr(fresh, name)
        assert torch.equal(used.x, built.x) and torch.equal(used.y, built.y), name
        assert torch.equal(used.score_mask, built.score_mask), name
    assert trained_on.info == fresh.info


def test_divergence_stops_early_and_finishes(tracking_uri: str, client: MlflowClient) -> None:
    _, result = _run(tracking_uri, "scaled_dot", steps=400, optimizer="sgd", lr=1e4)
    run = client.get_run(result.run_id)
    assert result.outcome == "diverged"
    assert run.info.status == "FINISHED" and run.data.tags["harness.outcome"] == "diverged"
    diverged_at = int(run.data.tags["harness.diverged_at_step"])
    steps = len(_history(client, result.run_id, "train/loss"))
    assert diverged_at <= steps < 400  # stopped within one read-back window
    assert not _history(client, result.run_id, "test/acc")


def test_a_cell_reports_the_steps_it_really_trained_now_and_then(
    tracking_uri: str, client: MlflowClient
) -> None:
    """What a worker tells the progress bar: after the first step, at most every few
    seconds, and at the end; a diverged run's last report is the steps it trained."""
    from harness.progress import REPORT_EVERY
    from harness.tracking import MlflowRunLogger, experiment_id, run_tags
    from harness.train import run_cell

    cfg = resolve("copy", "scaled_dot", "sgd", lr=1e4, steps=400, overrides=SMALL)
    logger = MlflowRunLogger.start_run(
        client, experiment_id(client, "t"), cfg.run_name, cfg.flat_params(), run_tags(cfg, "t")
    )
    reports: list[tuple[int, float]] = []
    result = run_cell(cfg, logger, accelerator="cpu", report=lambda *r: reports.append(r))
    assert result.outcome == "diverged"
    trained = len(_history(client, result.run_id, "train/loss"))
    assert reports[0][0] == 1 and reports[-1][0] == trained < 400
    assert reports == sorted(reports) and reports[-1][1] <= result.fit_seconds
    assert len(reports) <= result.fit_seconds / REPORT_EVERY + 2


class KeepsWeights(ScaledDotAttention):
    """Scaled dot product that never returns its weights, as a linear-attention kind would."""

    def attend(self, q, k, v, allowed, causal_only, need_weights):  # type: ignore[no-untyped-def]
        out, _ = super().attend(q, k, v, allowed, causal_only, False)
        return out, None


class RefusesWeights(ScaledDotAttention):
    """Scaled dot product that raises when asked for its weights."""

    def attend(self, q, k, v, allowed, causal_only, need_weights):  # type: ignore[no-untyped-def]
        if need_weights:
            raise NotImplementedError("this kind never materialises its weights")
        return super().attend(q, k, v, allowed, causal_only, False)


class LinearAttention(Attention):
    """Linear attention (Katharopoulos et al. 2020): phi(Q) (phi(K)^T V), phi = elu + 1. It has
    no L x L weights and no pre-softmax scores: only `attend`, not `scores`."""

    def attend(self, q, k, v, allowed, causal_only, need_weights):  # type: ignore[no-untyped-def]
        q, k = F.elu(q) + 1, F.elu(k) + 1
        if allowed is not None:  # masked: keys a query may not see contribute nothing
            a = (q @ k.transpose(-2, -1)) * allowed
            return (a @ v) / a.sum(-1, keepdim=True).clamp_min(1e-6), None
        num = q @ (k.transpose(-2, -1) @ v)  # never an L x L matrix
        return num / (q @ k.sum(-2).unsqueeze(-1)).clamp_min(1e-6), None


def test_a_kind_with_no_scores_trains_without_diagnostics_or_maps(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    kind = dataclasses.replace(ATTENTION["scaled_dot"], name="linear", cls=LinearAttention)
    monkeypatch.setitem(ATTENTION, kind.name, kind)  # registered for this test only
    _, result = _run(tracking_uri, kind.name, steps=20)
    run = client.get_run(result.run_id)
    assert result.outcome == "ok" and run.info.status == "FINISHED"
    assert "no pre-softmax scores" in run.data.tags[schema.NO_ATTENTION_STATS]
    assert "no attention weights" in run.data.tags[schema.NO_ATTENTION_MAPS]
    assert not _history(client, result.run_id, schema.attn_entropy(0))
    assert schema.TEST_OUTCOMES in {a.path for a in client.list_artifacts(result.run_id)}


@pytest.mark.parametrize("cls", [KeepsWeights, RefusesWeights])
def test_a_kind_without_weights_finishes_without_attention_maps(
    tracking_uri: str, client: MlflowClient, monkeypatch: pytest.MonkeyPatch, cls: type
) -> None:
    kind = dataclasses.replace(ATTENTION["scaled_dot"], name="no_weights", cls=cls)
    monkeypatch.setitem(ATTENTION, kind.name, kind)  # registered for this test only
    _, result = _run(tracking_uri, kind.name, steps=20)
    run = client.get_run(result.run_id)
    assert result.outcome == "ok" and run.info.status == "FINISHED"
    assert run.data.tags[schema.OUTCOME] == "ok"
    assert "no attention weights" in run.data.tags[schema.NO_ATTENTION_MAPS]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert schema.ATTENTION_MAPS not in artifacts
    assert {schema.CONFIG_JSON, schema.TEST_OUTCOMES} <= artifacts
    assert _history(client, result.run_id, schema.attn_entropy(0))  # diagnostics still work

"""What `collect` downloads beyond the list of runs: metric histories, per-example test
outcomes and artifacts, several requests at a time (they wait on I/O, not on Python)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness import schema

HISTORY_THREADS = 8  # concurrent get_metric_history calls and downloads


def _history_keys(metric: str, attn_keys: Iterable[str]) -> list[str]:
    return [schema.val_metric(metric), schema.STEP_MS, schema.THROUGHPUT, *attn_keys]


def history_requests(runs: pd.DataFrame) -> int:
    return sum(len(_history_keys(m, a)) for m, a in zip(runs.metric, runs.attn_keys, strict=True))


def offset(
    progress: Callable[[int, int], None] | None, before: int, total: int
) -> Callable[[int, int], None] | None:
    """One progress bar over several fetches: the `before` done earlier count too."""
    if progress is None:
        return None
    return lambda done, _: progress(before + done, total)


def fetch_histories(
    client: MlflowClient,
    runs: pd.DataFrame,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """(run_id, key, step, value) of each run's validation metric, step time, throughput and
    attention diagnostics."""
    attn = runs.attn_keys if "attn_keys" in runs else [()] * len(runs)
    requests = [
        (run_id, key)
        for run_id, metric, keys in zip(runs.run_id, runs.metric, attn, strict=True)
        for key in _history_keys(metric, keys)
    ]
    columns = ["run_id", "key", "step", "value"]
    if not requests:
        return pd.DataFrame(columns=columns)
    rows: list[tuple[str, str, int, float]] = []

    def one(request: tuple[str, str]) -> list[tuple[str, str, int, float]]:
        run_id, key = request
        return [(run_id, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(HISTORY_THREADS) as pool:
        for done, points in enumerate(pool.map(one, requests), start=1):
            rows.extend(points)
            if progress:
                progress(done, len(requests))
    return pd.DataFrame(rows, columns=columns)


def fetch_outcomes(
    client: MlflowClient,
    runs: pd.DataFrame,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> the arrays of its `test_outcomes.json`, for the runs that have a readable one
    (downloaded HISTORY_THREADS at a time; a run without it is left out, not an error).

    Only runs of the schema that stores the file are asked (they record `data.n_test`, logged
    with it): asking an older run for a file it cannot have costs a failed download each."""
    runs = runs[runs.n_test.notna()] if "n_test" in runs else runs
    if runs.empty:
        return {}
    _no_download_bars()
    out: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as scratch:

        def one(run_id: str, metric: str) -> tuple[str, dict[str, np.ndarray] | None]:
            folder = os.path.join(scratch, run_id)
            os.makedirs(folder, exist_ok=True)
            local = download_artifact(client, run_id, schema.TEST_OUTCOMES, folder)
            return run_id, parse_outcomes(local, metric) if local else None

        metrics = runs.metric if "metric" in runs else [""] * len(runs)
        with ThreadPoolExecutor(HISTORY_THREADS) as pool:
            pairs = pool.map(one, runs.run_id, metrics)
            for done, (run_id, parsed) in enumerate(pairs, start=1):
                if parsed is not None:
                    out[run_id] = parsed
                if progress:
                    progress(done, len(runs))
    return out


def parse_outcomes(path: str, metric: str = "") -> dict[str, np.ndarray] | None:
    """The arrays of a `test_outcomes.json` (`n_tokens`, `metric_sum`, `loss_nats`); an older
    file without `metric_sum` gets it from what it holds for `metric` (schema.legacy_metric_sum).
    None when it is unreadable or inconsistent: the run's test-set uncertainty is then left
    out, as for a run without the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        sums = raw["metric_sum"] if "metric_sum" in raw else schema.legacy_metric_sum(raw, metric)
        arrays = {
            "n_tokens": np.asarray(raw["n_tokens"], dtype=float),
            "metric_sum": np.asarray(sums, dtype=float),
            "loss_nats": np.asarray(raw.get("loss_nats", []), dtype=float),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    n = arrays["n_tokens"].size
    if arrays["n_tokens"].ndim != 1 or arrays["metric_sum"].shape != (n,) or n == 0:
        return None
    if arrays["loss_nats"].size != n:
        arrays["loss_nats"] = np.full(n, math.nan)
    return arrays


def artifact_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    _no_download_bars()
    try:
        names = {a.path for a in client.list_artifacts(run_id)}
        if path not in names:
            return None
        local = client.download_artifacts(run_id, path)
    except (MlflowException, OSError):
        return None
    with open(local, encoding="utf-8") as handle:
        return handle.read()


def download_artifact(client: MlflowClient, run_id: str, path: str, folder: str) -> str | None:
    """Download one artifact of a run into `folder`; None when the run has no such file."""
    _no_download_bars()
    try:
        return client.download_artifacts(run_id, path, folder)
    except (MlflowException, OSError):
        return None


def _no_download_bars() -> None:
    """MLflow draws a tqdm bar per artifact download; the report has its own progress bar."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

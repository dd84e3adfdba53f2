"""The accuracy targets at default settings: real full-length runs, so marked slow.

`make test-slow` (and CI) runs them; `pytest -m slow -s` prints each run's figures.
"""

from __future__ import annotations

import pytest

from harness.config import resolve
from harness.models.attention import ATTENTION
from harness.train import train_run

pytestmark = pytest.mark.slow


def _train(tracking_uri: str, task: str, attention: str) -> dict[str, float]:
    cfg = resolve(task, attention, "adam")
    result = train_run(cfg, tracking_uri=tracking_uri, experiment="targets", accelerator="cpu")
    figures = dict(result.metrics) | {"chance": float(result.data_info["chance"])}
    print(f"\n{cfg.run_name} steps={cfg.steps} {result.seconds:.0f}s {figures}")
    assert result.outcome == "ok"
    return figures


@pytest.mark.parametrize("attention", sorted(ATTENTION))
def test_copy_reaches_099_with_every_attention_kind(tracking_uri: str, attention: str) -> None:
    assert _train(tracking_uri, "copy", attention)["test/acc"] >= 0.99


@pytest.mark.parametrize("task", ["reverse", "assoc_recall"])
def test_multihead_adam_reaches_095(tracking_uri: str, task: str) -> None:
    assert _train(tracking_uri, task, "multihead")["test/acc"] >= 0.95


def test_char_lm_beats_the_unigram_entropy_clearly(tracking_uri: str) -> None:
    figures = _train(tracking_uri, "char_lm", "multihead")  # chance: the unigram model's bpc
    assert figures["test/bpc"] < figures["chance"] - 1.0

"""An optimizer that blows up inside a grid: the cell ends early as a diverged run, the grid
goes on and exits 0, and `harness status` and the report say so."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from _grids import cells, run_grid, steps_of, write_grid
from mlflow import MlflowClient

from harness.cli import main

STEPS = 100


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
def test_sgd_at_lr_100_diverges_within_steps_the_grid_finishes_and_the_report_lists_it(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_grid(
        tmp_path,
        "blowup",
        attention=["dot"],
        optimizers=[{"name": "adam", "lr": 0.003}, {"name": "sgd", "lr": 100.0}],
        seeds=[0],
        budget={"steps": STEPS, "val_every": 50},
    )
    assert run_grid(path, tracking_uri, "--workers", "2") == 0  # diverged counts as done
    runs = {r.data.params["optimizer"]: r for r in cells(client, "blowup")}
    assert sorted(runs) == ["adam", "sgd"]

    diverged = runs["sgd"]
    assert diverged.info.status == "FINISHED"
    assert diverged.data.tags["harness.outcome"] == "diverged"
    losses = steps_of(client, diverged, "train/loss")
    at = int(diverged.data.tags["harness.diverged_at_step"])
    # stopped at the read-back window (log_every = 10 steps) where the loss went non-finite
    assert losses == list(range(1, len(losses) + 1)) and at <= len(losses) <= 20
    assert "test/acc" not in diverged.data.metrics

    ok = runs["adam"]
    assert (ok.info.status, ok.data.tags["harness.outcome"]) == ("FINISHED", "ok")
    assert steps_of(client, ok, "train/loss") == list(range(1, STEPS + 1))
    assert steps_of(client, ok, "test/acc") == [STEPS]

    capsys.readouterr()
    assert main(["status", str(path), "--tracking-uri", tracking_uri]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["final", "1", "1", "0", "0", "0"] in rows  # done, diverged, failed, running, pending

    out = tmp_path / "report"
    assert main(["report", "blowup", "--tracking-uri", tracking_uri, "--out", str(out),
                 "--format", "html", "--no-progress"]) == 0  # fmt: skip
    html = (out / "report.html").read_text()
    assert _table(html, "diverged") == [[diverged.info.run_name, "final", str(at)]]
    assert _table(html, "failed") == []  # a diverged run is not a failure


def _table(html: str, css_class: str) -> list[list[str]]:
    """The text of each body row of the report's <table class="CSS_CLASS ...">."""
    parser = _Rows(css_class)
    parser.feed(html)
    return parser.rows


class _Rows(HTMLParser):
    def __init__(self, css_class: str) -> None:
        super().__init__()
        self.css_class, self.rows = css_class, []
        self.inside = self.in_body = self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.inside = self.css_class in (dict(attrs).get("class") or "").split()
        elif self.inside and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append([])
        elif self.in_body and tag == "td":
            self.rows[-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self.in_cell = False
        elif tag == "table":
            self.inside = self.in_body = False

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.rows[-1][-1] += data.strip()

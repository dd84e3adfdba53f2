"""`harness report` when its folder cannot be written, or when it is stopped half-way: one line
naming the folder, exit 2, no report file left that looks complete, no temporary folder left,
and an earlier report in the folder either untouched or wholly replaced, never mixed."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reports import make_experiment, report_files
from mlflow import MlflowClient

from harness.cli import main
from harness.errors import UserError
from harness.report import build_report
from harness.report.output import replace


def _report(uri: str, out: Path, *extra: str) -> int:
    return main(
        ["report", "exp", "--tracking-uri", uri, "--out", str(out), "--no-progress", *extra]
    )


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_an_out_folder_under_a_file_exits_2_and_writes_nothing(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_experiment(client, "exp")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    before = report_files(tmp_path)
    out = blocker / "reports" / "exp"
    assert _report(tracking_uri, out) == 2
    assert _one_error_line(capsys) == f"error: --out {out}: {blocker} is a file, not a folder"
    assert report_files(tmp_path) == before  # no report, no temporary folder
    assert blocker.read_text() == "a file, not a folder"


def test_an_out_path_that_is_a_file_exits_2_and_leaves_the_file(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_experiment(client, "exp")
    out = tmp_path / "report.html"
    out.write_text("mine")
    before = report_files(tmp_path)
    assert _report(tracking_uri, out) == 2
    assert _one_error_line(capsys) == f"error: --out {out}: exists and is not a folder"
    assert report_files(tmp_path) == before and out.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_folder_exits_2_and_keeps_the_earlier_report(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_experiment(client, "exp")
    out = tmp_path / "out"
    assert _report(tracking_uri, out, "--format", "html") == 0
    capsys.readouterr()
    old = _digest(out)
    out.chmod(0o555)
    try:
        assert _report(tracking_uri, out, "--format", "html") == 2
    finally:
        out.chmod(0o755)
    assert _one_error_line(capsys) == f"error: --out {out}: no permission to write in {out}"
    assert _digest(out) == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_new_report_replaces_every_file_of_the_earlier_one(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An HTML-only report over an HTML + PDF one leaves no stale PDF beside the new HTML, and
    files of the user's own in the folder stay."""
    make_experiment(client, "exp")
    out = tmp_path / "out"
    assert _report(tracking_uri, out) == 0
    assert {"report.html", "report.pdf", "figures"} <= report_files(out)
    (out / "notes.txt").write_text("mine")
    assert _report(tracking_uri, out, "--format", "html") == 0
    files = report_files(out)
    assert "report.pdf" not in files and {"report.html", "notes.txt", "figures"} <= files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder


def test_a_failed_move_puts_the_earlier_report_back(tmp_path: Path) -> None:
    """The last step, moving the new files in, fails half-way (a file it expects is missing):
    the files already moved go back, and the folder holds the earlier report, whole."""
    out, work = tmp_path / "out", tmp_path / ".work"
    for folder, text in ((out, "old"), (work, "new")):
        (folder / "figures").mkdir(parents=True)
        (folder / "figures" / "heatmap-copy.png").write_text(text)
        (folder / "report.html").write_text(text)
    (out / "report.pdf").write_text("old")
    old = _digest(out)
    with pytest.raises(FileNotFoundError):
        replace(work, out, ["figures", "report.html", "report.pdf"])  # work has no PDF
    assert _digest(out) == old
    assert (work / "report.html").read_text() == "new"  # moved back where it came from


def _stopped_while_drawing(uri: str, out: Path, sig: signal.Signals) -> tuple[int, str]:
    """`harness report` in its own process, sent `sig` once it has drawn its first figure into
    its temporary folder; (exit code, stderr). Tried again (at most 3 times) in the rare case
    the report finished before the signal arrived."""
    command = [
        sys.executable,
        "-m",
        "harness",
        "report",
        "exp",
        "--tracking-uri",
        uri,
        "--out",
        str(out),
        "--no-progress",
    ]
    for _ in range(3):
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 120
            while not list(out.parent.glob(f".{out.name}-*/figures/*.png")) and proc.poll() is None:
                assert time.monotonic() < deadline, "the report never started drawing"
                time.sleep(0.01)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        if proc.returncode != 0:
            return proc.returncode, err
    raise AssertionError("the report always finished before the signal")


def test_a_report_killed_half_way_leaves_the_earlier_one_whole(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    """SIGKILL while the new report is being drawn: the earlier report is untouched and nothing
    of the new one is in the folder (only a hidden temporary folder is left beside it)."""
    make_experiment(client, "exp")
    out = tmp_path / "out"
    assert _report(tracking_uri, out) == 0
    old = _digest(out)
    code, _ = _stopped_while_drawing(tracking_uri, out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert _digest(out) == old


def test_ctrl_c_during_a_report_exits_130_and_leaves_no_trace(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    make_experiment(client, "exp")
    out = tmp_path / "out"
    code, err = _stopped_while_drawing(tracking_uri, out, signal.SIGINT)
    assert code == 130, err
    assert err.strip().splitlines() == [f"interrupted: no report written; {out} is as it was"]
    assert not out.exists() and not list(tmp_path.glob(".out-*"))


def test_build_report_turns_a_write_error_into_one_user_error(
    client: MlflowClient, tmp_path: Path
) -> None:
    """The same without the command line's early check: the error of the file system, named."""
    make_experiment(client, "exp")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(UserError) as info:
        build_report(client, "exp", blocker / "out", formats=("html",))
    assert (
        str(info.value) == f"cannot write the report to {blocker / 'out'}: File exists ({blocker})"
    )

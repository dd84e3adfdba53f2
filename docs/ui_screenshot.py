"""The README's screenshot of the MLflow UI: a grid's runs as `harness ui EXPERIMENT` opens them.

    .venv/bin/python docs/ui_screenshot.py [--grid grids/quick.yaml] [--tracking-uri URI]

Runs the grid (`harness run`; cells that already finished in the store are skipped), starts
`harness ui` on it, opens the address it prints in headless Chromium (`chromium`, or the
`--chromium` given) and saves the page as docs/ui-runs.png, cut at the left edge of MLflow's
assistant panel and reduced to 64 colours. Stops the UI with SIGTERM, as a user's shell would.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=ROOT / "grids" / "quick.yaml")
    parser.add_argument("--tracking-uri", help="store to run the grid in (default: a new one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui-runs.png")
    parser.add_argument("--port", type=int, default=5097)
    parser.add_argument("--size", default="2000,760", help="browser window, W,H pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ui-screenshot-"))
    uri = args.tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    name = yaml.safe_load(args.grid.read_text())["name"]
    harness = [sys.executable, "-m", "harness"]
    subprocess.run([*harness, "run", str(args.grid.resolve()), "--tracking-uri", uri],
                   cwd=folder, check=True)  # fmt: skip
    ui = subprocess.Popen(
        [*harness, "ui", name, "--port", str(args.port), "--tracking-uri", uri],
        cwd=folder, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = re.search(r"http://\S+", ui.stdout.readline()).group(0)
        print(url)
        wait_for_port(args.port, ui)
        raw = folder / "raw.png"
        subprocess.run(
            [args.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={args.size}", "--virtual-time-budget=30000",
             f"--screenshot={raw}", url],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    image = Image.open(raw).convert("RGB")
    image = image.crop((0, 0, main_card_right(image), image.height))
    image.quantize(colors=64).save(args.out, optimize=True)
    print(f"{args.out}: {image.width}x{image.height}, {args.out.stat().st_size:,} bytes")


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"harness ui exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"nothing listened on port {port} within {timeout} s")


def main_card_right(image: Image.Image) -> int:
    """The x just past the page's main card: the first column right of the middle that is
    light grey from top to bottom (the gap before the assistant panel); the width when there
    is no such gap."""

    def grey(pixel: tuple[int, int, int]) -> bool:
        return min(pixel) >= 225 and max(pixel) <= 250 and max(pixel) - min(pixel) <= 4

    rows = range(40, image.height - 40, 4)
    for x in range(image.width // 2, image.width):
        if all(grey(image.getpixel((x, y))) for y in rows):
            return min(x + 4, image.width)
    return image.width


if __name__ == "__main__":
    main()

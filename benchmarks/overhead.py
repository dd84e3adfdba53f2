"""What tracking costs: the same model, data, batch size and steps, trained three ways.

  (a) a plain PyTorch loop, no tracking;
  (b) Lightning with its stock MLFlowLogger, `self.log("train/loss")` every step;
  (c) a harness run (`train_run`): every step's train/loss and grad_norm in MLflow;
  (d) the same harness run telling a pipe how far it has come, as a grid's worker tells its
      launcher for the progress bar (harness.progress.StepReports).

(b), (c) and (d) are timed over `trainer.fit` (no validation inside it), (a) over its loop.
The four are interleaved, `--repeats` times, in one process, and the medians compared,
because the machines here are shared and noisy. Ratios are printed last. What (d) adds is
also timed on its own, which a busy machine disturbs far less than a whole run: the step
reports' work at every step (a million calls) and one report sent and received through a
pipe (a thousand), each the best of five tries, put against (c)'s time per step.

    .venv/bin/python benchmarks/overhead.py [--steps 300] [--repeats 5] [--model quick|default]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import MLFlowLogger

from harness.backends.base import Steps
from harness.config import RunConfig, resolve
from harness.models.lightning_module import AttentionTaskModule
from harness.optim import build_optimizer, build_scheduler
from harness.progress import REPORT_EVERY, StepReports
from harness.train import prepare, train_run
from tasks.loaders import RandomBatches

# grids/quick.yaml: model d_model 32, d_ff 64 (2 layers, d_k 16), copy of length 8
QUICK_MODEL = {"model.d_model": 32, "model.d_ff": 64, "task.length": 8}


def plain_loop(cfg: RunConfig, device: torch.device) -> float:
    _, data, module = prepare(cfg)
    module.to(device)
    optimizer = build_optimizer(cfg.optimizer, module.model, cfg.lr, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.optim)
    split = data.train
    batches = iter(RandomBatches(split, cfg.train["batch_size"], cfg.seed))
    started = time.perf_counter()
    for _ in range(cfg.steps):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        logits, _ = module(batch)
        loss = F.cross_entropy(logits, module.targets(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    loss.item()  # wait for the device
    return time.perf_counter() - started


class StockLogging(AttentionTaskModule):
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss


def stock_mlflow_logger(cfg: RunConfig, accelerator: str, store: Path) -> float:
    task, data, built = prepare(cfg)
    module = StockLogging(
        built.model,
        task=task,
        optimizer=built.optimizer_factory,
        scheduler=built.scheduler_factory,
        grad_clip=built.grad_clip,
    )
    logger = MLFlowLogger(experiment_name="stock", tracking_uri=f"sqlite:///{store}")
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=cfg.steps,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )
    train = RandomBatches(data.train, cfg.train["batch_size"], cfg.seed)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=train)
    return time.perf_counter() - started


def harness_run(cfg: RunConfig, accelerator: str, store: Path) -> float:
    result = train_run(
        cfg, tracking_uri=f"sqlite:///{store}", experiment="harness", accelerator=accelerator
    )
    return result.fit_seconds


def harness_run_reporting(cfg: RunConfig, accelerator: str, store: Path) -> tuple[float, int]:
    """(c) with a worker's step reports sent down a pipe; the seconds and the reports sent."""
    here, there = mp.Pipe(duplex=False)

    def report(steps: int, seconds: float) -> None:
        there.send(Steps("run", steps, seconds))

    result = train_run(
        cfg, tracking_uri=f"sqlite:///{store}", experiment="harness", accelerator=accelerator,
        report=report,
    )  # fmt: skip
    sent = 0
    while here.poll():
        here.recv()
        sent += 1
    return result.fit_seconds, sent


def report_costs() -> tuple[float, float]:
    """Seconds the step reports take at each step (a report every REPORT_EVERY seconds
    aside), and seconds to send one report down a pipe and receive it: best of five tries."""
    callback = StepReports(lambda steps, seconds: None)
    trainer = SimpleNamespace(global_step=1)
    per_step, per_report = [], []
    for _ in range(5):
        callback.on_train_start()
        callback.on_train_batch_end(trainer)  # the first step's report: the rest wait
        started = time.perf_counter()
        for _ in range(1_000_000):
            callback.on_train_batch_end(trainer)
        per_step.append((time.perf_counter() - started) / 1_000_000)
        here, there = mp.Pipe(duplex=False)
        started = time.perf_counter()
        for i in range(1000):
            there.send(Steps("run", i, 0.5))
            here.recv()
        per_report.append((time.perf_counter() - started) / 1000)
    return min(per_step), min(per_report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="copy")
    parser.add_argument("--attention", default="multihead")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--model",
        choices=["quick", "default"],
        default="quick",
        help="quick: grids/quick.yaml's model and copy length (the issue's target); default: "
        "the harness's default model",
    )
    args = parser.parse_args()
    # validation only after fit (val_every > steps), so every variant times training alone
    overrides = {"train.val_every": 10 * args.steps}
    if args.model == "quick":
        overrides |= QUICK_MODEL
    cfg = resolve(args.task, args.attention, "adam", steps=args.steps, overrides=overrides)
    device = pl.Trainer(accelerator=args.accelerator, devices=1, logger=False).strategy.root_device
    times: dict[str, list[float]] = {"plain": [], "stock": [], "harness": [], "reports": []}
    sent = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlflow.db"
        harness_run(cfg, args.accelerator, store)  # warm-up: store migrations, imports, caches
        for i in range(args.repeats):
            times["plain"].append(plain_loop(cfg, device))
            times["stock"].append(stock_mlflow_logger(cfg, args.accelerator, store))
            for variant in ("harness", "reports")[:: 1 if i % 2 else -1]:  # (c) (d), (d) (c)
                if variant == "harness":
                    times["harness"].append(harness_run(cfg, args.accelerator, store))
                else:
                    seconds, reports = harness_run_reporting(cfg, args.accelerator, store)
                    times["reports"].append(seconds)
                    sent.append(reports)
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.task}/{args.attention} ({args.model} model), {args.steps} steps, "
        f"batch {cfg.train['batch_size']}, "
        f"{device.type}, torch threads {torch.get_num_threads()}"
    )
    for name, label in (
        ("plain", "(a) plain loop"),
        ("stock", "(b) Lightning + MLFlowLogger"),
        ("harness", "(c) harness"),
        ("reports", "(d) harness + step reports"),
    ):
        print(
            f"{label:<30} median {med[name]:.3f} s  ({1000 * med[name] / args.steps:.2f} ms/step)"
        )
    print(f"ratio (b)/(a) = {med['stock'] / med['plain']:.2f}")
    print(f"ratio (c)/(a) = {med['harness'] / med['plain']:.2f}")
    ratios = [d / c for c, d in zip(times["harness"], times["reports"], strict=True)]
    print(
        f"ratio (d)/(c) = {med['reports'] / med['harness']:.3f} (median of the repeats' own "
        f"ratios {statistics.median(ratios):.3f}); step reports sent per run: {sent}"
    )
    step, report = report_costs()
    cost = args.steps * step + statistics.median(sent) * report  # one run's reports
    print(
        f"step reports on their own: {1e9 * step:.0f} ns a step, {1e6 * report:.0f} us a "
        f"report (after the first step, every {REPORT_EVERY:g} s, at the end); a run of (c) "
        f"pays {1e3 * cost:.3f} ms for them in {med['harness']:.2f} s: "
        f"{cost / med['harness']:.1e} of its training time"
    )


if __name__ == "__main__":
    main()

"""One LightningModule for every attention kind and every task.

Loss: cross-entropy over the scored positions (token tasks) or the sequences
(classification). Evaluation sums loss, correct predictions and counts on the device and
reports once per evaluation: `<split>/loss` (nats) and the task's metric, `<split>/acc` or
`<split>/bpc` (= loss / ln 2, bits per character).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from harness.config import RunConfig
from harness.models.transformer import AttentionModel
from harness.optim import build_optimizer, build_scheduler
from tasks import Task, TaskData

Batch = dict[str, torch.Tensor]


class AttentionTaskModule(pl.LightningModule):
    def __init__(self, cfg: RunConfig, task: Task, data: TaskData) -> None:
        super().__init__()
        self.cfg, self.task = cfg, task
        self.model = AttentionModel(
            vocab_size=data.vocab_size,
            n_outputs=data.n_outputs,
            max_len=data.seq_len,
            head=task.kind,
            causal=task.causal,
            attention=cfg.attention,
            attention_params=cfg.attention_params,
            **cfg.model,
        )
        self.last_grad_norm: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None  # (loss sum, correct, count) of the current eval
        self.eval_metrics: dict[str, float] = {}  # latest value of each val/* and test/* metric

    def forward(self, batch: Batch, need_weights: bool = False) -> tuple[torch.Tensor, list]:
        return self.model(
            batch["x"], batch.get("padding"), batch.get("score_mask"), need_weights=need_weights
        )

    def targets(self, batch: Batch) -> torch.Tensor:
        y, mask = batch["y"], batch.get("score_mask")
        if self.task.kind == "classification":
            return y
        return y.reshape(-1) if mask is None else y[mask]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits, _ = self(batch)
        return F.cross_entropy(logits, self.targets(batch))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        clip = self.cfg.optim["grad_clip"]
        if clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.parameters(), clip, norm)
        self.last_grad_norm = norm.detach()

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg
        optimizer = build_optimizer(cfg.optimizer, self.parameters(), cfg.lr, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.steps, cfg.optim)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # Evaluation ---------------------------------------------------------------------------
    def _eval_step(self, batch: Batch) -> None:
        logits, _ = self(batch)
        target = self.targets(batch)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
        sums = torch.stack([loss, correct.to(loss.dtype), loss.new_tensor(target.numel())])
        self._sums = sums if self._sums is None else self._sums + sums

    def _log_eval(self, split: str) -> dict[str, float]:
        loss_sum, correct, count = self._sums.tolist()
        self._sums = None
        loss = loss_sum / count
        metrics = {f"{split}/loss": loss}
        if self.task.metric == "bpc":
            metrics[f"{split}/bpc"] = loss / math.log(2)
        else:
            metrics[f"{split}/acc"] = correct / count
        self.logger.log_metrics(metrics, step=self.global_step)
        self.eval_metrics.update(metrics)
        return metrics

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

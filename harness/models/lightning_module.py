"""One LightningModule for every attention kind and every task.

The model and the optimizer come ready-made (as lightning-hydra-template passes them): the
module gets an `nn.Module` (`AttentionModel` or anything with its forward), a factory that
turns the model into an optimizer, and optionally one that turns the optimizer into a
per-step learning-rate scheduler. `harness.train.build_module` builds all three from a cell's
config; the module itself knows nothing of configs.

Loss and metric are the task's (`Task.loss`, `Task.metric`, see tasks.metrics). Evaluation sums
the loss, the metric's position scores and the scored positions on the device and reports
once per evaluation: `<split>/loss` (nats) and `<split>/<metric name>`.

Testing also keeps per-example outcomes on the device (scored positions, summed position
scores, summed loss in nats), read back once at the end into `test_outcomes`, in test-split
order: {"n_tokens", "metric_sum", "loss_nats"}, one entry per test example, so that the test
metric is sum(metric_sum) / sum(n_tokens) and the loss sum(loss_nats) / sum(n_tokens). The
report's bootstrap over test examples resamples them.

Attention diagnostics (`attn/logit_std/layer<i>`, `attn/entropy/layer<i>`) are computed on a
fixed batch (`diagnostic_batch`, set by the trainer code) in eval mode without gradients, at
`on_fit_start` (step 0, before the first optimizer step and before training time is counted)
and at every validation (inside the validation loop, so never counted as training time).
Eval mode draws no dropout masks, so the diagnostics leave the training RNG stream unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from harness import schema
from tasks import Task
from tasks.loaders import Batch
from tasks.metrics import sum_per_example

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
NO_SCORES = "the attention kind computes no pre-softmax scores"


class AttentionTaskModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        *,
        task: Task,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        grad_clip: float = 0.0,
    ) -> None:
        """`model(x, padding, score_mask, need_weights=...)` returns (logits, attention maps);
        `grad_clip` > 0 clips the global gradient norm to it (0 turns clipping off)."""
        super().__init__()
        self.model, self.task = model, task
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.grad_clip = grad_clip
        self.last_grad_norm: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None  # (loss, score, positions) of the current eval
        self._outcomes: list[torch.Tensor] = []  # per test batch: (3, B) tokens, score, nats
        self.eval_metrics: dict[str, float] = {}  # latest value of each val/* and test/* metric
        self.test_outcomes: dict[str, list] | None = None  # per test example, after `test`
        self.diagnostic_batch: Batch | None = None  # fixed validation batch (x, padding)
        self.attention_diagnostics = True  # False skips them (to measure that they change nothing)

    def forward(self, batch: Batch, need_weights: bool = False) -> tuple[torch.Tensor, list]:
        return self.model(
            batch["x"], batch.get("padding"), batch.get("score_mask"), need_weights=need_weights
        )

    def targets(self, batch: Batch) -> torch.Tensor:
        """The targets the logits predict: one per sequence, or one per scored position."""
        y, mask = batch["y"], batch.get("score_mask")
        if self.task.kind == "classification":
            return y
        return y.reshape(-1) if mask is None else y[mask]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits, _ = self(batch)
        return self.task.loss(logits, self.targets(batch))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.parameters(), self.grad_clip, norm)
        self.last_grad_norm = norm.detach()

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.model)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # Evaluation ---------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, per_example: bool = False) -> None:
        logits, _ = self(batch)
        target = self.targets(batch)
        token_loss = self.task.loss(logits.float(), target, reduction="none")
        score = self.task.metric.position_score(logits, target, token_loss)
        loss = token_loss.sum()
        sums = torch.stack([loss, score.sum(), loss.new_tensor(target.numel())])
        self._sums = sums if self._sums is None else self._sums + sums
        if per_example:
            self._outcomes.append(self._per_example(batch, token_loss, score))

    def _per_example(
        self, batch: Batch, token_loss: torch.Tensor, score: torch.Tensor
    ) -> torch.Tensor:
        """(3, B): scored positions, summed position scores, summed loss (nats) per example."""
        if self.task.kind == "classification":
            return torch.stack([torch.ones_like(token_loss), score, token_loss])
        x, mask = batch["x"], batch.get("score_mask")
        if mask is None:
            counts = torch.full((x.shape[0],), x.shape[1], device=x.device, dtype=torch.long)
        else:
            counts = mask.sum(dim=1)
        sums = sum_per_example(torch.stack([score, token_loss]), counts)
        return torch.cat([counts.to(sums.dtype)[None], sums])

    def _log_eval(self, split: str) -> dict[str, float]:
        loss_sum, score_sum, count = self._sums.tolist()
        self._sums = None
        metric = self.task.metric
        metrics = {
            schema.split_metric(split, "loss"): loss_sum / count,
            schema.split_metric(split, metric.name): metric.value(score_sum, count),
        }
        self.logger.log_metrics(metrics, step=self.global_step)
        self.eval_metrics.update(metrics)
        return metrics

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")
        self.log_attention_stats()

    def on_test_epoch_start(self) -> None:
        self._outcomes = []

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, per_example=True)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")
        n_tokens, score, loss_nats = torch.cat(self._outcomes, dim=1).tolist()
        self._outcomes = []
        divisor = self.task.metric.divisor
        self.test_outcomes = {
            "n_tokens": [round(v) for v in n_tokens],
            "metric_sum": score if divisor == 1 else [v / divisor for v in score],
            "loss_nats": loss_nats,
        }

    # Attention diagnostics ----------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.log_attention_stats()  # step 0: the initial weights

    @torch.no_grad()
    def log_attention_stats(self) -> None:
        """Per layer, logit std and attention entropy on the fixed batch, at the current step."""
        batch = self.diagnostic_batch
        if batch is None or not self.attention_diagnostics:
            return
        # attention_stats runs in eval mode (no dropout draws): the training RNG stream stays.
        try:
            stats = self.model.attention_stats(batch["x"], batch.get("padding"))
        except NotImplementedError:  # a kind with no pre-softmax scores (linear attention, say)
            self.attention_diagnostics = False
            if self.logger is not None:
                self.logger.add_tags({schema.NO_ATTENTION_STATS: NO_SCORES})
            return
        metrics = {}
        for i, (logit_std, entropy) in enumerate(stats):
            metrics[schema.attn_logit_std(i)] = logit_std
            metrics[schema.attn_entropy(i)] = entropy
        self.logger.log_metrics(metrics, step=self.global_step)

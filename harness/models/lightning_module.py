"""One LightningModule for every attention kind and every task.

Loss: cross-entropy over the scored positions (token tasks) or the sequences
(classification). Evaluation sums loss, correct predictions and counts on the device and
reports once per evaluation: `<split>/loss` (nats) and the task's metric, `<split>/acc` or
`<split>/bpc` (= loss / ln 2, bits per character).

Testing also keeps per-example outcomes on the device (scored positions, correct positions,
summed cross-entropy in nats), read back once at the end into `test_outcomes`, in test-split
order: the report's bootstrap over test examples resamples them.

Attention diagnostics (`attn/logit_std/layer<i>`, `attn/entropy/layer<i>`) are computed on a
fixed batch (`diagnostic_batch`, set by the trainer code) in eval mode without gradients, at
`on_fit_start` (step 0, before the first optimizer step and before training time is counted)
and at every validation (inside the validation loop, so never counted as training time).
Eval mode draws no dropout masks, so the diagnostics leave the training RNG stream unchanged.
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
        self._outcomes: list[torch.Tensor] = []  # per test batch: (3, B) tokens, correct, nats
        self.eval_metrics: dict[str, float] = {}  # latest value of each val/* and test/* metric
        self.test_outcomes: dict[str, list] | None = None  # per test example, after `test`
        self.diagnostic_batch: Batch | None = None  # fixed validation batch (x, padding)
        self.attention_diagnostics = True  # False skips them (to measure that they change nothing)

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
        optimizer = build_optimizer(cfg.optimizer, self, cfg.lr, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.steps, cfg.optim)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # Evaluation ---------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, per_example: bool = False) -> None:
        logits, _ = self(batch)
        target = self.targets(batch)
        token_loss = F.cross_entropy(logits.float(), target, reduction="none")
        hit = (logits.argmax(-1) == target).to(token_loss.dtype)
        loss = token_loss.sum()
        sums = torch.stack([loss, hit.sum(), loss.new_tensor(target.numel())])
        self._sums = sums if self._sums is None else self._sums + sums
        if per_example:
            self._outcomes.append(self._per_example(batch, token_loss, hit))

    def _per_example(
        self, batch: Batch, token_loss: torch.Tensor, hit: torch.Tensor
    ) -> torch.Tensor:
        """(3, B): scored positions, correct positions, summed loss (nats) of each example.

        Scored positions come row-major (as `targets` flattens them), so the owner of each is
        its row repeated by the row's count; `output_size` keeps that free of a host sync.
        """
        if self.task.kind == "classification":
            return torch.stack([torch.ones_like(token_loss), hit, token_loss])
        x, mask = batch["x"], batch.get("score_mask")
        n = x.shape[0]
        if mask is None:
            counts = torch.full((n,), x.shape[1], device=x.device, dtype=torch.long)
        else:
            counts = mask.sum(dim=1)
        rows = torch.arange(n, device=x.device)
        owner = torch.repeat_interleave(rows, counts, output_size=token_loss.numel())
        out = token_loss.new_zeros(3, n)
        out[0] = counts.to(out.dtype)
        out[1].index_add_(0, owner, hit)
        out[2].index_add_(0, owner, token_loss)
        return out

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
        self.log_attention_stats()

    def on_test_epoch_start(self) -> None:
        self._outcomes = []

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, per_example=True)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")
        n_tokens, correct, loss_nats = torch.cat(self._outcomes, dim=1).tolist()
        self._outcomes = []
        self.test_outcomes = {
            "n_tokens": [round(v) for v in n_tokens],
            "correct": [round(v) for v in correct],
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
        stats = self.model.attention_stats(batch["x"], batch.get("padding"))
        metrics = {}
        for i, (logit_std, entropy) in enumerate(stats):
            metrics[f"attn/logit_std/layer{i}"] = logit_std
            metrics[f"attn/entropy/layer{i}"] = entropy
        self.logger.log_metrics(metrics, step=self.global_step)

"""Attention maps on a fixed probe batch: the first test example, every layer, up to 4 heads.

A kind that cannot return its weights (linear attention, say: its forward gives no maps, or
raises NotImplementedError when asked for them) has no figure: the run records why in the
`harness.no_attention_maps` tag and stays a finished run.
"""

from __future__ import annotations

import logging

import torch
from matplotlib.figure import Figure

from harness import schema
from harness.models.lightning_module import AttentionTaskModule
from harness.tracking import MlflowRunLogger
from tasks import TaskData
from tasks.loaders import batch

MAX_HEADS = 4
MAX_LABELLED_LEN = 40  # label the axes with tokens only when they stay readable

log = logging.getLogger(__name__)


@torch.no_grad()
def attention_maps(module: AttentionTaskModule, data: TaskData) -> list[torch.Tensor] | None:
    """Each layer's weights (h, L, L) on test example 0 (padded positions cut off); None when
    the model cannot return attention weights."""
    split = data.test
    probe = {k: v.to(module.device) for k, v in batch(split, slice(0, 1)).items()}
    was_training = module.training
    module.eval()
    try:
        _, maps = module(probe, need_weights=True)
    except NotImplementedError:
        maps = None
    finally:
        module.train(was_training)
    if not maps:
        return None
    length = split.x.shape[1] if split.padding is None else int((~split.padding[0]).sum())
    return [m[0, :, :length, :length].float().cpu() for m in maps]


def log_attention_figure(
    logger: MlflowRunLogger, module: AttentionTaskModule, data: TaskData, title: str
) -> None:
    """The probe batch's attention maps as the run's figure, or a note of why there is none."""
    maps = attention_maps(module, data)
    if maps is None:
        note = "the attention kind returns no attention weights"
        log.info("%s: no attention maps: %s", title, note)
        logger.set_tags({schema.NO_ATTENTION_MAPS: note})
        return
    fig = attention_figure(maps, data, title)
    logger.client.log_figure(logger.run_id, fig, schema.ATTENTION_MAPS)


def attention_figure(maps: list[torch.Tensor], data: TaskData, title: str) -> Figure:
    """A grid of heatmaps: one row per layer, one column per head (query rows, key columns)."""
    n_layers, n_heads = len(maps), min(MAX_HEADS, maps[0].shape[0])
    fig = Figure(figsize=(3.2 * n_heads + 0.8, 3.0 * n_layers + 0.6), layout="constrained")
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    labels = _token_labels(data, maps[0].shape[-1])
    for layer, weights in enumerate(maps):
        for head in range(n_heads):
            ax = axes[layer][head]
            image = ax.imshow(weights[head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=9)
            ax.set_xlabel("key position", fontsize=8)
            ax.set_ylabel("query position", fontsize=8)
            if labels:
                ticks = range(len(labels))
                ax.set_xticks(ticks, labels, fontsize=6, rotation=90)
                ax.set_yticks(ticks, labels, fontsize=6)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight")
    fig.suptitle(title, fontsize=10)
    return fig


def _token_labels(data: TaskData, length: int) -> list[str] | None:
    if data.itos is None or length > MAX_LABELLED_LEN:
        return None
    ids = data.test.x[0, :length].tolist()
    return [repr(data.itos[i])[1:-1] if i < len(data.itos) else str(i) for i in ids]

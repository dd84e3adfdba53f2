"""Attention maps on a fixed probe batch: the first test example, every layer, up to 4 heads.

A kind that cannot return its weights (linear attention, say: its forward gives no maps, or
raises NotImplementedError when asked for them) has no figure: the run records why in the
`harness.no_attention_maps` tag and stays a finished run.

The figure is drawn straight into pixels with Pillow (the imaging library matplotlib itself
writes PNGs with): each map coloured by matplotlib's viridis exactly as `imshow(vmin=0,
vmax=1)` would, one block of pixels per weight on a fixed-size panel (block means for maps
longer than the panel is wide), with token labels, titles and a colour bar in DejaVu Sans
(matplotlib's own font). The same figure drawn through matplotlib axes with
constrained layout took about 0.55 s a quick-grid cell on this project's 2-core machine
(mostly laying out tick labels), most of the cell's fixed cost; this takes about 15 ms, PNG
included (benchmarks/cell_phases.py).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from harness import schema
from harness.models.lightning_module import AttentionTaskModule
from harness.tracking import MlflowRunLogger
from tasks import TaskData
from tasks.loaders import batch

MAX_HEADS = 4
MAX_LABELLED_LEN = 40  # label the axes with tokens only when they stay readable
PANEL = 240  # a heatmap's side in pixels
PAD = 6  # pixels between the parts of the figure
TICK_SIZE, LABEL_SIZE, TITLE_SIZE = 10, 12, 14  # font sizes in pixels
BAR_WIDTH = 14  # the colour bar's width in pixels
BAR_TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
INK, PAPER = (0, 0, 0), (255, 255, 255)

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
        logger.add_tags({schema.NO_ATTENTION_MAPS: note})
        return
    image = attention_image(maps, _token_labels(data, maps[0].shape[-1]), title)
    logger.client.log_image(logger.run_id, image, artifact_file=schema.ATTENTION_MAPS)


@dataclass(frozen=True)
class _Layout:
    """Pixel sizes of one panel's block: [y label | y ticks | heatmap], titled above, with
    x ticks and the x label below; blocks form a grid of layers x heads."""

    side: int  # the heatmap's side
    length: int  # positions on each side of the map
    ticks: int  # room for the widest token label (0 without labels)
    line: int  # one line of label text
    title_line: int

    @property
    def heatmap_left(self) -> int:
        return self.line + self.ticks

    @property
    def width(self) -> int:
        return self.heatmap_left + self.side + 2 * PAD

    @property
    def height(self) -> int:
        return self.line + self.side + self.ticks + self.line + PAD


def attention_image(maps: list[torch.Tensor], labels: list[str] | None, title: str) -> Image.Image:
    """A grid of heatmaps: one row per layer, one column per head (query rows, key columns),
    a colour bar for the weights, token labels on the axes when given."""
    n_heads = min(MAX_HEADS, maps[0].shape[0])
    tick_font, label_font, title_font = _font(TICK_SIZE), _font(LABEL_SIZE), _font(TITLE_SIZE)
    ticks = max(_text_width(s, tick_font) for s in labels) + PAD if labels else 0
    box = _Layout(PANEL, maps[0].shape[-1], ticks, _line(label_font), _line(title_font))
    bar_left = PAD + n_heads * box.width
    bar_room = BAR_WIDTH + PAD + _text_width("0.0", tick_font) + PAD + box.line
    width = max(bar_left + bar_room, _text_width(title, title_font) + 2 * PAD)
    image = Image.new("RGB", (width, box.title_line + len(maps) * box.height), PAPER)
    draw = ImageDraw.Draw(image)
    draw.text((image.width // 2, PAD), title, font=title_font, fill=INK, anchor="mt")
    for layer, weights in enumerate(maps):
        for head in range(n_heads):
            left = PAD + head * box.width
            top = box.title_line + layer * box.height
            _panel(image, draw, weights[head], (left, top), box, labels, f"layer {layer + 1}, "
                   f"head {head + 1}")  # fmt: skip
    middle = box.title_line + (len(maps) * box.height) // 2
    _colour_bar(image, draw, bar_left, middle, min(box.side, 200))
    return image


def _panel(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    weights: torch.Tensor,
    corner: tuple[int, int],
    box: _Layout,
    labels: list[str] | None,
    name: str,
) -> None:
    tick_font, label_font = _font(TICK_SIZE), _font(LABEL_SIZE)
    x0, y0 = corner[0] + box.heatmap_left, corner[1] + box.line
    image.paste(_heatmap(weights, box.side), (x0, y0))
    draw.rectangle((x0 - 1, y0 - 1, x0 + box.side, y0 + box.side), outline=INK)
    draw.text((x0 + box.side // 2, y0 - 2), name, font=label_font, fill=INK, anchor="mb")
    for i, token in enumerate(labels or ()):
        centre = int((i + 0.5) * box.side / box.length)
        draw.text((x0 - 3, y0 + centre), token, font=tick_font, fill=INK, anchor="rm")
        _vertical_text(image, (x0 + centre, y0 + box.side + 3), token, tick_font, top=True)
    below = y0 + box.side + box.ticks + 2
    draw.text((x0 + box.side // 2, below), "key position", font=label_font, fill=INK, anchor="mt")
    _vertical_text(image, (corner[0] + box.line // 2, y0 + box.side // 2), "query position",
                   label_font)  # fmt: skip


def _colour_bar(
    image: Image.Image, draw: ImageDraw.ImageDraw, left: int, middle: int, height: int
) -> None:
    tick_font, label_font = _font(TICK_SIZE), _font(LABEL_SIZE)
    top = middle - height // 2
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(BAR_WIDTH, axis=1)
    image.paste(Image.fromarray(_colours(ramp)), (left, top))
    draw.rectangle((left - 1, top - 1, left + BAR_WIDTH, top + height), outline=INK)
    for value in BAR_TICKS:
        y = top + round((1.0 - value) * (height - 1))
        draw.line((left + BAR_WIDTH, y, left + BAR_WIDTH + 3, y), fill=INK)
        draw.text((left + BAR_WIDTH + 5, y), f"{value:.1f}", font=tick_font, fill=INK, anchor="lm")
    label_x = left + BAR_WIDTH + PAD + _text_width("0.0", tick_font) + PAD + _line(label_font) // 2
    _vertical_text(image, (label_x, middle), "attention weight", label_font)


def _heatmap(weights: torch.Tensor, side: int) -> Image.Image:
    """The (L, L) weights as a side x side image: each weight a block of its colour (blocks
    differ by a pixel when L does not divide the side), or, for L above the side, the mean
    weight of each block of positions."""
    if weights.shape[-1] > side:
        weights = torch.nn.functional.adaptive_avg_pool2d(weights[None], side)[0]
    image = Image.fromarray(_colours(weights.numpy()))
    return image.resize((side, side), Image.Resampling.NEAREST)


def _colours(values: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] -> viridis RGB bytes, binned as matplotlib's imshow bins them."""
    index = np.clip((values * 256).astype(np.int64), 0, 255)  # Normalize(0, 1), then N=256
    return _viridis()[index]


def _vertical_text(
    image: Image.Image, at: tuple[int, int], text: str, font: ImageFont.FreeTypeFont,
    top: bool = False,
) -> None:  # fmt: skip
    """`text` reading bottom to top, centred on `at` (or hanging from it with `top`)."""
    stamp = _rotated(text, font)
    x = at[0] - stamp.width // 2
    y = at[1] if top else at[1] - stamp.height // 2
    image.paste(INK, (x, y, x + stamp.width, y + stamp.height), stamp)


@functools.lru_cache(maxsize=1024)
def _rotated(text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """`text` as a mask turned a quarter left; tokens repeat, so each is drawn once."""
    _, _, right, lower = font.getbbox(text)
    stamp = Image.new("L", (right, lower), 0)
    ImageDraw.Draw(stamp).text((0, 0), text, font=font, fill=255)
    return stamp.rotate(90, expand=True)


@functools.cache
def _viridis() -> np.ndarray:
    from matplotlib import colormaps  # the colour table only: no figure machinery

    return colormaps["viridis"](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans as matplotlib ships it, else Pillow's own scalable default font."""
    import matplotlib

    path = f"{matplotlib.get_data_path()}/fonts/ttf/DejaVuSans.ttf"
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return ImageFont.load_default(size)


def _text_width(text: str, font: ImageFont.FreeTypeFont) -> int:
    return int(font.getlength(text)) + 1


def _line(font: ImageFont.FreeTypeFont) -> int:
    """Height of one line of text in `font`, with a little air."""
    return font.getbbox("Ag")[3] + 4


def _token_labels(data: TaskData, length: int) -> list[str] | None:
    if data.itos is None or length > MAX_LABELLED_LEN:
        return None
    ids = data.test.x[0, :length].tolist()
    return [repr(data.itos[i])[1:-1] if i < len(data.itos) else str(i) for i in ids]

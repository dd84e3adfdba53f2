"""The attention-map figure: what it shows, read back from its pixels."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize
from PIL import Image

from harness.probe import MAX_HEADS, PANEL, attention_image


def _viridis_bytes(value: float) -> tuple[int, int, int]:
    """The colour matplotlib's imshow(cmap="viridis", vmin=0, vmax=1) gives `value`."""
    r, g, b, _ = colormaps["viridis"](Normalize(0.0, 1.0)(value), bytes=True)
    return int(r), int(g), int(b)


def _pixels(image: Image.Image) -> Counter:
    return Counter(map(tuple, np.asarray(image.convert("RGB")).reshape(-1, 3).tolist()))


def test_each_weight_is_a_block_of_its_imshow_colour() -> None:
    """A 3x3 map of distinct weights: every weight fills at least one cell's square of pixels
    in exactly the colour matplotlib would give it (so the map is neither transposed in
    colour nor rescaled)."""
    weights = torch.tensor([[0.02, 0.13, 0.85], [0.31, 0.44, 0.25], [0.57, 0.66, 0.97]])
    image = attention_image([weights[None]], ["a", "b", "c"], "copy/dot/adam/lr=0.001/seed=0")
    pixels = _pixels(image)
    block = PANEL // 3  # a 3x3 map fills a panel with 3 x 3 blocks
    for value in weights.flatten().tolist():
        assert pixels[_viridis_bytes(value)] >= block * block, value


def test_rows_are_queries_and_columns_are_keys() -> None:
    """One bright weight at (query 0, key 2): its block lies right of and above the dark
    ones at (query 2, key 0)."""
    weights = torch.zeros(3, 3)
    weights[0, 2], weights[2, 0] = 1.0, 0.5
    array = np.asarray(attention_image([weights[None]], None, "t").convert("RGB"))
    bright = np.argwhere((array == _viridis_bytes(1.0)).all(axis=-1))
    middle = np.argwhere((array == _viridis_bytes(0.5)).all(axis=-1))
    assert len(bright) and len(middle)
    (bright_y, bright_x), (middle_y, middle_x) = bright.mean(0), middle.mean(0)
    assert bright_y < middle_y and bright_x > middle_x


def test_at_most_four_heads_and_one_row_per_layer() -> None:
    maps = [torch.rand(8, 5, 5).softmax(-1) for _ in range(2)]
    four = attention_image([m[:MAX_HEADS] for m in maps], None, "t")
    assert attention_image(maps, None, "t").size == four.size  # heads beyond 4 are not drawn
    one_head = attention_image([m[:1] for m in maps], None, "t")
    one_layer = attention_image(maps[:1], None, "t")
    assert four.width > 2.5 * one_head.width and four.height == one_head.height
    assert one_layer.height < 0.6 * four.height


def test_a_map_longer_than_the_panel_shows_block_means() -> None:
    """1024 positions on a fixed panel: the figure keeps its size and a map of uniform
    weight 0.5 stays 0.5 (the colour bar adds a row or two of that colour)."""
    weights = torch.full((1, 1024, 1024), 0.5)
    image = attention_image([weights], None, "char_lm")
    assert image.size == attention_image([weights[:, :8, :8]], None, "char_lm").size
    assert PANEL * PANEL <= _pixels(image)[_viridis_bytes(0.5)] < PANEL * PANEL + 100


def test_the_figure_is_a_png_of_some_substance() -> None:
    """What the run logs (PipeSink and MlflowClient both write PNG)."""
    maps = [torch.rand(4, 21, 21).softmax(-1) for _ in range(2)]
    labels = [str(i % 10) for i in range(10)] + ["SEP"] + ["Q"] * 10
    buffer = io.BytesIO()
    attention_image(maps, labels, "copy/multihead/adam/lr=0.001/seed=0").save(buffer, "png")
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    assert Image.open(io.BytesIO(data)).size[0] > 4 * 21 * 4  # four panels of 21 columns

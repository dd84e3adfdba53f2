"""Keeping repeated text out of training: no WIDTH-character string in both train and held-out.

Reference texts repeat themselves (pydoc's topics copy whole passages from one another), so
a split by document still leaves held-out text that the model has read in training. Here
the held-out text is kept whole and the training text gives way: for every WIDTH-character
window of a text that also occurs in the held-out text, `remove_shared` drops the piece of
the text (a paragraph; lines, or 1,000-character slices, of longer ones) that holds the
window's middle character, so a repeated paragraph goes and the neighbours whose edges the
window overlaps stay; it repeats until no window is shared (dropping a piece joins its
neighbours, which makes new windows).

Windows are compared by a 64-bit polynomial hash of their code points (one in about 1e19
pairs collides, so the result is exact in practice); the tests measure it with plain strings.
"""

from __future__ import annotations

import re

import numpy as np

WIDTH = 64
MAX_PIECE = 1000
BASE = np.uint64(0x100000001B3)  # odd, so multiplication mod 2**64 loses no bits
# A paragraph and the blank lines after it (the last one may end without them).
PARAGRAPH = re.compile(r".+?(?:\n[ \t]*\n+|\Z)", re.DOTALL)


def window_hashes(text: str, width: int = WIDTH) -> np.ndarray:
    """Hash of text[i : i + width] for every start i, as uint64 (arithmetic mod 2**64).

    h_w(i) = sum_k c[i + k] * BASE**(w - 1 - k); doubling h_2w(i) = h_w(i) * BASE**w + h_w(i + w)
    builds it in log2(width) passes.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(codes) - width + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    hashes, span, power = codes, 1, BASE  # hashes of windows of `span` chars; power = BASE**span
    with np.errstate(over="ignore"):
        for bit in reversed(range(width.bit_length() - 1)):
            hashes = hashes[:-span] * power + hashes[span:]  # windows of 2 * span
            span, power = 2 * span, power * power
            if width >> bit & 1:  # one more character
                hashes = hashes[:-1] * BASE + codes[span:]
                span, power = span + 1, power * BASE
    return hashes[:n]


def pieces(text: str) -> list[str]:
    """`text` cut into paragraphs; longer ones into lines, longer ones into MAX_PIECE slices."""
    found = []
    for paragraph in PARAGRAPH.findall(text):
        if len(paragraph) <= MAX_PIECE:
            found.append(paragraph)
            continue
        for line in paragraph.splitlines(keepends=True):
            found += [line[i : i + MAX_PIECE] for i in range(0, len(line), MAX_PIECE)]
    return found


def contains(sorted_hashes: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `hashes` occur in `sorted_hashes` (sorted ascending)."""
    if not len(sorted_hashes):
        return np.zeros(len(hashes), dtype=bool)
    at = np.searchsorted(sorted_hashes, hashes).clip(max=len(sorted_hashes) - 1)
    return sorted_hashes[at] == hashes


def remove_shared(text: str, held_out: str, width: int = WIDTH) -> str:
    """`text` without the pieces in which a window of `held_out` starts (see the module doc)."""
    reference = np.unique(window_hashes(held_out, width))
    kept = pieces(text)
    while True:
        shared = np.flatnonzero(contains(reference, window_hashes("".join(kept), width)))
        if not len(shared):
            return "".join(kept)
        ends = np.cumsum([len(piece) for piece in kept])
        middles = shared + width // 2  # drop the piece that holds the window's middle
        dropped = set(np.searchsorted(ends, middles, side="right").tolist())
        kept = [piece for i, piece in enumerate(kept) if i not in dropped]


def shared_fraction(text: str, reference: str, width: int = WIDTH) -> float:
    """Fraction of text's window starts (all, repeats counted) whose window occurs in reference."""
    hashes = window_hashes(text, width)
    if not len(hashes):
        return 0.0
    return float(contains(np.unique(window_hashes(reference, width)), hashes).mean())

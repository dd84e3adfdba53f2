"""Character- and word-level tokenizers with a vocabulary built from training text.

Ids: 0 = PAD, 1 = UNK, then tokens by descending frequency (ties broken by the token),
keeping tokens seen at least `min_freq` times, `max_vocab` ids in all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PAD, UNK = 0, 1
SPECIALS = ["<pad>", "<unk>"]
# Lowercased words (letters, digits, underscore, inner apostrophes) or single punctuation marks.
WORD_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
LEVELS = ("char", "word")


def split_chars(text: str) -> list[str]:
    return list(text)


def split_words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


SPLITTERS: dict[str, Callable[[str], list[str]]] = {"char": split_chars, "word": split_words}


@dataclass(frozen=True)
class Tokenizer:
    level: str  # "char" or "word"
    itos: list[str]  # id -> token; itos[0] is PAD, itos[1] is UNK
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stoi", {t: i for i, t in enumerate(self.itos)})

    def __len__(self) -> int:
        return len(self.itos)

    def tokens(self, text: str) -> list[str]:
        return SPLITTERS[self.level](text)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(t, UNK) for t in self.tokens(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text from ids, PAD dropped; words are joined with single spaces."""
        tokens = [self.itos[i] for i in ids if i != PAD]
        return ("" if self.level == "char" else " ").join(tokens)


def build_tokenizer(
    texts: Iterable[str], level: str, max_vocab: int | None = None, min_freq: int = 1
) -> Tokenizer:
    """Vocabulary from `texts` (the training split only); max_vocab counts PAD and UNK."""
    if level not in SPLITTERS:
        raise ValueError(f"unknown tokenizer level {level!r} (choose from: {', '.join(LEVELS)})")
    split = SPLITTERS[level]
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(split(text))
    ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    if max_vocab is not None:
        ranked = ranked[: max(max_vocab - len(SPECIALS), 0)]
    return Tokenizer(level, SPECIALS + ranked)

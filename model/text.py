"""Text into model input, without torch: normalisation (also the cache-key form of a query) and
the tokenizer described by the bundle's tokenizer.json."""
from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PAD_ID, CLS_ID, FIRST_WORD_ID = 0, 1, 2
_WORD = re.compile(r"[a-z0-9]+")


def normalise_text(text: str) -> str:
    """Case-folded, single-spaced, stripped: the form that is embedded and hashed."""
    return " ".join(text.casefold().split())


class HashedWordTokenizer:
    """Words hashed (CRC-32) into a fixed vocabulary, after a [CLS] id.

    No vocabulary file to ship or get wrong, and every word, seen in training or not, has an id.
    """

    kind = "hashed-words"

    def __init__(self, vocab_size: int, max_length: int):
        if vocab_size <= FIRST_WORD_ID or max_length < 2:
            raise ValueError("vocab_size must exceed 2 and max_length must be at least 2")
        self.vocab_size = vocab_size
        self.max_length = max_length

    def to_json(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "max_length": self.max_length}

    def word_id(self, word: str) -> int:
        return FIRST_WORD_ID + zlib.crc32(word.encode()) % (self.vocab_size - FIRST_WORD_ID)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 (B, L), padded to the longest text in the batch."""
        rows = []
        for text in texts:
            words = _WORD.findall(normalise_text(text))[: self.max_length - 1]
            rows.append([CLS_ID] + [self.word_id(w) for w in words])
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), PAD_ID, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask


def load_tokenizer(path: str | Path) -> HashedWordTokenizer:
    """The tokenizer a bundle's tokenizer.json describes."""
    spec = json.loads(Path(path).read_text())
    if spec.get("kind") != HashedWordTokenizer.kind:
        raise ValueError(f"unsupported tokenizer kind {spec.get('kind')!r} in {path}")
    return HashedWordTokenizer(spec["vocab_size"], spec["max_length"])

"""Text into model input, without torch: normalisation (also the cache-key form of a query) and
the tokenizer a bundle ships in tokenizer.json.

Two kinds, chosen by the manifest's `text.tokenizer_kind`:
- `hashed-words`: tokenizer.json is a small spec; words are hashed into a fixed vocabulary;
- `huggingface`: tokenizer.json is a Hugging Face `tokenizers` file (MiniLM's WordPiece, CLAP's
  RoBERTa BPE), run by the `tokenizers` library with truncation to `max_length`.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

PAD_ID, CLS_ID, FIRST_WORD_ID = 0, 1, 2
_WORD = re.compile(r"[a-z0-9]+")


def normalise_text(text: str) -> str:
    """Case-folded, single-spaced, stripped: the form that is embedded and hashed."""
    return " ".join(text.casefold().split())


MAX_TEXT_LENGTH = 500


def code_ranges(codes: Sequence[int]) -> str:
    """Sorted code points as the inside of a regex character class, in \\uXXXX ranges: what
    Python's re and OpenAPI's (ECMA-262) patterns both read."""
    runs: list[list[int]] = []
    for code in codes:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "".join(f"\\u{lo:04x}" + (f"-\\u{hi:04x}" if hi > lo else "") for lo, hi in runs)


# The spaces a text may hold: the space, a tab and a line break, LF or CR LF (as a form's textarea
# sends one). Python's str.split() and strip() take more for spaces (VT, FF, a lone CR, the file
# separators 1C-1F, NEL, U+2028 and U+2029): dropped by normalise_text, each was taken silently
# and named another query id and cache entry of the same map. They are refused with the other
# control characters (Unicode's Cc: a NUL or an escape is no part of a text; the tokenizer drops it).
SPACE_CONTROLS = "\t\n\r"
CONTROLS = [c for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029) if chr(c) not in SPACE_CONTROLS]
CONTROL_CLASS = code_ranges(CONTROLS)
CONTROL = re.compile(f"[{CONTROL_CLASS}]|\r(?!\n)")
# The other spaces str.split() takes (no-break, en, ideographic, ...; all in the BMP), and tab and
# LF, as one character class: CR is taken only before LF.
SPACE_CLASS = code_ranges([c for c in range(0x10000) if chr(c).isspace() and c not in CONTROLS and c != 0x0D])
# A text query_text takes, as an OpenAPI pattern: no such control character, and more than spaces.
TEXT_PATTERN = f"^(?:[{SPACE_CLASS}]|\\r\\n)*[^{SPACE_CLASS}{CONTROL_CLASS}\\r](?:[^{CONTROL_CLASS}\\r]|\\r\\n)*$"


# Variation selectors (Unicode's Variation_Selector property: Mongolian's, FE00-FE0F, and the
# supplement's E0100-E01EF) pick a glyph's form (U+FE0F: an emoji's) and draw nothing themselves.
VARIATION_SELECTORS = frozenset(
    map(chr, (*range(0x180B, 0x180E), 0x180F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)))
)


def is_invisible(char: str) -> bool:
    """A format character (Unicode's Cf: the soft hyphen, zero-width space, joiners, bidi marks and
    isolates, the BOM, tag characters) or a variation selector: it changes how a text is drawn,
    never its words."""
    return char in VARIATION_SELECTORS or unicodedata.category(char) == "Cf"


def visible_text(text: str) -> str:
    """`text` without its invisible characters (`is_invisible`). Stripped, not refused as control
    characters are: they come with ordinary text (a Persian word's zero-width non-joiner, an emoji
    sequence's joiner, the marks a right-to-left editor adds, a web page's soft hyphens), and the
    MiniLM tokenizer drops every one of them (the hashed-words one split a word at each); kept, each
    named another query id and cache entry of the same map."""
    return text if text.isascii() else "".join(char for char in text if not is_invisible(char))


class TextError(ValueError):
    """A text no model takes as a query, and the sentence saying why."""


def query_text(text: str) -> str:
    """The normalised query text, or TextError when it is not valid Unicode, holds a control
    character, or is empty or too long. Its invisible characters are dropped (`visible_text`), then
    it is composed (NFC): é sent as e and a combining accent (NFD) is the same text, and was another
    query id, cache entry and embedding of the same map."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TextError("text holds a lone surrogate (not valid Unicode text)") from None
    if (control := CONTROL.search(text)) is not None:
        raise TextError(f"text holds a control character (U+{ord(control[0]):04X}); send the text alone")
    normal = normalise_text(unicodedata.normalize("NFC", visible_text(text)))
    if not normal:
        raise TextError("text must not be empty (e.g. birdsong)")
    if len(normal) > MAX_TEXT_LENGTH:
        raise TextError(
            f"text must be at most {MAX_TEXT_LENGTH} characters once case-folded and single-spaced, not {len(normal)}"
        )
    return normal


class Tokenizer(Protocol):
    kind: str

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]: ...

    def known_tokens(self, text: str) -> int:
        """How many of the text's tokens the model knows (neither special nor unknown): a text
        with none embeds as the empty text does, whatever it says."""
        ...


def _pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 (B, L), padded to the longest row."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


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
        return _pad(rows, PAD_ID)

    def known_tokens(self, text: str) -> int:
        return len(_WORD.findall(normalise_text(text)))  # every word hashes into the vocabulary


class HuggingFaceTokenizer:
    """A Hugging Face tokenizer.json run by the `tokenizers` library (no transformers, no torch).
    Texts are normalised first, as for every kind, so a query and its cache key agree."""

    kind = "huggingface"

    def __init__(self, path: str | Path, max_length: int):
        from tokenizers import Tokenizer as _Tokenizer

        self.path = Path(path)
        self.max_length = max_length
        self._tokenizer = _Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        spec = json.loads(self.path.read_text(encoding="utf-8"))
        self.pad_id = self._pad_id(spec)
        self.unk_id = self._unk_id(spec)

    def _pad_id(self, spec: dict) -> int:
        padding = spec.get("padding") or {}
        if "pad_id" in padding:
            return int(padding["pad_id"])
        for token in ("[PAD]", "<pad>"):
            if (token_id := self._tokenizer.token_to_id(token)) is not None:
                return token_id
        return 0

    def _unk_id(self, spec: dict) -> int | None:
        """The unknown token's id (WordPiece's [UNK]); None for a byte-level BPE, which has none."""
        token = (spec.get("model") or {}).get("unk_token")
        return None if token is None else self._tokenizer.token_to_id(token)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch([normalise_text(t) for t in texts])
        return _pad([e.ids for e in encodings], self.pad_id)

    def known_tokens(self, text: str) -> int:
        ids = self._tokenizer.encode(normalise_text(text), add_special_tokens=False).ids
        return sum(i != self.unk_id for i in ids)


def load_tokenizer(path: str | Path, spec: dict | None = None) -> Tokenizer:
    """The tokenizer of a bundle: `spec` is the manifest's `text` section (its `tokenizer_kind`
    and `max_length`); without it, tokenizer.json must be a hashed-words spec."""
    spec = spec or {}
    kind = spec.get("tokenizer_kind", HashedWordTokenizer.kind)
    if kind == HuggingFaceTokenizer.kind:
        return HuggingFaceTokenizer(path, int(spec["max_length"]))
    if kind != HashedWordTokenizer.kind:
        raise ValueError(f"unsupported tokenizer kind {kind!r} for {path}")
    file_spec = json.loads(Path(path).read_text(encoding="utf-8"))
    if file_spec.get("kind") != HashedWordTokenizer.kind:
        raise ValueError(f"{path} is not a {HashedWordTokenizer.kind} tokenizer")
    return HashedWordTokenizer(file_spec["vocab_size"], file_spec["max_length"])

"""The embedding store's format (docs/store.md; docs/design.md, "Store"): per web-mercator level, cells
sorted by quadkey with their pre-fusion features, default-metadata mean and S, centres, a FAISS
index over [mu, -S/2], and optionally precomputed fusions for each hour and month.

This module holds what the writer (store/writer.py, precompute) and the reader (store/reader.py,
the server) agree on: file names, array layouts, fusion names and the content id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import UserError
from runtime.files import json_sha256

STORE_FORMAT_VERSION = 3
# Formats this version reads. Format 3 left the imagery's locations out of the id (content_id).
READABLE_FORMATS = (2, 3)
MANIFEST_FILE = "manifest.json"
ARRAYS = ("codes", "sat", "mu", "s", "lonlat")
INDEX_FILE = "index.faiss"
FUSIONS_DIR = "fusions"
# Metadata a store may hold precomputed fusions for: (hour, month) of each set, other tokens unknown.
FUSION_KINDS: dict[str, list[tuple[int | None, int | None]]] = {
    "hour": [(h, None) for h in range(24)],
    "month": [(None, m) for m in range(1, 13)],
}
# Manifest keys outside the content hash: the id itself, when and how (device, timing) it was made.
_UNHASHED_KEYS = ("id", "created", "run")
# Imagery keys outside it from format 3: where the imagery lay is no part of what the store holds
# (each level's files are hashed), so one build in two folders gets one id, and so one ETag.
_UNHASHED_IMAGERY_KEYS = ("path", "absolute")


class StoreError(UserError):
    """The path is not a usable store, or belongs to another bundle; the message says why."""


@dataclass
class LevelArrays:
    """One level's cells, all sorted by Morton code."""

    codes: np.ndarray  # (N,) uint64
    sat: np.ndarray  # (N, sat_dim) float16 pre-fusion features
    mu: np.ndarray  # (N, D) float16 mean under default metadata (location only)
    s: np.ndarray  # (N,) float32 S = sum(exp(logvar)) under default metadata
    lonlat: np.ndarray  # (N, 2) float32 cell centres


def array_specs(sat_dim: int, embed_dim: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """dtype and row shape of each level array."""
    return {
        "codes": ("uint64", ()),
        "sat": ("float16", (sat_dim,)),
        "mu": ("float16", (embed_dim,)),
        "s": ("float32", ()),
        "lonlat": ("float32", (2,)),
    }


def fusion_name(hour: int | None, month: int | None) -> str:
    """File stem of a precomputed fusion: 'hour-06' or 'month-05'."""
    return f"hour-{hour:02d}" if month is None else f"month-{month:02d}"


def fusion_sets(kinds: list[str]) -> list[tuple[str, int | None, int | None]]:
    """(name, hour, month) of every metadata set the kinds ('hour', 'month') ask for."""
    return [(fusion_name(h, m), h, m) for kind in kinds for h, m in FUSION_KINDS[kind]]


def level_dir(root: Path, level: int) -> Path:
    return root / "levels" / f"{level:02d}"


def content_id(manifest: dict) -> str:
    """Store id: the sha256 of the canonical manifest less the keys outside the hash, 16 hex
    (format 2 hashed the imagery's paths too: its stores keep the ids they were given)."""
    hashed = {k: v for k, v in manifest.items() if k not in _UNHASHED_KEYS}
    imagery = hashed.get("imagery")
    if manifest.get("format_version") != 2 and isinstance(imagery, dict):
        hashed["imagery"] = {k: v for k, v in imagery.items() if k not in _UNHASHED_IMAGERY_KEYS}
    return json_sha256(hashed)

"""The embedding store (DESIGN.md "Store", docs/store.md): per web-mercator level, cells sorted
by quadkey with their pre-fusion features, default-metadata mean and S, centres, and a FAISS
index over [mu, -S/2]. Written aside and renamed into place; read memory-mapped."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from model.bundle import file_sha256
from model.scoring import gallery_vectors
from model.tiles import descendant_range

STORE_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
ARRAYS = ("codes", "sat", "mu", "s", "lonlat")
INDEX_FILE = "index.faiss"
_UNHASHED_KEYS = ("id", "created")


class StoreError(Exception):
    """The path is not a usable store, or belongs to another bundle; the message says why."""


@dataclass
class LevelArrays:
    """One level's cells, all sorted by Morton code."""

    codes: np.ndarray  # (N,) uint64
    sat: np.ndarray  # (N, sat_dim) float16 pre-fusion features
    mu: np.ndarray  # (N, D) float16 mean under default metadata (location only)
    s: np.ndarray  # (N,) float32 S = sum(exp(logvar)) under default metadata
    lonlat: np.ndarray  # (N, 2) float32 cell centres


def _level_dir(root: Path, level: int) -> Path:
    return root / "levels" / f"{level:02d}"


def _content_id(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k not in _UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def write_store(out: Path, bundle_id: str, levels: dict[int, LevelArrays], *, imagery: dict,
                bounds: tuple[float, float, float, float], overwrite: bool = False) -> dict:
    """Write a complete store atomically (temporary directory, then rename)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        level_meta = {}
        for level, arrays in sorted(levels.items()):
            folder = _level_dir(tmp, level)
            folder.mkdir(parents=True)
            for name in ARRAYS:
                np.save(folder / f"{name}.npy", getattr(arrays, name))
            index = faiss.IndexFlatIP(arrays.mu.shape[1] + 1)
            index.add(gallery_vectors(arrays.mu.astype(np.float32), arrays.s))
            faiss.write_index(index, str(folder / INDEX_FILE))
            files = {f"{n}.npy": file_sha256(folder / f"{n}.npy") for n in ARRAYS}
            files[INDEX_FILE] = file_sha256(folder / INDEX_FILE)
            level_meta[str(level)] = {
                "count": int(len(arrays.codes)), "index": "flat-ip", "files": files,
                "s_range": [float(arrays.s.min()), float(arrays.s.max())] if len(arrays.s) else None,
            }
        s_all = np.concatenate([a.s for a in levels.values()]) if levels else np.zeros(0)
        manifest = {
            "format_version": STORE_FORMAT_VERSION,
            "bundle_id": bundle_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "imagery": imagery,
            "bounds": list(bounds),
            "levels": level_meta,
            "uncertainty_range": ([float(np.percentile(s_all, 1)), float(np.percentile(s_all, 99))]
                                  if len(s_all) else [0.0, 1.0]),
        }
        manifest["id"] = _content_id(manifest)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class Level:
    """A level of an open store: memory-mapped arrays and the FAISS index (loaded on demand)."""

    def __init__(self, folder: Path, level: int):
        self.level = level
        self.folder = folder
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ARRAYS}
        self.arrays = LevelArrays(**arrays)
        self._index = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.arrays.codes)

    def cells_under(self, z: int, x: int, y: int) -> slice:
        """The contiguous run of cells under tile (z, x, y), for z <= level."""
        lo, hi = descendant_range(z, x, y, self.level)
        codes = self.arrays.codes
        return slice(int(np.searchsorted(codes, lo)), int(np.searchsorted(codes, hi)))

    @property
    def index(self) -> faiss.Index:
        with self._lock:
            if self._index is None:
                self._index = faiss.read_index(str(self.folder / INDEX_FILE))
            return self._index


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise StoreError(f"{self.path} is not an embedding store: it has no {MANIFEST_FILE}")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{manifest_path} is not valid JSON: {exc}") from exc
        if self.manifest.get("format_version") != STORE_FORMAT_VERSION:
            raise StoreError(f"{self.path} has store format {self.manifest.get('format_version')!r}; "
                             f"this version reads {STORE_FORMAT_VERSION}")
        self.id: str = self.manifest["id"]
        self.bundle_id: str = self.manifest["bundle_id"]
        self.levels = {int(k): Level(_level_dir(self.path, int(k)), int(k))
                       for k, v in self.manifest["levels"].items() if v["count"] > 0}
        if not self.levels:
            raise StoreError(f"{self.path} holds no cells")
        self.minlevel, self.maxlevel = min(self.levels), max(self.levels)
        self.bounds = tuple(self.manifest["bounds"])

    def check_bundle(self, bundle_id: str) -> None:
        if bundle_id != self.bundle_id:
            raise StoreError(f"store {self.path} was built by bundle {self.bundle_id}, not {bundle_id}; "
                             "rebuild it with `soundscape precompute` for this bundle")

    def level_for_tile(self, z: int, cells_per_side_log2: int) -> Level:
        """The level drawn on a tile of zoom z: z + k clamped to the levels present."""
        wanted = z + cells_per_side_log2
        present = sorted(self.levels)
        below = [lv for lv in present if lv <= wanted]
        return self.levels[below[-1] if below else present[0]]

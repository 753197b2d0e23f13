"""`soundscape store verify`: every file of a store against its checksum, and every level's
arrays for consistency (shapes, order, index size, fusions); opening a store checks less."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.files import file_sha256
from store.format import ARRAYS, StoreError, content_id, fusion_name, fusion_sets, level_dir
from store.reader import Level, Store


def verify_store(store: Store) -> None:
    """Check every file against its checksum and every level's arrays for consistency;
    StoreError naming the first problem."""
    check_checksums(store.path, store.manifest)
    for key, meta in sorted(store.manifest["levels"].items()):
        if int(key) in store.levels:
            _check_level(store.levels[int(key)], meta)


def check_checksums(root: Path, manifest: dict) -> None:
    """The manifest's id against its content and every file of every level against its sha256;
    StoreError naming the first that differs."""
    if content_id(manifest) != manifest["id"]:
        raise StoreError(f"{root}: the manifest id does not match its content")
    for key, meta in sorted(manifest["levels"].items()):
        folder = level_dir(root, int(key))
        for name, digest in sorted(meta.get("files", {}).items()):
            if not (folder / name).is_file():
                raise StoreError(f"{root}: level {key} is missing {name}")
            if file_sha256(folder / name) != digest:
                raise StoreError(f"{root}: level {key} {name} does not match its checksum")


def _check_level(level: Level, meta: dict) -> None:
    """Shapes, order and index size of one level agree with each other and the manifest."""
    a, n, where = level.arrays, len(level), f"level {level.level}"
    if n != meta["count"] or any(len(getattr(a, f)) != n for f in ARRAYS):
        raise StoreError(f"{where}: arrays hold different numbers of cells (manifest says {meta['count']})")
    if n > 1 and not (np.diff(np.asarray(a.codes).astype(np.int64)) > 0).all():
        raise StoreError(f"{where}: cell codes are not strictly ascending")
    if level.index.ntotal != n or level.index.d != a.mu.shape[1] + 1:
        raise StoreError(
            f"{where}: the index holds {level.index.ntotal} vectors of {level.index.d} dims, "
            f"not {n} of {a.mu.shape[1] + 1}"
        )
    for kind in level.fusion_kinds:
        for _, hour, month in fusion_sets([kind]):
            fused = level.precomputed(hour=hour, month=month)
            if fused is None:
                raise StoreError(f"{where}: fusion {fusion_name(hour, month)} is listed but cannot be read")
            mu, s = fused
            if mu.shape != a.mu.shape or s.shape != a.s.shape:
                raise StoreError(f"{where}: fusion {fusion_name(hour, month)} does not match the level's cells")

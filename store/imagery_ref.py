"""How a store names its imagery (manifest["imagery"]): local paths relative to the store
directory, so a store that moves together with its imagery (a container's /data mount, a copied
data folder) still finds it, and the absolute paths it was built from under "absolute", a hint
for a store moved alone. URLs stay as they are. server/service.py `store_imagery` resolves them."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.imagery import is_remote


def _each(paths: str | list[str], fn) -> str | list[str]:
    return [fn(p) for p in paths] if isinstance(paths, list) else fn(paths)


def relative_to_store(described: dict, store: Path) -> dict:
    """`Imagery.describe()` as the store at `store` records it."""
    absolute = _each(described["path"], lambda p: p if is_remote(p) else str(Path(p).resolve()))
    store_dir = Path(store).resolve()
    relative = _each(absolute, lambda p: p if is_remote(p) else os.path.relpath(p, store_dir))
    return {**described, "path": relative, "absolute": absolute}


def as_built(record: dict) -> dict:
    """The record with the absolute paths in "path" (records older than this module: unchanged),
    for comparing the records of stores in different directories."""
    return {**record, "path": record.get("absolute", record.get("path"))}

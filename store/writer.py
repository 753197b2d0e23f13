"""A store being written: level arrays that grow batch by batch in a work directory beside the
output (`.STORE.partial`), and a progress file (`.STORE.progress.json`) rewritten atomically
after every batch, saying how far each level got. A killed run that is started again with the
same plan continues from there; the arrays are cut back to the recorded rows first, so the
result equals an uninterrupted run's."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import faiss
import numpy as np

from runtime.files import atomic_write, file_sha256, lock_file, replace_dir, unlock_file
from store.format import (
    FUSIONS_DIR,
    INDEX_FILE,
    MANIFEST_FILE,
    STORE_FORMAT_VERSION,
    LevelArrays,
    StoreError,
    array_specs,
    content_id,
    level_dir,
)
from store.index import FLAT_MAX, build_index
from store.npy import GrowingNpy


def work_paths(out: Path) -> tuple[Path, Path]:
    """(work directory, progress file) of an output store path."""
    return out.parent / f".{out.name}.partial", out.parent / f".{out.name}.progress.json"


def _writer_lock(out: Path) -> tuple[Path, IO[str]]:
    """An exclusive lock on `.STORE.partial.lock` beside `out`, held by the one process writing
    that store (`lock_file`; `PartialStore.close` removes it): its path and open file. StoreError
    at once when another process holds it."""
    path = out.parent / f".{out.name}.partial.lock"
    try:
        return path, lock_file(path, wait=False)
    except BlockingIOError:
        raise StoreError(
            f"another process is writing the store {out}; wait for it to finish (a rerun then resumes "
            "or refuses the finished store), or choose another --out"
        ) from None


@contextlib.contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold the store's writer lock (`_writer_lock`) for a writer that is not a PartialStore (a
    merge): one lock for every writer of `out`, so none finishes over another's store."""
    path, handle = _writer_lock(out)
    try:
        yield
    finally:
        unlock_file(path, handle)


# What a write that finds no room fails with: a full disk, a full quota, a file-size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def no_room_said(out: Path, rerun: str) -> Iterator[None]:
    """A write of the store at `out` that finds no room stops in a sentence (StoreError): what
    was written is kept (the rows committed so far, or the store already there), and `rerun`
    says how to go on once there is room."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_ROOM:
            raise
        raise StoreError(
            f"cannot write {out}: {exc.strerror} (a full disk, a quota or a file-size limit); what was "
            f"written is kept: make room and {rerun}"
        ) from None


# The parts of a run's key (precompute.run.resume_key) in words, in the order they are compared.
_KEY_WORDS = {
    "bundle_id": "its bundle",
    "imagery": "its imagery or how it is read",
    "plan": "its levels, area or fusions",
    "shard": "its shard",
    "left_out_beyond_upsample": "its --max-upsample",
    "graphs": "the graphs it ran",
    "imagery_files": "its imagery files",
}


def key_difference(old: dict, new: dict) -> str:
    """The first part of an unfinished run's key that differs from this run's, in words."""
    name = next(k for k in [*_KEY_WORDS, *sorted(set(old) | set(new))] if old.get(k) != new.get(k))
    was, now = old.get(name), new.get(name)
    if was is None:
        return f"it recorded no {name}: an older version started it"
    if name == "graphs":
        return f"it ran {was}, not {now}"
    if name == "imagery_files":
        files: dict = now or {}
        changed = [p for p in files if was.get(p) != files[p]] + [p for p in was if p not in files]
        return f"imagery file {changed[0]} changed since it started"
    return f"{_KEY_WORDS.get(name, name)} differs"


class LevelWriter:
    """Appends one level's cells (and their precomputed fusions) to growing .npy files."""

    def __init__(self, folder: Path, state: dict, sat_dim: int, embed_dim: int, fusion_names: list[str]):
        self.state = state  # {"position", "rows", "skipped"}: shared with the progress file
        rows = state["rows"]
        self.files = {
            name: GrowingNpy(folder / f"{name}.npy", dtype, shape, rows)
            for name, (dtype, shape) in array_specs(sat_dim, embed_dim).items()
        }
        for name in fusion_names:
            self.files[f"{name}.mu"] = GrowingNpy(
                folder / FUSIONS_DIR / f"{name}.mu.npy", "float16", (embed_dim,), rows
            )
            self.files[f"{name}.s"] = GrowingNpy(folder / FUSIONS_DIR / f"{name}.s.npy", "float32", (), rows)

    def append(
        self, arrays: LevelArrays | None, fused: dict[str, tuple[np.ndarray, np.ndarray]], position: int, skipped: int
    ) -> None:
        """Add a batch's cells (None: none had imagery); `position` is the plan position after it."""
        self.state.update(position=position, skipped=self.state["skipped"] + skipped)
        if arrays is None:
            return
        for name in array_specs(0, 0):
            self.files[name].append(getattr(arrays, name))
        for name, (mu, s) in fused.items():
            self.files[f"{name}.mu"].append(mu)
            self.files[f"{name}.s"].append(s)
        for f in self.files.values():
            f.commit()
        self.state["rows"] += len(arrays.codes)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class PartialStore:
    """The work directory and progress of one run, identified by `key` (plan, bundle, shard...).
    One process at a time holds it (a lock beside the store, released by `close()` or the
    process's end): a second writer of the same store stops at once instead of interleaving rows."""

    def __init__(self, out: Path, key: dict, batch: int, *, discard_other: bool, overwrite: bool = False):
        self.out = Path(out)
        self.dir, self.progress = work_paths(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path, self._lock = _writer_lock(self.out)
        try:
            check_output(self.out, overwrite)  # again, under the lock: another writer may have finished it
            self._open(key, batch, discard_other)
        except BaseException:
            self.close()
            raise

    def _open(self, key: dict, batch: int, discard_other: bool) -> None:
        state = self._load()
        if state is not None and state["key"] != key:
            if not discard_other:
                raise StoreError(
                    f"{self.dir} holds an unfinished run of another plan, bundle or shard "
                    f"({key_difference(state['key'], key)}); rerun that command to finish it, or pass "
                    "--overwrite to discard it"
                )
            state = None
        if state is None:
            self.discard()
            self.dir.mkdir(parents=True)
            state = {"key": key, "batch": batch, "levels": {}}
        self.state = state
        self.resumed = bool(state["levels"])
        self.save()

    def _load(self) -> dict | None:
        if not (self.dir.is_dir() and self.progress.is_file()):
            return None
        try:
            return json.loads(self.progress.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    @property
    def batch(self) -> int:
        return int(self.state["batch"])

    def level_state(self, level: int, start: int) -> dict:
        return self.state["levels"].setdefault(str(level), {"position": start, "rows": 0, "skipped": 0})

    def writer(self, level: int, start: int, sat_dim: int, embed_dim: int, fusion_names: list[str]) -> LevelWriter:
        try:
            return LevelWriter(
                level_dir(self.dir, level), self.level_state(level, start), sat_dim, embed_dim, fusion_names
            )
        except OSError as exc:
            if exc.errno in NO_ROOM:  # no room for a level's files: nothing is damaged (no_room_said)
                raise
            raise StoreError(
                f"the unfinished run in {self.dir} is damaged ({exc}); delete that folder to start the run again"
            ) from exc

    def save(self) -> None:
        atomic_write(self.progress, json.dumps(self.state, sort_keys=True))

    def discard(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.progress.unlink(missing_ok=True)

    def close(self) -> None:
        """Let another process write this store (the lock file goes with it)."""
        unlock_file(self._lock_path, self._lock)


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output path that holds a store (unless overwrite) or anything else non-empty."""
    out = Path(out)
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise StoreError(f"{folder} is a file, not a folder, so {out} cannot be written; choose another --out")
    if not out.exists():
        return
    if holds_a_store(out):
        if not overwrite:
            raise StoreError(f"{out} already exists; pass --overwrite to replace it")
    elif not out.is_dir() or any(out.iterdir()):
        raise StoreError(
            f"{out} exists and is not an embedding store alone, which --overwrite would delete; choose another --out"
        )


# What a store's folder holds: anything else in it is not ours to replace.
STORE_ENTRIES = {MANIFEST_FILE, "levels"}
# Keys every store manifest has (store.format.content_id's), which no bundle's or run's has all of.
STORE_KEYS = {"bundle_id", "levels", "format_version", "id"}


def holds_a_store(out: Path) -> bool:
    """Whether `out` is a folder holding a store and nothing else, so --overwrite may replace it:
    a manifest.json alone was taken for a store, and --overwrite deleted a model bundle (even the
    --bundle being embedded) or a user's files beside a store."""
    if not out.is_dir() or {entry.name for entry in out.iterdir()} - STORE_ENTRIES:
        return False
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.keys() >= STORE_KEYS


def _finish_level(folder: Path, flat_max: int, seconds: dict[str, float]) -> dict:
    """Index one complete level folder; its manifest entry (count, index, S range, checksums).
    The index build's seconds go into `seconds`, under the level's folder name."""
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("mu", "s")}
    started = time.perf_counter()
    index, info = build_index(arrays["mu"], arrays["s"], flat_max)
    seconds[folder.name] = round(time.perf_counter() - started, 1)
    atomic_write(folder / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    s = arrays["s"]
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {
        "count": len(s),
        "index": info,
        "s_range": [float(s.min()), float(s.max())] if len(s) else None,
        "files": {name: file_sha256(folder / name) for name in files},
    }


def _uncertainty_range(root: Path, levels: list[int]) -> list[float]:
    """1st and 99th percentile of S over all cells: the uncertainty layer's default scale."""
    s = np.concatenate([np.load(level_dir(root, lv) / "s.npy") for lv in levels])
    return [float(np.percentile(s, 1)), float(np.percentile(s, 99))] if len(s) else [0.0, 1.0]


def _remove_temporaries(work: Path) -> None:
    """Remove what a write killed before its rename left in `work` (atomic_write's `.NAME.*.tmp*`
    files): no store file is hidden, and each level's checksums list every file of its folder, so
    a leftover would be moved into the store and change its id."""
    for path in work.rglob(".*"):
        if path.is_file():
            path.unlink()


def finish_store(
    work: Path, out: Path, manifest: dict, level_extra: dict[int, dict], *, flat_max: int = FLAT_MAX
) -> dict:
    """Index every level of the store written in `work`, write its manifest and move it to `out`.

    `manifest` holds the run's keys (bundle_id, imagery, plan, bounds, ...); `level_extra` adds
    per-level facts (skipped cells, fusion kinds). Safe to repeat after a crash."""
    _remove_temporaries(work)
    levels = sorted(level_extra)
    index_s: dict[str, float] = {}
    level_meta = {
        str(lv): {**_finish_level(level_dir(work, lv), flat_max, index_s), **level_extra[lv]} for lv in levels
    }
    if "run" in manifest:  # how long indexing took, beside the run's other timings (outside the id)
        manifest = {**manifest, "run": {**manifest["run"], "index_s": index_s}}
    manifest = {
        **manifest,
        "format_version": STORE_FORMAT_VERSION,
        "levels": level_meta,
        "uncertainty_range": _uncertainty_range(work, levels),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest["id"] = content_id(manifest)
    atomic_write(work / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(work, 0o755)
    replace_dir(work, Path(out))
    return manifest

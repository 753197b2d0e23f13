"""`soundscape precompute merge`: the stores of `--shard i/n` runs joined into the store one run
of the whole plan writes. Shard i holds the i-th quadkey range of every level, so each level is
the shards' arrays concatenated in shard order, streamed in chunks; indexes and the manifest are
then built exactly as a single run builds them."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from store.format import ARRAYS, INDEX_FILE, STORE_FORMAT_VERSION, StoreError, level_dir
from store.imagery_ref import as_built, relative_to_store
from store.index import FLAT_MAX
from store.npy import GrowingNpy
from store.reader import check_level_files, read_manifest
from store.verify import check_checksums
from store.writer import check_output, finish_store, no_room_said, writer_lock

CHUNK_ROWS = 65536
SAME_RUN_KEYS = ("bundle_id", "imagery", "plan", "bounds")


def _shard_manifest(path: Path) -> dict:
    try:
        manifest = read_manifest(path)
    except StoreError as exc:
        raise StoreError(f"{path} is not a finished shard store: {exc}") from None
    if manifest["format_version"] != STORE_FORMAT_VERSION or "shard" not in manifest:
        raise StoreError(f"{path} is not a shard store of this version (made by precompute --shard i/n)")
    return manifest


def _check_shard_files(path: Path, manifest: dict) -> None:
    """Every file of the shard as its manifest records it (dtype, shape, size, sha256): a damaged
    shard's rows would otherwise be checksummed into the merged store as if they were sound."""
    try:
        for key, meta in manifest["levels"].items():
            check_level_files(level_dir(path, int(key)), meta)
            if meta["count"] and set(ARRAYS) - {name.removesuffix(".npy") for name in meta.get("files", {})}:
                raise StoreError(f"{path}: level {key} does not list the checksums of all its arrays")
        check_checksums(path, manifest)
    except StoreError as exc:
        raise StoreError(f"shard {path} is damaged ({exc}); run its precompute --shard again") from None


def _check_shards(paths: list[Path], manifests: list[dict]) -> list[tuple[Path, dict]]:
    """The shards in shard order, after checking they are all the shards of one run."""
    first = manifests[0]
    for path, m in zip(paths, manifests, strict=True):
        differing = [k for k in SAME_RUN_KEYS if _run_key(m, k) != _run_key(first, k)]
        if differing:
            raise StoreError(f"{path} comes from another run than {paths[0]} (its {differing[0]} differs)")
    count = first["shard"][1]
    indices = sorted(m["shard"][0] for m in manifests)
    if indices != list(range(count)) or any(m["shard"][1] != count for m in manifests):
        raise StoreError(f"merge needs each of the {count} shards exactly once; got shards {indices}")
    return sorted(zip(paths, manifests, strict=True), key=lambda pm: pm[1]["shard"][0])


def _run_key(manifest: dict, key: str):
    """A manifest's value for `key`, imagery by its absolute paths (each shard records them
    relative to its own directory)."""
    return as_built(manifest["imagery"]) if key == "imagery" and "imagery" in manifest else manifest.get(key)


def _concatenate(parts: list[Path], out: Path) -> None:
    """Stream the rows of .npy files into one .npy."""
    first = np.load(parts[0], mmap_mode="r")
    target = GrowingNpy(out, first.dtype, first.shape[1:])
    for part in parts:
        rows = np.load(part, mmap_mode="r")
        for start in range(0, len(rows), CHUNK_ROWS):
            target.append(rows[start : start + CHUNK_ROWS])
    target.close()


def merge(shards: list[str | Path], out: str | Path, *, overwrite: bool = False, flat_max: int = FLAT_MAX) -> dict:
    """Join all shard stores of one run into the store at `out`; its manifest."""
    out = Path(out)
    paths = [Path(p) for p in shards]
    check_output(out, overwrite)
    ordered = _check_shards(paths, [_shard_manifest(p) for p in paths])
    for path, manifest in ordered:
        _check_shard_files(path, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(out), no_room_said(out, "run the merge again"):
        check_output(out, overwrite)  # again, under the lock: another writer may have finished it
        for stale in out.parent.glob(f".{out.name}.merge-*"):  # a killed merge's; none runs but this one
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.merge-", dir=out.parent))
        return _merge_into(ordered, out, work, flat_max)


def _merge_into(ordered: list[tuple[Path, dict]], out: Path, work: Path, flat_max: int) -> dict:
    """The shards' levels concatenated in `work`, finished into the store at `out`."""
    first = ordered[0][1]
    try:
        extra = {}
        for key, meta in first["levels"].items():
            level = int(key)
            for name in sorted(meta["files"]):
                if name != INDEX_FILE:
                    _concatenate([level_dir(p, level) / name for p, _ in ordered], level_dir(work, level) / name)
            extra[level] = {"skipped": sum(m["levels"][key]["skipped"] for _, m in ordered), "fusions": meta["fusions"]}
        manifest = {k: first[k] for k in SAME_RUN_KEYS}
        if "attribution" in first:  # the imagery's credit, as the first shard's run recorded it
            manifest["attribution"] = first["attribution"]
        manifest["imagery"] = relative_to_store(as_built(first["imagery"]), out)
        manifest["run"] = {"merged_shards": len(ordered)}
        return finish_store(work, out, manifest, extra, flat_max=flat_max)
    finally:
        if work.exists():
            shutil.rmtree(work)

"""The embedding store (docs/store.md; docs/design.md, "Store"): per web-mercator level, cells sorted
by quadkey with their pre-fusion features, default-metadata mean and S, centres, a FAISS index
over [mu, -S/2], and optionally precomputed fusions for each hour and month. Written aside and
renamed into place; read memory-mapped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from runtime.bundle import file_sha256
from runtime.contract import GRAPH_FILES
from runtime.tiles import descendant_range
from store.index import FLAT_MAX, build_index

STORE_FORMAT_VERSION = 2
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
# Keys a reader relies on; a manifest without one is refused when the store is opened.
REQUIRED_KEYS = ("format_version", "id", "bundle_id", "levels", "bounds", "uncertainty_range")
# Opening a store hashes its files, smallest first, up to this many bytes (`store verify` hashes
# every file); beyond it, sizes, headers and a sample of the values are still checked.
OPEN_CHECK_BYTES = 256 * 1024 * 1024
VALUE_SAMPLE_ROWS = 4096
# A FAISS index file starts with its type, dimension and vector count ("IxFI": IndexFlatIP).
_FAISS_HEADER = struct.Struct("<4siq")
_FAISS_FLAT_DATA_OFFSET = 45  # header, two unused int64, is_trained, metric type, the vectors' length


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
    body = {k: v for k, v in manifest.items() if k not in _UNHASHED_KEYS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output path that holds a store (unless overwrite) or anything else non-empty."""
    out = Path(out)
    if not out.exists():
        return
    if (out / MANIFEST_FILE).is_file():
        if not overwrite:
            raise StoreError(f"{out} already exists; pass --overwrite to replace it")
    elif not out.is_dir() or any(out.iterdir()):
        raise StoreError(f"{out} exists and is not an embedding store; choose another --out")


def _finish_level(folder: Path, flat_max: int) -> dict:
    """Index one complete level folder; its manifest entry (count, index, S range, checksums)."""
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("mu", "s")}
    index, info = build_index(arrays["mu"], arrays["s"], flat_max)
    tmp = folder / (INDEX_FILE + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, folder / INDEX_FILE)
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


def replace_dir(src: Path, out: Path) -> None:
    """Move a finished store into place; an old store at `out` is removed only after that."""
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(src, out)
    if old.exists():
        shutil.rmtree(old)


def finish_store(
    work: Path, out: Path, manifest: dict, level_extra: dict[int, dict], *, flat_max: int = FLAT_MAX
) -> dict:
    """Index every level of the store written in `work`, write its manifest and move it to `out`.

    `manifest` holds the run's keys (bundle_id, imagery, plan, bounds, ...); `level_extra` adds
    per-level facts (skipped cells, fusion kinds). Safe to repeat after a crash."""
    levels = sorted(level_extra)
    level_meta = {str(lv): {**_finish_level(level_dir(work, lv), flat_max), **level_extra[lv]} for lv in levels}
    manifest = {
        **manifest,
        "format_version": STORE_FORMAT_VERSION,
        "levels": level_meta,
        "uncertainty_range": _uncertainty_range(work, levels),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest["id"] = content_id(manifest)
    tmp = work / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, work / MANIFEST_FILE)
    os.chmod(work, 0o755)
    replace_dir(work, Path(out))
    return manifest


class Level:
    """A level of an open store: memory-mapped arrays, precomputed fusions and the FAISS index
    (each loaded on first use)."""

    def __init__(self, folder: Path, level: int, meta: dict | None = None):
        self.level = level
        self.folder = folder
        self.meta = meta or {}
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ARRAYS}
        self.arrays = LevelArrays(**arrays)
        self.fusion_kinds: list[str] = list(self.meta.get("fusions", []))
        self._fusions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._index = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.arrays.codes)

    def cells_under(self, z: int, x: int, y: int) -> slice:
        """The contiguous run of cells under tile (z, x, y), for z <= level."""
        lo, hi = descendant_range(z, x, y, self.level)
        codes = self.arrays.codes
        return slice(int(np.searchsorted(codes, lo)), int(np.searchsorted(codes, hi)))

    def precomputed(
        self, hour: int | None = None, month: int | None = None, source: int | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(mu float16 (N, D), S float32 (N,)) of every cell of the level under the metadata
        (location + the given hour or month), or None when the store holds no fusion for it.

        No metadata gives the default arrays. One hour (0..23) or one month (1..12) gives the
        stored fusion when this level has that kind. A source, or hour and month together, is
        never precomputed: None."""
        if source is not None or (hour is not None and month is not None):
            return None
        if hour is None and month is None:
            return self.arrays.mu, self.arrays.s
        kind, value, valid = ("hour", hour, range(24)) if hour is not None else ("month", month, range(1, 13))
        if kind not in self.fusion_kinds or value not in valid or int(value) != value:
            return None
        name = fusion_name(int(value), None) if kind == "hour" else fusion_name(None, int(value))
        with self._lock:
            if name not in self._fusions:
                folder = self.folder / FUSIONS_DIR
                self._fusions[name] = (
                    np.load(folder / f"{name}.mu.npy", mmap_mode="r"),
                    np.load(folder / f"{name}.s.npy", mmap_mode="r"),
                )
            return self._fusions[name]

    @property
    def index(self) -> faiss.Index:
        with self._lock:
            if self._index is None:
                try:
                    self._index = faiss.read_index(str(self.folder / INDEX_FILE))
                except RuntimeError as exc:
                    raise StoreError(f"{self.folder / INDEX_FILE} cannot be read: {str(exc).splitlines()[0]}") from None
            return self._index


class Store:
    """An open store. Opening checks it (`check_bytes` of its files are hashed, the rest checked
    for size, header and a sample of values), so a damaged store is refused with a sentence naming
    the file instead of serving wrong tiles."""

    def __init__(self, path: str | Path, check_bytes: int = OPEN_CHECK_BYTES):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.id: str = self.manifest["id"]
        self.bundle_id: str = self.manifest["bundle_id"]
        for key, meta in sorted(self.manifest["levels"].items()):
            check_level_files(level_dir(self.path, int(key)), meta)
        try:
            self.levels = {
                int(k): Level(level_dir(self.path, int(k)), int(k), v)
                for k, v in self.manifest["levels"].items()
                if v["count"] > 0
            }
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path} is damaged: {exc}; run `soundscape store verify {self.path}`") from exc
        for key, meta in self.manifest["levels"].items():
            if int(key) in self.levels:
                _check_values(self.levels[int(key)], meta)
        _check_checksums(self.path, self.manifest, check_bytes)
        if not self.levels:
            raise StoreError(f"{self.path} holds no cells")
        self.minlevel, self.maxlevel = min(self.levels), max(self.levels)
        self.bounds = tuple(self.manifest["bounds"])

    @property
    def attribution(self) -> str:
        """The map's credit line: the imagery's credit and licence as precompute recorded them
        (--credit, --licence; manifest `attribution`), then the model. A store written without
        them credits the model only: it cannot know whose imagery it embedded."""
        given = self.manifest.get("attribution") or {}
        credit, licence = given.get("credit"), given.get("licence")
        imagery = f"Imagery: {credit}" + (f" ({licence})" if licence else "") + "; " if credit else ""
        return f"{imagery}model: soundscape-tiles"

    def check_bundle(self, bundle_id: str) -> None:
        if bundle_id != self.bundle_id:
            raise StoreError(
                f"store {self.path} was built by bundle {self.bundle_id}, not {bundle_id}; "
                "rebuild it with `soundscape precompute` for this bundle"
            )

    def level_for_tile(self, z: int, cells_per_side_log2: int) -> Level:
        """The level drawn on a tile of zoom z: z + k clamped to the levels present."""
        wanted = z + cells_per_side_log2
        present = sorted(self.levels)
        below = [lv for lv in present if lv <= wanted]
        return self.levels[below[-1] if below else present[0]]

    def verify(self) -> None:
        """Check every file against its checksum and every level's arrays for consistency;
        StoreError naming the first problem."""
        if content_id(self.manifest) != self.id:
            raise StoreError(f"{self.path}: the manifest id does not match its content")
        for key, meta in sorted(self.manifest["levels"].items()):
            folder = level_dir(self.path, int(key))
            for name, digest in sorted(meta.get("files", {}).items()):
                if not (folder / name).is_file():
                    raise StoreError(f"{self.path}: level {key} is missing {name}")
                if file_sha256(folder / name) != digest:
                    raise StoreError(f"{self.path}: level {key} {name} does not match its checksum")
            if int(key) in self.levels:
                _check_level(self.levels[int(key)], meta)


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
            mu, s = level.precomputed(hour=hour, month=month)
            if mu.shape != a.mu.shape or s.shape != a.s.shape:
                raise StoreError(f"{where}: fusion {fusion_name(hour, month)} does not match the level's cells")


def read_manifest(path: Path) -> dict:
    """The manifest of the store at `path`, with every key a reader relies on; StoreError otherwise."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not an embedding store: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{manifest_path} is not a JSON object")
    if (path / GRAPH_FILES["image"]).is_file():
        raise StoreError(
            f"{path} is a model bundle, not an embedding store: pass it as the bundle, and as the "
            "store what `soundscape precompute` built with it"
        )
    if manifest.get("format_version") != STORE_FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format {manifest.get('format_version')!r}; "
            f"this version reads {STORE_FORMAT_VERSION}: rebuild it with `soundscape precompute`"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise StoreError(f"{manifest_path} has no {', '.join(map(repr, missing))}: the store is damaged; rebuild it")
    if not isinstance(manifest["levels"], dict):
        raise StoreError(f"{manifest_path}: 'levels' is not an object: the store is damaged; rebuild it")
    for key, size in (("bounds", 4), ("uncertainty_range", 2)):
        value = manifest[key]
        if not (
            isinstance(value, list)
            and len(value) == size
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
        ):
            raise StoreError(f"{manifest_path}: {key!r} is not {size} finite numbers: the store is damaged; rebuild it")
    for key, meta in manifest["levels"].items():
        if not (
            key.isdigit()
            and isinstance(meta, dict)
            and isinstance(meta.get("count"), int)
            and meta["count"] >= 0
            and isinstance(meta.get("files", {}), dict)
        ):
            raise StoreError(f"{manifest_path}: level {key!r} has no valid 'count': the store is damaged; rebuild it")
    return manifest


def _npy_layout(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) from a .npy header; StoreError naming the file if unreadable."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except FileNotFoundError:
        raise StoreError(f"{path} is missing: the store is damaged; rebuild it") from None
    except (OSError, ValueError, SyntaxError):
        raise StoreError(f"{path} has no valid .npy header: the store is damaged; rebuild it") from None
    if fortran:
        raise StoreError(f"{path} is in Fortran order, which no store writes: the store is damaged; rebuild it")
    return dtype, shape, offset


def _check_npy(path: Path, dtype: str, shape: tuple[int | None, ...]) -> tuple[int, ...]:
    """The array's shape, after checking its dtype, shape (None: any size) and exact file size."""
    found_dtype, found, offset = _npy_layout(path)
    if (
        found_dtype != np.dtype(dtype)
        or len(found) != len(shape)
        or any(want is not None and want != got for want, got in zip(shape, found, strict=True))
    ):
        raise StoreError(f"{path} holds {found_dtype} {found}, not {dtype} {shape}: the store is damaged; rebuild it")
    size = offset + int(np.prod(found)) * found_dtype.itemsize
    if path.stat().st_size != size:
        raise StoreError(
            f"{path} is {path.stat().st_size} bytes, not the {size} its header declares: "
            "the store is damaged (truncated?); rebuild it"
        )
    return found


def _check_index_header(path: Path, count: int, dim: int) -> None:
    """The FAISS index holds `count` vectors of `dim` dimensions (and a flat one is complete)."""
    try:
        with open(path, "rb") as f:
            kind, d, ntotal = _FAISS_HEADER.unpack(f.read(_FAISS_HEADER.size))
    except FileNotFoundError:
        raise StoreError(f"{path} is missing: the store is damaged; rebuild it") from None
    except (OSError, struct.error):
        raise StoreError(f"{path} is too short to be a FAISS index: the store is damaged; rebuild it") from None
    if (d, ntotal) != (dim, count):
        raise StoreError(
            f"{path} indexes {ntotal} vectors of {d} dimensions, not {count} of {dim}: the store is damaged; rebuild it"
        )
    expected = _FAISS_FLAT_DATA_OFFSET + count * dim * 4
    if kind == b"IxFI" and path.stat().st_size != expected:
        raise StoreError(
            f"{path} is {path.stat().st_size} bytes, not {expected}: the store is damaged (truncated?); rebuild it"
        )


def check_level_files(folder: Path, meta: dict) -> None:
    """Every array, fusion and index file of a level exists with the dtype, shape and size the
    manifest's cell count implies (cheap: headers and file sizes only)."""
    n = meta["count"]
    if n == 0:
        return
    sat_dim = _check_npy(folder / "sat.npy", "float16", (n, None))[1]
    embed_dim = _check_npy(folder / "mu.npy", "float16", (n, None))[1]
    for name, (dtype, row) in array_specs(sat_dim, embed_dim).items():
        _check_npy(folder / f"{name}.npy", dtype, (n, *row))
    for name, _, _ in fusion_sets([k for k in meta.get("fusions", []) if k in FUSION_KINDS]):
        _check_npy(folder / FUSIONS_DIR / f"{name}.mu.npy", "float16", (n, embed_dim))
        _check_npy(folder / FUSIONS_DIR / f"{name}.s.npy", "float32", (n,))
    _check_index_header(folder / INDEX_FILE, n, embed_dim + 1)


def _check_values(level: Level, meta: dict) -> None:
    """A sample of rows: codes ascending, mu and S finite, S inside the manifest's range."""
    a, n = level.arrays, len(level)
    rows = np.unique(np.linspace(0, n - 1, min(n, VALUE_SAMPLE_ROWS)).round().astype(np.int64))
    where = f"{level.folder}"
    if len(rows) > 1 and not (np.diff(np.asarray(a.codes[rows]).astype(np.int64)) > 0).all():
        raise StoreError(f"{where}/codes.npy is not ascending: the store is damaged; rebuild it")
    s = np.asarray(a.s[rows])
    if not np.isfinite(np.asarray(a.mu[rows], dtype=np.float32)).all():
        raise StoreError(f"{where}/mu.npy holds non-finite values: the store is damaged; rebuild it")
    lo, hi = meta.get("s_range") or (-np.inf, np.inf)
    if not (np.isfinite(s).all() and (s >= lo).all() and (s <= hi).all()):
        raise StoreError(
            f"{where}/s.npy holds values outside the manifest's S range {[lo, hi]}: the store is damaged; rebuild it"
        )


def _check_checksums(root: Path, manifest: dict, budget: int) -> None:
    """Hash the store's files, smallest first, while their total stays within `budget` bytes."""
    files = [
        (level_dir(root, int(key)) / name, digest)
        for key, meta in manifest["levels"].items()
        for name, digest in meta.get("files", {}).items()
    ]
    for path, digest in sorted(files, key=lambda f: f[0].stat().st_size if f[0].is_file() else 0):
        if not path.is_file():
            raise StoreError(f"{path} is missing: the store is damaged; rebuild it")
        budget -= path.stat().st_size
        if budget < 0:
            return
        if file_sha256(path) != digest:
            raise StoreError(f"{path} does not match its checksum in the manifest: the store is damaged; rebuild it")

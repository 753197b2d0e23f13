"""Opening an embedding store (store/format.py) to read it: what the server and the tools that
inspect a store use. Opening checks the files cheaply (headers, sizes, a sample of values, the
checksums of the smallest files), so a damaged store is refused with a sentence naming the file;
`verify_store` (store/verify.py) checks everything."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import struct
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from runtime.contract import GRAPH_FILES
from runtime.files import file_sha256
from runtime.tiles import Footprint
from store.format import (
    ARRAYS,
    FUSION_KINDS,
    FUSIONS_DIR,
    INDEX_FILE,
    MANIFEST_FILE,
    READABLE_FORMATS,
    LevelArrays,
    StoreError,
    array_specs,
    fusion_name,
    fusion_sets,
    level_dir,
)

# Keys a reader relies on; a manifest without one is refused when the store is opened.
REQUIRED_KEYS = ("format_version", "id", "bundle_id", "levels", "bounds", "uncertainty_range")
# Opening a store hashes its files, smallest first, up to this many bytes (`store verify` hashes
# every file); beyond it, sizes, headers and a sample of the values are still checked.
OPEN_CHECK_BYTES = 256 * 1024 * 1024
VALUE_SAMPLE_ROWS = 4096
# A store a writer replaces while it is opened is opened again, up to this many times in all.
OPEN_ATTEMPTS = 3
# A FAISS index file starts with its type, dimension and vector count ("IxFI": IndexFlatIP).
_FAISS_HEADER = struct.Struct("<4siq")
_FAISS_FLAT_DATA_OFFSET = 45  # header, two unused int64, is_trained, metric type, the vectors' length


class Level:
    """A level of an open store: memory-mapped arrays and precomputed fusions, and the FAISS index
    (loaded on first use). Every file is opened here, the index kept open until it is loaded: a
    store that a writer replaces later (`precompute --overwrite` renames a new folder over it)
    is read whole from the files opened, never its manifest with the new store's index."""

    def __init__(self, folder: Path, level: int, meta: dict | None = None):
        self.level = level
        self.folder = folder
        self.meta = meta or {}
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ARRAYS}
        self.arrays = LevelArrays(**arrays)
        # Kinds this version knows (a newer writer's others are left unread, as when opening).
        self.fusion_kinds: list[str] = [k for k in self.meta.get("fusions", []) if k in FUSION_KINDS]
        self._fusions = {
            name: (
                np.load(folder / FUSIONS_DIR / f"{name}.mu.npy", mmap_mode="r"),
                np.load(folder / FUSIONS_DIR / f"{name}.s.npy", mmap_mode="r"),
            )
            for name, _, _ in fusion_sets(self.fusion_kinds)
        }
        self._index: faiss.Index | None = None
        self._index_fd = os.open(folder / INDEX_FILE, os.O_RDONLY)
        self._close_index_file = weakref.finalize(self, _close_quietly, self._index_fd)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.arrays.codes)

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
        if value is None or kind not in self.fusion_kinds or value not in valid or int(value) != value:
            return None
        return self._fusions[fusion_name(int(value), None) if kind == "hour" else fusion_name(None, int(value))]

    @property
    def index(self) -> faiss.Index:
        with self._lock:
            if self._index is None:
                try:
                    reader = faiss.PyCallbackIOReader(_reader_at(self._index_fd))  # type: ignore[attr-defined]  # faiss ships it; its stubs omit it
                    self._index = faiss.read_index(reader)
                except RuntimeError as exc:
                    raise StoreError(f"{self.folder / INDEX_FILE} cannot be read: {str(exc).splitlines()[0]}") from None
                self._close_index_file()
            return self._index


def _reader_at(fd: int) -> Callable[[int], bytes]:
    """Successive reads of an open file from its start, whatever its descriptor's position."""
    offset = 0

    def read(size: int) -> bytes:
        nonlocal offset
        data = os.pread(fd, size, offset)
        offset += len(data)
        return data

    return read


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class Store:
    """An open store. Opening checks it (`check_bytes` of its files are hashed, the rest checked
    for size, header and a sample of values), so a damaged store is refused with a sentence naming
    the file instead of serving wrong tiles."""

    def __init__(self, path: str | Path, check_bytes: int = OPEN_CHECK_BYTES):
        self.path = Path(path)
        for _ in range(OPEN_ATTEMPTS):
            self.manifest: dict = {}
            try:
                self._open(check_bytes)
            except StoreError:
                if not self._replaced():
                    raise
                continue
            if not self._replaced():
                return
        raise StoreError(
            f"{self.path} was replaced by another store {OPEN_ATTEMPTS} times while it was opened; "
            "open it again once its writer has finished"
        )

    def _open(self, check_bytes: int) -> None:
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
            shard = self.manifest.get("shard")
            said = EMPTY_SHARD.format(*shard) if isinstance(shard, list) and len(shard) == 2 else ""
            raise StoreError(f"{self.path} holds no cells{said}")
        self.minlevel, self.maxlevel = min(self.levels), max(self.levels)
        self.bounds = tuple(self.manifest["bounds"])

    def _replaced(self) -> bool:
        """Whether `path` holds another store than the manifest read (a writer renamed a new store
        over it meanwhile), so the files opened since may be of either: open it again."""
        if not self.manifest:
            return False
        try:
            return read_manifest(self.path)["id"] != self.manifest["id"]
        except StoreError:
            return True

    @functools.cached_property
    def footprint(self) -> Footprint:
        """Where the store's cells lie: its bounds, or, for imagery across the antimeridian (whose
        bounds span every longitude), the part of the two boxes its plan kept within them. Read once
        from the manifest, which a Store never changes (every TileJSON answer names it)."""
        whole = Footprint(*self.bounds)
        boxes = (self.manifest.get("plan") or {}).get("footprint")
        if not boxes:
            return whole
        return Footprint.enclosing([(w, s, e, n) for w, s, e, n in boxes]).clipped(whole) or whole

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


# What an empty shard store is (precompute's note says the same as it writes one).
EMPTY_SHARD = (
    ": it is shard {0} of {1}, whose part of the plan came out empty (shards split it on batch boundaries), "
    "and `soundscape precompute merge` takes it as it is"
)


def read_manifest(path: Path) -> dict:
    """The manifest of the store at `path`, with every key a reader relies on; StoreError otherwise."""
    manifest_path = path / MANIFEST_FILE
    if not path.exists():
        raise StoreError(f"{path} is not an embedding store: it does not exist")
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not an embedding store: it has no {MANIFEST_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreError(f"{manifest_path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{manifest_path} is not a JSON object")
    if (path / GRAPH_FILES["image"]).is_file():
        raise StoreError(
            f"{path} is a model bundle, not an embedding store: pass it as the bundle, and as the "
            "store what `soundscape precompute` built with it"
        )
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise StoreError(
            f"{path} has store format {manifest.get('format_version')!r}; this version reads "
            f"{' and '.join(map(str, READABLE_FORMATS))}: rebuild it with `soundscape precompute`"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise StoreError(f"{manifest_path} has no {', '.join(map(repr, missing))}: the store is damaged; rebuild it")
    if not isinstance(manifest["levels"], dict):
        raise StoreError(f"{manifest_path}: 'levels' is not an object: the store is damaged; rebuild it")
    for key in ("plan", "run", "attribution", "imagery"):  # optional objects (a synthetic store's imagery: null)
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise StoreError(f"{manifest_path}: {key!r} is not an object: the store is damaged; rebuild it")
    if not all(isinstance(v, str) for v in (manifest.get("attribution") or {}).values()):
        raise StoreError(f"{manifest_path}: 'attribution' holds more than texts: the store is damaged; rebuild it")
    shard = manifest.get("shard", [0, 1])
    if not (
        isinstance(shard, list) and len(shard) == 2 and all(type(v) is int for v in shard) and 0 <= shard[0] < shard[1]
    ):
        raise StoreError(f"{manifest_path}: 'shard' is not [i, n] with 0 <= i < n: the store is damaged; rebuild it")
    if not all(isinstance(manifest[k], str) for k in ("id", "bundle_id")):
        raise StoreError(f"{manifest_path}: 'id' and 'bundle_id' are not texts: the store is damaged; rebuild it")
    for key, size in (("bounds", 4), ("uncertainty_range", 2)):
        if not _finite_numbers(manifest[key], size):
            raise StoreError(f"{manifest_path}: {key!r} is not {size} finite numbers: the store is damaged; rebuild it")
    footprint = (manifest.get("plan") or {}).get("footprint", [])
    if not (isinstance(footprint, list) and len(footprint) <= 2 and all(_finite_numbers(b, 4) for b in footprint)):
        raise StoreError(
            f"{manifest_path}: 'plan.footprint' is not one or two boxes of 4 finite numbers: the store is damaged; "
            "rebuild it"
        )
    for key, meta in manifest["levels"].items():
        if not (
            key.isdigit()
            and isinstance(meta, dict)
            and isinstance(meta.get("count"), int)
            and meta["count"] >= 0
            and isinstance(meta.get("files", {}), dict)
        ):
            raise StoreError(f"{manifest_path}: level {key!r} has no valid 'count': the store is damaged; rebuild it")
        wrong = _ill_typed_level_key(meta)
        if wrong:
            raise StoreError(f"{manifest_path}: level {key!r} has {wrong}: the store is damaged; rebuild it")
    return manifest


def _finite_numbers(value: object, size: int) -> bool:
    return isinstance(value, list) and len(value) == size and all(_finite(v) for v in value)


def _finite(value: object) -> bool:
    """A JSON number that a float holds (an integer of 400 digits is none: float() overflows)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _ill_typed_level_key(meta: dict) -> str | None:
    """What is wrong with a level's optional keys (None when nothing): each has the type the
    writer gives it, so a reader never trips over a manifest that lies."""
    files, fusions = meta.get("files", {}), meta.get("fusions", [])
    if not all(isinstance(name, str) and isinstance(digest, str) for name, digest in files.items()):
        return "'files' that are not names with sha256 checksums"
    if not (isinstance(fusions, list) and all(isinstance(k, str) for k in fusions)):
        return "'fusions' that is not a list of fusion kinds"
    if meta.get("s_range") is not None and not _finite_numbers(meta["s_range"], 2):
        return "an 's_range' that is not 2 finite numbers"
    if "index" in meta and not (isinstance(meta["index"], dict) and isinstance(meta["index"].get("kind"), str)):
        return "an 'index' without its 'kind'"
    if not isinstance(meta.get("skipped", 0), int):
        return "a 'skipped' that is not a count"
    return None


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

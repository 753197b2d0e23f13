"""`--land-only`: which cells hold land, from the GLOBE ocean mask (30 arc-seconds) in the PyPI
package global-land-mask (MIT). The full mask is 933 MB of booleans and takes seconds to
decompress, so it is reduced once to "any land" at 4 arc-minutes (8 x 8 mask pixels) and cached;
a cell holds land when any reduced pixel it touches does. Coarse cells therefore keep every
coast and island; at levels >= 11 a kept cell may lie up to ~7 km off the coast."""

from __future__ import annotations

import functools
import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from runtime.files import atomic_write
from runtime.tiles import tiles_bounds

COARSEN = 8
MASK_FILE = "globe_combined_mask_compressed.npz"


def _package_mask() -> Path:
    spec = find_spec("global_land_mask")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("--land-only needs the package global-land-mask: pip install global-land-mask")
    return Path(next(iter(spec.submodule_search_locations))) / MASK_FILE


def _cache_file(source: Path) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "soundscape-tiles"
    stat = source.stat()
    return root / f"land-any-{COARSEN}-{stat.st_size}.npy"


def _reduce(source: Path) -> np.ndarray:
    ocean = np.load(source)["mask"]  # (21600, 43200), True = ocean, row 0 at 90 N
    h, w = ocean.shape
    return ~ocean.reshape(h // COARSEN, COARSEN, w // COARSEN, COARSEN).all(axis=(1, 3))


@functools.lru_cache(maxsize=1)
def coarse_land() -> np.ndarray:
    """(2700, 5400) bool, True where any GLOBE pixel of the 4' block is land; row 0 at 90 N."""
    source = _package_mask()
    cache = _cache_file(source)
    if cache.is_file():
        return np.load(cache)
    land = _reduce(source)
    try:  # a cache that cannot be written only costs time
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda tmp: np.save(tmp, land))
    except OSError:
        pass
    return land


class LandMask:
    """`any_land(z, x, y)` for arrays of cells, by summed-area lookups on the reduced mask."""

    def __init__(self, land: np.ndarray | None = None):
        land = coarse_land() if land is None else land
        self.rows, self.cols = land.shape
        self.sums = np.zeros((self.rows + 1, self.cols + 1), dtype=np.int32)
        np.cumsum(np.cumsum(land, axis=0, dtype=np.int32), axis=1, out=self.sums[1:, 1:])

    def any_land(self, z: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        west, south, east, north = tiles_bounds(z, x, y)
        deg_row, deg_col = 180.0 / self.rows, 360.0 / self.cols
        r0 = np.clip(np.floor((90.0 - north) / deg_row), 0, self.rows - 1).astype(np.int64)
        r1 = np.clip(np.ceil((90.0 - south) / deg_row), r0 + 1, self.rows).astype(np.int64)
        c0 = np.clip(np.floor((west + 180.0) / deg_col), 0, self.cols - 1).astype(np.int64)
        c1 = np.clip(np.ceil((east + 180.0) / deg_col), c0 + 1, self.cols).astype(np.int64)
        s = self.sums
        return (s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]) > 0

"""From cell values to tile pixels: bilinear interpolation between cell centres.

A pixel's value is interpolated from the cells whose centres surround it, and the cell window of
a tile includes a one-cell ring of its neighbours. So the pixels on both sides of a tile border
are computed from the same cells: tiles are seamless (and seamless across the antimeridian,
where columns wrap). Coordinates are "global cell units" of the drawn level: cell i spans
[i, i + 1) and has its centre at i + 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class AxisSampling:
    """One axis of a tile: which cells it reads and how each pixel weighs them."""

    first: int  # global index (at the drawn level) of the window's first cell
    weights: np.ndarray  # (size, cells) float32; each row sums to 1
    nearest: np.ndarray  # (size,) int: the cell (window index) whose area holds the pixel

    @property
    def cells(self) -> int:
        return self.weights.shape[1]


@lru_cache(maxsize=1024)
def _relative_axis(depth: int, size: int, offset: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Window start (relative to the base cell), weights and nearest cells of one axis.

    depth = level - zoom. For depth < 0 a tile lies inside one cell; `offset` is the tile's
    position inside that cell (t mod 2^-depth).
    """
    scale = 2.0**depth
    # Pixel centres in cell units, relative to the base cell; minus 0.5 puts cell centres on integers.
    pos = (offset + (np.arange(size) + 0.5) / size) * scale - 0.5
    left = np.floor(pos).astype(np.int64)
    frac = (pos - left).astype(np.float32)
    lo = int(left.min())
    cells = int(left.max()) + 2 - lo
    weights = np.zeros((size, cells), dtype=np.float32)
    rows = np.arange(size)
    weights[rows, left - lo] = 1.0 - frac
    weights[rows, left + 1 - lo] += frac
    nearest = np.floor(pos + 0.5).astype(np.int64) - lo
    weights.setflags(write=False)
    nearest.setflags(write=False)
    return lo, weights, nearest


def axis_sampling(zoom: int, t: int, level: int, size: int) -> AxisSampling:
    """Sampling of tile column (or row) t of `zoom`, drawn from the cells of `level`."""
    depth = level - zoom
    if depth >= 0:
        base, offset = t << depth, 0
    else:
        base, offset = t >> -depth, t & ((1 << -depth) - 1)
    lo, weights, nearest = _relative_axis(depth, size, offset)
    return AxisSampling(base + lo, weights, nearest)


def sample(values: np.ndarray, rows: AxisSampling, cols: AxisSampling) -> np.ndarray:
    """(size, size) float32 pixels from (rows.cells, cols.cells) cell values (NaN = no cell).

    Missing cells drop out of the weighted mean; a pixel whose own cell is missing is NaN, so
    the data's edge stays where the cells end.
    """
    valid = ~np.isnan(values)
    if valid.all():  # the common case: no weights to renormalise, no holes
        return (rows.weights @ values.astype(np.float32) @ cols.weights.T).astype(np.float32)
    filled = np.where(valid, values, np.float32(0)).astype(np.float32)
    num = rows.weights @ filled @ cols.weights.T
    den = rows.weights @ valid.astype(np.float32) @ cols.weights.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (num / den).astype(np.float32)
    out[~valid[np.ix_(rows.nearest, cols.nearest)]] = np.nan
    return out

"""The server's compute, free of HTTP and caching: which cells a tile reads, cell embeddings under
requested metadata, match probabilities, tile pixels, point profiles and top-k search.
Every method is synchronous and CPU-bound; `server.service` runs them in a thread pool."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import faiss
import mercantile
import numpy as np

from runtime.bundle import Bundle
from runtime.metadata import encode_metadata
from runtime.scoring import (
    CONTRAST_WEIGHT,
    CSD,
    REFERENCE_PROMPTS,
    distance,
    logits,
    match_probability,
    query_vector,
    scoring_kind,
    uncertainty,
)
from runtime.tiles import MERCATOR_LAT_LIMIT, Footprint, demorton, morton, morton_ranges, tile_range
from server.sampling import AxisSampling, axis_sampling, sample
from store.reader import Level, Store

# The tile matrix set `window` cuts tiles on: a store's cells are web-mercator tiles
# (runtime/tiles.py), so a tile's values belong on this grid and a GeoTIFF is placed on it alone.
GRID = "WebMercatorQuad"
CELLS_PER_TILE_LOG2 = 4  # a tile draws the cells of level z + 4: 16 x 16 cells
MAX_CELLS_PER_SIDE_LOG2 = 8  # beyond this a tile would hold more cells than pixels
# Cells per fuse graph run. onnxruntime's arena keeps the peak of the largest run: fusing the
# demo's level 7 (16384 cells) took 488 MB more in batches of 4096, 73 MB in batches of 512, as fast.
FUSE_BATCH = 512
# A large fusion split over threads is not cut finer than this: a graph run has a fixed cost.
SMALLEST_PART = 256
# The default colour scale of a query is read from a fixed, evenly spread sample of one level's
# cells: the finest level with at most SCALE_LEVEL_CELLS cells (or the coarsest), strided down to
# SCALE_SAMPLE_CELLS. A new hour/month/source fuses the sample once (shared by every query): about
# three 256 px tiles' worth of cells, so it is never one of the bounded large fusions.
SCALE_LEVEL_CELLS = 4096
SCALE_SAMPLE_CELLS = 1024
SCALE_PERCENTILES = (2.0, 98.0)
# /search under metadata the store does not hold fuses candidates, not the whole level, and ranks
# them exactly: the SEARCH_CANDIDATES (or CANDIDATES_PER_K x k) best cells by the stored default
# ranking, PROXY_SHARE of that many by the additive proxy (Engine.candidates), and the children of
# PARENT_SHARE of that many cells one level up under each stored fusion of one of the request's
# fields alone. The shares were chosen by recall against the whole level on two sets of prompts
# and metadata (benchmarks/search_recall.py, BENCHMARKS.md). A level under twice that many cells
# is fused whole: exact, at most twice the work.
SEARCH_CANDIDATES = 1536
CANDIDATES_PER_K = 30
PROXY_SHARE = 2 / 3
PARENT_SHARE = 1 / 12
# Layers drawn for a query: `heatmap` (match probability, the paper's -CSD map) and `contrast`
# (its log-odds against the reference prompts' at the same cell); `uncertainty` needs none.
QUERY_LAYERS = ("heatmap", "contrast")
LAYERS = (*QUERY_LAYERS, "uncertainty")
# What each layer's values are: TileJSON's legend, WMTS, /metadata and the GeoTIFFs say it.
UNITS = {
    "heatmap": "match probability (0 to 1): the model's calibrated probability that the sound is heard in the cell",
    "contrast": "log-odds (natural log) that the sound is heard in the cell minus half the mean log-odds of 24 "
    "everyday sounds there: higher where this sound is heard more than elsewhere, beyond what makes any sound "
    "likely in the cell",
    "uncertainty": "S, the sum of the cell embedding's variances sigma^2, unitless (the embedding's means have "
    "unit length; higher: the model is less sure what the place sounds like)",
}


@dataclass(frozen=True)
class QueryMetadata:
    """Query-time metadata; None means unknown. `source` is a vocabulary name."""

    hour: int | None = None
    month: int | None = None
    source: str | None = None

    @property
    def is_default(self) -> bool:
        return self.hour is None and self.month is None and self.source is None

    def at(self, axis: str, value: int | None) -> QueryMetadata:
        """These metadata with the hour (`axis` "hour") or the month set to `value`."""
        return replace(self, hour=value) if axis == "hour" else replace(self, month=value)


@dataclass(frozen=True)
class QueryEmbedding:
    mu: np.ndarray  # (D,) float32
    s: float

    def to_bytes(self) -> bytes:
        return np.concatenate([[self.s], self.mu]).astype(np.float32).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int | None = None) -> QueryEmbedding:
        """ValueError when the bytes hold another `dim` (a cache entry another bundle's layout left)."""
        row = np.frombuffer(data, dtype=np.float32)
        if dim is not None and len(row) != dim + 1:
            raise ValueError(f"a query embedding of {len(row) - 1} dims, not {dim}")
        return cls(row[1:].copy(), float(row[0]))


@dataclass(frozen=True)
class CellEmbeddings:
    """(mu, S) of some cells; mu float16 like the store, so every path gives equal values (or
    their exact float32 widening, which the scoring makes anyway: the colour-scale sample)."""

    mu: np.ndarray  # (N, D) float16 (float32: the scale sample)
    s: np.ndarray  # (N,) float32

    def to_bytes(self) -> bytes:
        return (
            np.int64(len(self.s)).tobytes() + self.s.astype(np.float32).tobytes() + self.mu.astype(np.float16).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes, dim: int | None = None) -> CellEmbeddings:
        """ValueError when the bytes are not n cells of `dim` (another layout's cache entry)."""
        n = int(np.frombuffer(data[:8], dtype=np.int64)[0])
        if n < 0 or len(data) < 8 + 4 * n or (dim is not None and len(data) != 8 + (4 + 2 * dim) * n):
            raise ValueError(f"{len(data)} bytes are not {n} cells" + (f" of {dim} dims" if dim else ""))
        s = np.frombuffer(data[8 : 8 + 4 * n], dtype=np.float32)
        mu = np.frombuffer(data[8 + 4 * n :], dtype=np.float16).reshape(n, -1)
        return cls(mu, s)

    @classmethod
    def concat(cls, parts: Sequence[CellEmbeddings]) -> CellEmbeddings:
        return cls(np.concatenate([p.mu for p in parts]), np.concatenate([p.s for p in parts]))

    def row(self, i: int) -> CellEmbeddings:
        return CellEmbeddings(self.mu[i : i + 1], self.s[i : i + 1])

    def with_row(self, i: int | None, cell: CellEmbeddings) -> CellEmbeddings:
        """A copy with row i replaced by the one row of `cell` (self when i is None)."""
        if i is None:
            return self
        mu, s = self.mu.copy(), self.s.copy()
        mu[i], s[i] = cell.mu[0], cell.s[0]
        return CellEmbeddings(mu, s)


@dataclass(frozen=True)
class Scale:
    """A colour scale: the values at the two ends of the colormap, and whether values beyond
    each end exist (they are drawn in the end colour: the legend marks them)."""

    lo: float
    hi: float
    clipped_low: bool = False
    clipped_high: bool = False

    @classmethod
    def over(cls, values: np.ndarray, lo: float, hi: float) -> Scale:
        """The scale (lo, hi) with its clipped ends judged on `values`."""
        return cls(lo, hi, bool((values < lo).any()), bool((values > hi).any()))


def round_scale(lo: float, hi: float, digits: int = 3) -> tuple[float, float]:
    """Ends rounded to `digits` significant digits of their span (readable in a legend, stable in
    URLs), lo down and hi up so no sampled value moves inside the clipped range; hi > lo."""
    span = max(hi - lo, abs(hi) * 1e-6, 1e-12)
    step = 10.0 ** (np.floor(np.log10(span)) - digits + 1)
    lo_r, hi_r = np.floor(lo / step) * step, np.ceil(hi / step) * step
    return float(f"{lo_r:.6g}"), float(f"{max(hi_r, lo_r + step):.6g}")


@dataclass(frozen=True)
class CellWindow:
    """The cells a tile reads: a rectangle of the drawn level, including a one-cell ring."""

    level: Level
    rows: AxisSampling
    cols: AxisSampling
    index: np.ndarray  # (rows.cells * cols.cells,) row into the level's arrays; -1 = no cell

    @property
    def present(self) -> np.ndarray:
        return self.index[self.index >= 0]

    @property
    def empty(self) -> bool:
        return not (self.index >= 0).any()

    @property
    def key(self) -> dict:
        """Identifies the cells read (for the fused-block cache); independent of zoom."""
        return {
            "level": self.level.level,
            "col": self.cols.first,
            "row": self.rows.first,
            "ncols": self.cols.cells,
            "nrows": self.rows.cells,
        }


def split_parts(index: np.ndarray, parts: int) -> list[np.ndarray]:
    """`index` in at most `parts` runs of nearly equal length, in order, none under
    SMALLEST_PART cells, to fuse in parallel. A cell's fusion does not depend on the other cells
    of its graph run, so the parts give the values one serial fusion gives (np.array_equal in
    tests/test_server_rest.py)."""
    count = max(1, min(parts, len(index) // SMALLEST_PART))
    return np.array_split(index, count)


def lookup(level: Level, codes: np.ndarray) -> np.ndarray:
    """Positions of Morton `codes` in the level's sorted codes; -1 where absent."""
    all_codes = level.arrays.codes
    if len(all_codes) == 0:
        return np.full(codes.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(all_codes, codes), len(all_codes) - 1)
    return np.where(all_codes[pos] == codes, pos, -1).astype(np.int64)


def children(level: Level, parent_codes: np.ndarray) -> np.ndarray:
    """Rows of `level` that lie in the given cells of the level above (each has up to 4)."""
    x, y = demorton(parent_codes)
    codes = np.concatenate([morton(2 * x + dx, 2 * y + dy) for dx in (0, 1) for dy in (0, 1)])
    rows = lookup(level, codes.astype(np.uint64))
    return rows[rows >= 0]


def best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest scores, best first (ties in row order)."""
    rows = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return rows[np.argsort(-scores[rows], kind="stable")]


def rows_within(level: Level, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Ascending rows of the cells whose centre lies in (west, south, east, north), edges
    included; west > east is a box across the antimeridian. Only the runs of sorted codes under
    the box's tiles are read (runtime.tiles.morton_ranges), so a small box costs the same on a
    planet-scale level as on the demo's, where scanning every centre took 49 ms at 16.7 M cells
    (benchmarks/bbox_rows.py)."""
    halves = Footprint(*bbox).boxes
    starts, stops = (np.concatenate(part) for part in zip(*(_runs_under_tiles(level, h) for h in halves), strict=True))
    if len(halves) > 1:  # runs of two halves, in order and as one where they overlap
        order = np.argsort(starts, kind="stable")
        starts, reach = starts[order], np.maximum.accumulate(stops[order])
        first = np.flatnonzero(np.r_[True, starts[1:] >= reach[:-1]])
        starts, stops = starts[first], reach[np.r_[first[1:] - 1, len(reach) - 1]]
    lengths = stops - starts
    rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return rows[centres_in_box(np.asarray(level.arrays.lonlat[rows], np.float32), bbox)]


def centres_in_box(lonlat: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Which (lon, lat) rows lie in (west, south, east, north), edges included (west > east:
    across the antimeridian)."""
    west, south, east, north = bbox
    lon, lat = lonlat[:, 0], lonlat[:, 1]
    across = (lon >= west) | (lon <= east) if west > east else (lon >= west) & (lon <= east)
    return across & (lat >= south) & (lat <= north)


def cells_certainly_within(level: Level, bbox: tuple[float, float, float, float]) -> int:
    """How many cells lie in the tiles at least two tiles inside the box's edges (their centres
    are in the box, whatever float32 rounds): a lower bound counted from the runs' ends alone,
    so a box over a limit is refused before its rows are listed (all of level 12: 16.7 M)."""
    count = 0
    for half in Footprint(*bbox).boxes:
        x0, x1, y0, y1 = tile_range(level.level, half)
        if x1 - x0 >= 4 and y1 - y0 >= 4:
            lo, hi = morton_ranges(level.level, x0 + 2, x1 - 2, y0 + 2, y1 - 2)
            count += int((np.searchsorted(level.arrays.codes, hi) - np.searchsorted(level.arrays.codes, lo)).sum())
    return count


def _runs_under_tiles(level: Level, bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Ascending row runs [start, stop) of the level's cells in the tiles that meet bbox, and in
    one tile more each side (a float32 centre may round across a tile's edge at deep levels)."""
    last = (1 << level.level) - 1
    x0, x1, y0, y1 = (min(max(v, 0), last) for v in tile_range(level.level, bbox))
    lo, hi = morton_ranges(level.level, max(x0 - 1, 0), min(x1 + 1, last), max(y0 - 1, 0), min(y1 + 1, last))
    codes = level.arrays.codes
    return np.searchsorted(codes, lo), np.searchsorted(codes, hi)


def ranks_whole_level(rank_by: str, meta: QueryMetadata) -> bool:
    """Whether /search ranks every cell rather than candidates: by contrast under a source, which
    moves the contrast far from every stored ranking that names candidates (church bells under
    wildlife recordings: none of its top 10; benchmarks/search_recall.py --rank-by contrast)."""
    return rank_by == "contrast" and meta.source is not None


def candidate_count(k: int, cells: int) -> int | None:
    """How many candidates /search ranks for the best k of `cells`, or None to rank them all."""
    count = max(SEARCH_CANDIDATES, CANDIDATES_PER_K * k)
    return count if 2 * count < cells else None


class Engine:
    def __init__(self, bundle: Bundle, store: Store):
        store.check_bundle(bundle.id)
        self.bundle = bundle
        self.store = store
        self.scoring = scoring_kind(bundle.manifest)  # CSD, or COSINE for an InfoNCE model
        self.stats: Counter[str] = Counter()  # work done, for tests and benchmarks
        self._parents: dict[int, np.ndarray] = {}  # parent_rows, per level number

    # Query side -----------------------------------------------------------------------------
    def embed_text(self, text: str) -> QueryEmbedding:
        return self.embed_texts([text])[0]

    def embed_texts(self, texts: Sequence[str]) -> list[QueryEmbedding]:
        """One text graph run for all `texts` (padded to the longest; each embedding equals its
        lone run's to the bit, in fp32 and int8 alike, so a tile's bytes do not depend on which
        other texts were embedded with its query: tests/test_batching.py)."""
        mu, logvar = self.bundle.embed_texts(texts)
        self.stats["text_encodings"] += len(texts)
        self.stats["text_batches"] += 1
        s = uncertainty(logvar)
        return [QueryEmbedding(mu[i].astype(np.float32), float(s[i])) for i in range(len(texts))]

    def embed_wave(self, wave: np.ndarray, sample_rate: int) -> QueryEmbedding:
        mu, logvar = self.bundle.embed_waveform(wave, sample_rate)
        self.stats["audio_encodings"] += 1
        return QueryEmbedding(mu[0].astype(np.float32), float(uncertainty(logvar)[0]))

    # Cells -----------------------------------------------------------------------------------
    def window(self, z: int, x: int, y: int, size: int) -> CellWindow:
        """The cells tile (z, x, y) reads at `size` pixels (its level is z + 4, clamped)."""
        level = self.store.level_for_tile(z, CELLS_PER_TILE_LOG2)
        depth = level.level - z
        rows, cols = axis_sampling(z, y, level.level, size), axis_sampling(z, x, level.level, size)
        n = 1 << level.level
        if depth > MAX_CELLS_PER_SIDE_LOG2:
            return CellWindow(level, rows, cols, np.full(rows.cells * cols.cells, -1, np.int64))
        col_ids = (cols.first + np.arange(cols.cells)) % n  # columns wrap at the antimeridian
        row_ids = rows.first + np.arange(rows.cells)
        grid_x, grid_y = np.meshgrid(col_ids, np.clip(row_ids, 0, n - 1))
        index = lookup(level, morton(grid_x.ravel(), grid_y.ravel()))
        outside = np.repeat((row_ids < 0) | (row_ids >= n), cols.cells)
        index[outside] = -1
        return CellWindow(level, rows, cols, index)

    def stored(self, level: Level, index: np.ndarray, meta: QueryMetadata) -> CellEmbeddings | None:
        """Embeddings that need no fusion: the store's default, or its precomputed fusion."""
        if meta.is_default:
            return CellEmbeddings(np.asarray(level.arrays.mu[index]), np.asarray(level.arrays.s[index]))
        source = None if meta.source is None else self.bundle.sources.id(meta.source)
        fused = level.precomputed(meta.hour, meta.month, source)  # a store may hold hourly/monthly fusions
        if fused is None:
            return None
        mu, s = fused
        return CellEmbeddings(np.asarray(mu[index], dtype=np.float16), np.asarray(s[index], dtype=np.float32))

    def fuse(
        self,
        level: Level,
        index: np.ndarray,
        meta: QueryMetadata,
        count: bool = True,
        clocks: np.ndarray | None = None,
    ) -> CellEmbeddings:
        """Run the fusion graph on cells under `meta` (batched); `count=False` for a part of a
        fusion that split_parts divided (the whole is counted once); `clocks`: each cell's own
        (hour, month), (N, 2), in place of meta's (a map at an instant)."""
        source = None if meta.source is None else self.bundle.sources.id(meta.source)
        mus, ss = [], []
        for start in range(0, len(index), FUSE_BATCH):
            part = index[start : start + FUSE_BATCH]
            lonlat = np.asarray(level.arrays.lonlat[part])
            hour, month = (meta.hour, meta.month) if clocks is None else clocks[start : start + FUSE_BATCH].T
            encoded = encode_metadata(
                len(part), lat=lonlat[:, 1], lon=lonlat[:, 0], hour=hour, month=month, source=source
            )
            mu, logvar = self.bundle.fuse(np.asarray(level.arrays.sat[part], dtype=np.float32), encoded)
            mus.append(mu.astype(np.float16))
            ss.append(uncertainty(logvar))
        self.stats["fusions"] += count
        if not mus:
            return CellEmbeddings(np.zeros((0, self.bundle.embed_dim), np.float16), np.zeros(0, np.float32))
        return CellEmbeddings(np.concatenate(mus), np.concatenate(ss))

    def embeddings(self, level: Level, index: np.ndarray, meta: QueryMetadata) -> CellEmbeddings:
        return self.stored(level, index, meta) or self.fuse(level, index, meta)

    @cached_property
    def reference(self) -> QueryEmbedding:
        """The mean (mu, S) of REFERENCE_PROMPTS, embedded once per engine (24 texts, ~60 ms):
        logits are linear in (mu_q, S_q), so its logit at a cell is the prompts' mean logit there."""
        mu, logvar = self.bundle.embed_texts(list(REFERENCE_PROMPTS))
        return QueryEmbedding(mu.astype(np.float32).mean(axis=0), float(uncertainty(logvar).mean()))

    # Values ----------------------------------------------------------------------------------
    def logits(self, cells: CellEmbeddings, query: QueryEmbedding, each_row_alone: bool = False) -> np.ndarray:
        """-a d + b of the query at each cell, d as the model was trained to score (self.scoring)."""
        d = distance(query.mu, query.s, cells.mu, cells.s, self.scoring, each_row_alone)
        return logits(d, *self.bundle.calibration)

    def contrast_query(self, query: QueryEmbedding) -> QueryEmbedding:
        """The one query whose logit at a cell is the contrast / (1 - w): logit_q - w logit_ref is
        linear in the query's (mu, S). A contrast tile costs one matrix-vector product, like a
        heatmap's, and ranks cells (the store's index, /search) as the contrast layer draws them."""
        w, ref = CONTRAST_WEIGHT, self.reference
        return QueryEmbedding((query.mu - w * ref.mu) / (1 - w), (query.s - w * ref.s) / (1 - w))

    def values(
        self, cells: CellEmbeddings, layer: str, query: QueryEmbedding | None, each_row_alone: bool = False
    ) -> np.ndarray:
        """Per-cell values: match probability (heatmap); contrast, the query's log-odds minus
        CONTRAST_WEIGHT times the reference prompts' mean log-odds at the cell (the part every
        sound shares there, S_i included, is discounted); or S (uncertainty). `each_row_alone`:
        each cell's number independent of the cells beside it (runtime.scoring.csd)."""
        if layer == "uncertainty":
            return cells.s.astype(np.float32)
        if query is None:
            raise ValueError(f"the {layer} layer needs a query")
        if layer == "contrast":
            return (1 - CONTRAST_WEIGHT) * self.logits(cells, self.contrast_query(query), each_row_alone)
        a, b = self.bundle.calibration
        d = distance(query.mu, query.s, cells.mu, cells.s, self.scoring, each_row_alone)
        return match_probability(d, a, b)

    def cell_values(self, cells: CellEmbeddings, layer: str, query: QueryEmbedding | None) -> np.ndarray:
        """`values` as a JSON answer reports them (/point, /search): each cell's independent of
        the others in the answer, so a cell reads the same in a /search of 20 cells as at its
        /point. Tiles keep the BLAS product (a tile's pixels are interpolated anyway)."""
        return self.values(cells, layer, query, each_row_alone=True)

    def tile_values(
        self, window: CellWindow, cells: CellEmbeddings, layer: str, query: QueryEmbedding | None
    ) -> np.ndarray:
        """(size, size) float32 pixels, bilinear between cell centres; NaN where no cell."""
        grid = np.full(window.index.shape, np.nan, dtype=np.float32)
        grid[window.index >= 0] = self.values(cells, layer, query)
        self.stats["renders"] += 1
        return sample(grid.reshape(window.rows.cells, window.cols.cells), window.rows, window.cols)

    @cached_property
    def scale_sample(self) -> tuple[Level, np.ndarray]:
        """The cells every query's default colour scale is read from: one level, evenly spread
        (a strided sample of Morton order covers the whole store, unlike its first rows)."""
        levels = sorted(self.store.levels)
        small = [lv for lv in levels if len(self.store.levels[lv]) <= SCALE_LEVEL_CELLS]
        level = self.store.levels[small[-1] if small else levels[0]]
        count = min(len(level), SCALE_SAMPLE_CELLS)
        return level, np.unique(np.linspace(0, len(level) - 1, count).round().astype(np.int64))

    @staticmethod
    def default_scale(values: np.ndarray) -> Scale:
        """The 2nd-98th percentile of the values of the scale sample, rounded for legends and URLs."""
        low, high = np.percentile(values, SCALE_PERCENTILES)
        lo, hi = round_scale(float(low), float(high))
        return Scale.over(values, lo, hi)

    def uncertainty_scale(self, values: np.ndarray) -> Scale:
        """The uncertainty layer's default: the store's range of S (`uncertainty_range`), the same
        for every metadata so hours compare, its ends rounded outwards as default_scale's are."""
        low, high = (float(v) for v in self.store.manifest["uncertainty_range"])
        return Scale.over(values, *round_scale(low, high))

    # Points and search -----------------------------------------------------------------------
    def cell_at(self, lon: float, lat: float, level: Level) -> int | None:
        """Row of the cell of `level` holding (lon, lat), or None (also past the mercator limit)."""
        if abs(lat) > MERCATOR_LAT_LIMIT:
            return None
        # 180 is -180's meridian: the cell east of it, as a meridian between two cells belongs to
        # the cell east of it (mercantile gives the last column, so /point/180 and /point/-180 differed)
        tile = mercantile.tile(-180.0 if lon == 180 else lon, lat, level.level)
        found = lookup(level, np.asarray([morton(tile.x, tile.y)], dtype=np.uint64))[0]
        return None if found < 0 else int(found)

    def fuse_profile(self, level: Level, row: int, meta: QueryMetadata, axis: str) -> CellEmbeddings:
        """The cell under `meta` at each value of one axis, `hour` (0..23) or `month` (1..12), in one
        graph run. A row's fusion may depend on its batch in the last bits (BLAS's summing order;
        the demo's fuse graph gives a row the same bits in batches of 1 to 400, but a bundle's
        graph need not), so /point reads the number of an hour (a month) from its row here, the
        same run its profile entry reads: one computation for both."""
        values = np.arange(24.0) if axis == "hour" else np.arange(1.0, 13.0)
        hour = values if axis == "hour" else meta.hour
        month = values if axis == "month" else meta.month
        source = None if meta.source is None else self.bundle.sources.id(meta.source)
        lon, lat = np.asarray(level.arrays.lonlat[row])
        sat = np.repeat(np.asarray(level.arrays.sat[[row]], dtype=np.float32), len(values), axis=0)
        encoded = encode_metadata(len(values), lat=lat, lon=lon, hour=hour, month=month, source=source)
        mu, logvar = self.bundle.fuse(sat, encoded)
        self.stats["fusions"] += 1
        return CellEmbeddings(mu.astype(np.float16), uncertainty(logvar))

    def candidates(
        self, level: Level, meta: QueryMetadata, query: QueryEmbedding, count: int, scan_limit: int
    ) -> np.ndarray:
        """Sorted rows of `level` worth ranking exactly under `meta`. Metadata moves the ranking,
        but mostly among cells that nearby rankings hold:
        - the best `count` by the stored default embeddings (the level's index);
        - for each of meta's hour and month alone with a stored fusion at this level, or else one
          level up: the best `count` by it here, or the children of its best count x
          PARENT_SHARE there;
        - the best count x PROXY_SHARE by the additive proxy: the default score plus, for each
          such field, the score change its fusion alone makes (at the cell, or at its parent).
        A level is scanned whole (the proxy, a stored fusion) only up to `scan_limit` cells."""
        above = self.store.levels.get(level.level - 1)
        default = self.default_ranking(level, query) if len(level) <= scan_limit else None
        found = [self.top_k(level, None, query, count)[0] if default is None else best_rows(default, count)]
        default_above = None
        shifts: list[np.ndarray] = []  # per cell of `level`: the score change of one field alone
        for alone in (QueryMetadata(hour=meta.hour), QueryMetadata(month=meta.month)):
            if alone.is_default:
                continue
            if default is not None and (here := self.stored(level, np.arange(len(level)), alone)) is not None:
                scores = self.ranking(here, query)
                found.append(best_rows(scores, count))
                shifts.append(scores - default)
            elif above is not None and len(above) <= scan_limit:
                up = self.stored(above, np.arange(len(above)), alone)
                if up is not None:
                    scores = self.ranking(up, query)
                    parents = best_rows(scores, max(1, round(count * PARENT_SHARE)))
                    found.append(children(level, np.asarray(above.arrays.codes[parents])))
                    if default is not None:  # the proxy, which scans this level
                        if default_above is None:
                            default_above = self.default_ranking(above, query)
                        rows = self.parent_rows(level, above)
                        shifts.append(np.where(rows >= 0, (scores - default_above)[rows], 0.0))
        if default is not None and shifts:
            found.append(best_rows(default + np.sum(shifts, axis=0), max(1, round(count * PROXY_SHARE))))
        return np.unique(np.concatenate(found))

    def default_ranking(self, level: Level, query: QueryEmbedding) -> np.ndarray:
        """`ranking` of every cell of `level` under default metadata: read from a flat index's
        float32 [mu, -S/2] vectors as FAISS scores them (no float16 conversion of the level),
        else from the stored embeddings."""
        index = level.index
        if isinstance(index, faiss.IndexFlat):
            vectors = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
            return vectors @ query_vector(query.mu, self.scoring)[0]
        return self.ranking(CellEmbeddings(np.asarray(level.arrays.mu), np.asarray(level.arrays.s)), query)

    def parent_rows(self, level: Level, above: Level) -> np.ndarray:
        """The row in `above` of each cell's parent (-1 where the store holds none), once per
        level."""
        if level.level not in self._parents:
            x, y = demorton(np.asarray(level.arrays.codes))
            self._parents[level.level] = lookup(above, morton(x >> 1, y >> 1).astype(np.uint64))
        return self._parents[level.level]

    def ranking(self, cells: CellEmbeddings, query: QueryEmbedding) -> np.ndarray:
        """What top_k ranks cells by: mu_i . mu_q - S_i / 2 (CSD), or mu_i . mu_q (cosine)."""
        return cells.mu.astype(np.float32) @ query.mu - (0.5 * cells.s if self.scoring == CSD else 0.0)

    def top_k(
        self, level: Level, cells: CellEmbeddings | None, query: QueryEmbedding, k: int
    ) -> tuple[np.ndarray, CellEmbeddings]:
        """Rows of the k best cells and their embeddings, best first.

        `cells` None = default metadata: FAISS over the stored [mu, -S/2]. Otherwise an exact
        scan of the level's fused embeddings (the stored index ranks default metadata only).
        """
        k = min(k, len(level))
        if cells is None:
            _, ids = level.index.search(query_vector(query.mu, self.scoring), k)
            rows = ids[0][ids[0] >= 0].astype(np.int64)
            return rows, CellEmbeddings(np.asarray(level.arrays.mu[rows]), np.asarray(level.arrays.s[rows]))
        rows = best_rows(self.ranking(cells, query), k)
        return rows, CellEmbeddings(cells.mu[rows], cells.s[rows])

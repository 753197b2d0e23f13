"""The server's engine: query embeddings, per-cell scores under requested metadata, and the
value grid of a map tile. HTTP-free, so it can be benchmarked and tested directly."""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from model.bundle import Bundle
from model.metadata import encode_metadata
from model.scoring import csd, match_probability, uncertainty
from model.text import normalise_text
from model.tiles import demorton
from precompute.store import Level, Store

CELLS_PER_TILE_LOG2 = 4  # a tile draws the cells of level z + 4: 16 x 16 cells
MAX_CELLS_PER_SIDE_LOG2 = 8  # beyond this a tile would hold more cells than pixels


@dataclass(frozen=True)
class Metadata:
    """Query-time metadata; None means unknown."""

    hour: int | None = None
    month: int | None = None
    source: int | None = None

    @property
    def is_default(self) -> bool:
        return self.hour is None and self.month is None and self.source is None


@dataclass(frozen=True)
class QueryEmbedding:
    mu: np.ndarray
    s: float


class SoundscapeService:
    def __init__(self, bundle: Bundle, store: Store, query_cache_size: int = 1024):
        store.check_bundle(bundle.id)
        self.bundle = bundle
        self.store = store
        self.stats: Counter[str] = Counter()
        self._queries: OrderedDict[str, QueryEmbedding] = OrderedDict()
        self._query_cache_size = query_cache_size
        self._lock = threading.Lock()

    def text_query(self, text: str) -> QueryEmbedding:
        """Embedding of a text query, cached by its normalised form."""
        key = normalise_text(text)
        with self._lock:
            hit = self._queries.get(key)
            if hit is not None:
                self._queries.move_to_end(key)
                return hit
        mu, logvar = self.bundle.embed_texts([key])
        embedding = QueryEmbedding(mu[0], float(uncertainty(logvar)[0]))
        self.stats["text_encodings"] += 1
        with self._lock:
            self._queries[key] = embedding
            while len(self._queries) > self._query_cache_size:
                self._queries.popitem(last=False)
        return embedding

    def cell_embeddings(self, level: Level, cells: slice, meta: Metadata) -> tuple[np.ndarray, np.ndarray]:
        """(mu, S) of a run of cells under `meta`: stored for the default, fused otherwise."""
        arrays = level.arrays
        if meta.is_default:
            return np.asarray(arrays.mu[cells], dtype=np.float32), np.asarray(arrays.s[cells])
        lonlat = np.asarray(arrays.lonlat[cells])
        encoded = encode_metadata(len(lonlat), lat=lonlat[:, 1], lon=lonlat[:, 0], hour=meta.hour,
                                  month=meta.month, source=meta.source)
        mu, logvar = self.bundle.fuse(np.asarray(arrays.sat[cells], dtype=np.float32), encoded)
        self.stats["fusions"] += 1
        return mu, uncertainty(logvar)

    def cell_values(self, level: Level, cells: slice, meta: Metadata, layer: str,
                    query: QueryEmbedding | None) -> np.ndarray:
        mu, s = self.cell_embeddings(level, cells, meta)
        if layer == "uncertainty":
            return s.astype(np.float32)
        a, b = self.bundle.calibration
        return match_probability(csd(query.mu, query.s, mu, s), a, b)

    def tile_values(self, z: int, x: int, y: int, meta: Metadata, layer: str,
                    query: QueryEmbedding | None, size: int = 256) -> np.ndarray:
        """(size, size) float32 values of tile (z, x, y); NaN where there is no cell."""
        level = self.store.level_for_tile(z, CELLS_PER_TILE_LOG2)
        out = np.full((size, size), np.nan, dtype=np.float32)
        depth = level.level - z
        if depth > MAX_CELLS_PER_SIDE_LOG2:
            return out
        if depth < 0:  # the tile lies inside one cell of a coarser level
            cells = level.cells_under(level.level, x >> -depth, y >> -depth)
        else:
            cells = level.cells_under(z, x, y)
        if cells.stop <= cells.start:
            return out
        values = self.cell_values(level, cells, meta, layer, query)
        self.stats["renders"] += 1
        if depth < 0:
            out[:] = values[0]
            return out
        n = 1 << depth
        cx, cy = demorton(np.asarray(level.arrays.codes[cells]))
        grid = np.full((n, n), np.nan, dtype=np.float32)
        grid[(cy - (y << depth)).astype(np.int64), (cx - (x << depth)).astype(np.int64)] = values
        return np.repeat(np.repeat(grid, size // n, axis=0), size // n, axis=1)

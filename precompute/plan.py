"""Which cells a precompute run embeds: every level's tiles over a bounding box (optionally only
those touching a GeoJSON region, or holding land), in quadkey (Morton) order, which is also the
store's order.

A level is enumerated block by block (a block is one tile BLOCK_DEPTH levels up, whose cells
are one contiguous Morton range), so a plan never holds a whole fine level in memory. Positions
in that enumeration are what shards split and what a resumed run restarts from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from runtime.arguments import NUMBER, levels_in
from runtime.errors import UserError
from runtime.tiles import (
    EARTH_CIRCUMFERENCE_M,
    MAX_LEVEL,
    MERCATOR_LAT_LIMIT,
    morton,
    tile_bounds,
    tile_range,
    tiles_bounds,
)

BLOCK_DEPTH = 8  # a block holds up to 4^8 = 65536 cells


class PlanError(UserError, ValueError):
    """The requested plan cannot be run (bad levels, bbox, region or shard); the message says why."""


def parse_levels(text: str) -> list[int]:
    """'0-6' or '3' or '2,4,5' -> sorted levels; PlanError with a sentence otherwise."""
    try:
        return levels_in(text, MAX_LEVEL)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """'west,south,east,north' in degrees; PlanError with a sentence otherwise."""
    parts = text.split(",")
    if len(parts) != 4 or not all(NUMBER.fullmatch(v) for v in parts):
        raise PlanError(f"bbox must be four numbers west,south,east,north, not {text!r}")
    west, south, east, north = (float(v) for v in parts)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise PlanError(f"bbox {text!r} is not west<east in -180..180 and south<north in -90..90")
    return west, south, east, north


SHARD = re.compile(r"([0-9]{1,9})/([0-9]{1,9})", re.ASCII)  # ASCII digits, as every number option


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0 <= i < n) -> (i, n)."""
    found = SHARD.fullmatch(text)
    if found is None:
        raise PlanError(f"shard must look like 0/4 (shard i of n), not {text!r}")
    i, n = int(found[1]), int(found[2])
    if not 0 <= i < n:
        raise PlanError(f"shard {text!r} needs 0 <= i < n")
    return i, n


def intersect(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float] | None:
    west, south = max(a[0], b[0]), max(a[1], b[1])
    east, north = min(a[2], b[2]), min(a[3], b[3])
    return (west, south, east, north) if west < east and south < north else None


def _clip_latitudes(value):
    """Coordinates with latitudes clamped to the mercator domain (nested lists kept)."""
    if value and isinstance(value[0], (int, float)):
        return [value[0], max(-MERCATOR_LAT_LIMIT, min(MERCATOR_LAT_LIMIT, value[1]))]
    return [_clip_latitudes(v) for v in value]


@dataclass(frozen=True)
class Region:
    """Geometries of a GeoJSON file: their bbox, their web-mercator shapes and the file's hash."""

    path: str
    bbox: tuple[float, float, float, float]
    shapes: tuple[dict, ...]  # EPSG:3857
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> Region:
        """The region of a GeoJSON file: PlanError in one sentence unless it holds geometries of
        finite longitudes and latitudes in the world's range that span some area."""
        try:
            raw = Path(path).read_bytes()
            geometries = _geometries(json.loads(raw))
            if not geometries:
                raise ValueError("it holds no geometry")
            points = np.concatenate([_positions(g) for g in geometries])
        except RecursionError:
            raise PlanError(f"region {path} nests lists deeper than any GeoJSON geometry does") from None
        except (OSError, ValueError) as exc:
            raise PlanError(f"region {path} is not a readable GeoJSON file of geometries: {exc}") from None
        west, south = points.min(axis=0).tolist()
        east, north = points.max(axis=0).tolist()
        if not (west < east and south < north):
            raise PlanError(
                f"region {path} spans no area (a point, or a line along one meridian or parallel): "
                "give polygons around the places to embed"
            )
        shapes = tuple(
            transform_geom(
                "EPSG:4326", "EPSG:3857", {"type": g["type"], "coordinates": _clip_latitudes(g["coordinates"])}
            )
            for g in geometries
        )
        return cls(str(path), (west, south, east, north), shapes, hashlib.sha256(raw).hexdigest())


# How many lists enclose a position in each GeoJSON geometry's coordinates (RFC 7946).
NESTING = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}


def _geometries(doc: Any) -> list[dict]:
    """The geometries of a GeoJSON object (a FeatureCollection's, a Feature's, a
    GeometryCollection's, or the geometry itself), null geometries left out."""
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind is None:
        raise ValueError("it is not a GeoJSON object (one with a type)")
    members = {"FeatureCollection": "features", "GeometryCollection": "geometries"}.get(kind)
    if members is not None:
        if not isinstance(doc.get(members), list):
            raise ValueError(f"a {kind} without a list of {members}")
        return [g for member in doc[members] for g in _geometries(member)]
    if kind == "Feature":
        return [] if doc.get("geometry") is None else _geometries(doc["geometry"])
    return [doc]


def _positions(geometry: dict) -> np.ndarray:
    """The (lon, lat) vertices of a GeoJSON geometry, as an (N, 2) array; ValueError unless they
    are finite numbers within longitudes -180..180 and latitudes -90..90."""
    kind = geometry["type"]
    if kind not in NESTING:
        raise ValueError(f"{kind!r} is no GeoJSON geometry ({', '.join(NESTING)})")
    positions: list[Any] = [geometry.get("coordinates")]
    for _ in range(NESTING[kind]):
        if not all(isinstance(p, list) for p in positions):
            raise ValueError(f"a {kind}'s coordinates are not nested {NESTING[kind]} lists deep")
        positions = [q for p in positions for q in p]
    if not positions:
        raise ValueError(f"a {kind} without coordinates")
    if not all(isinstance(p, list) and len(p) in (2, 3) and all(_number(v) for v in p) for p in positions):
        raise ValueError(f"a {kind} whose positions are not [longitude, latitude] numbers")
    # Comparisons refuse NaN, infinities and integers past a float alike, before any conversion.
    for lon, lat, *_ in positions:
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            across = (
                " (a region across the antimeridian is two polygons, split at 180)" if 180 < abs(lon) <= 360 else ""
            )
            raise ValueError(
                f"a {kind} has a vertex ({lon!r}, {lat!r}) outside longitudes -180..180 and latitudes -90..90{across}"
            )
    return np.array([p[:2] for p in positions], dtype=np.float64)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Plan:
    """The cells of `levels` over `bbox`, optionally only those touching `region` or holding land,
    or meeting one of the `footprint` boxes (imagery across the antimeridian lies in two: its
    bbox spans every longitude, and a fine level's cells between them would be read for nothing)."""

    def __init__(
        self,
        levels: list[int],
        bbox: tuple[float, float, float, float],
        *,
        region: Region | None = None,
        land_only: bool = False,
        footprint: tuple[tuple[float, float, float, float], ...] | None = None,
    ):
        self.levels = sorted(levels)
        self.region = region
        self.land_only = land_only
        self.footprint = footprint
        west, south, east, north = bbox
        area = intersect(bbox, region.bbox) if region else (west, south, east, north)
        if area is None:
            raise PlanError(f"region {region.path if region else ''} lies outside bbox {bbox}")
        self.bbox = area
        self._levels: dict[int, LevelPlan] = {}

    @property
    def filtered(self) -> bool:
        """Whether cells are kept by a region, land or footprint filter, not by the bbox alone."""
        return self.region is not None or self.land_only or self.footprint is not None

    def describe(self) -> dict:
        """What was asked, for the manifest (and to recognise a run when it resumes)."""
        described = {
            "levels": self.levels,
            "bbox": [round(v, 9) for v in self.bbox],
            "region": self.region.sha256 if self.region else None,
            "land_only": self.land_only,
        }
        if self.footprint is not None:
            described["footprint"] = [[round(v, 9) for v in box] for box in self.footprint]
        return described

    @functools.cached_property
    def _land(self):
        from precompute.landmask import LandMask

        return LandMask()

    def keep(self, level: int, x: np.ndarray, y: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
        """Which of the cells (x, y) of one block pass the region and land filters."""
        keep = np.ones(len(x), dtype=bool)
        if self.footprint is not None:
            keep &= self._meets_footprint(*tiles_bounds(level, x, y))
        if self.region is not None:
            keep &= self._in_region(level, x, y, block)
        if self.land_only:
            keep &= self._land.any_land(level, x, y)
        return keep

    def _meets_footprint(self, west, south, east, north) -> np.ndarray:
        assert self.footprint is not None  # only called with a footprint
        meets = np.zeros(np.shape(west), dtype=bool)
        for w, s, e, n in self.footprint:
            meets |= (west < e) & (w < east) & (south < n) & (s < north)
        return meets

    def block_meets(self, level: int, block: tuple[int, int, int]) -> bool:
        """Whether a block (depth, bx, by) of the level can hold a cell the footprint keeps."""
        depth, bx, by = block
        if self.footprint is None:
            return True
        return bool(self._meets_footprint(*(np.asarray(v) for v in tile_bounds(level - depth, bx, by))))

    def _in_region(self, level: int, x: np.ndarray, y: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
        assert self.region is not None  # only called with a region
        depth, bx, by = block
        n = 1 << depth
        size = EARTH_CIRCUMFERENCE_M / (1 << level)
        half = EARTH_CIRCUMFERENCE_M / 2
        grid = rasterize(
            self.region.shapes,
            out_shape=(n, n),
            all_touched=True,
            dtype="uint8",
            transform=from_origin(-half + (bx << depth) * size, half - (by << depth) * size, size, size),
        )
        return grid[y - (by << depth), x - (bx << depth)] > 0

    def level(self, level: int) -> LevelPlan:
        """The level's enumeration, built once (it counts every block's cells)."""
        if level not in self._levels:
            self._levels[level] = LevelPlan(self, level)
        return self._levels[level]


class LevelPlan:
    """One level of a plan: its blocks in Morton order, the cell count of each, and the cells of
    any range of positions."""

    def __init__(self, plan: Plan, level: int):
        self.plan = plan
        self.level = level
        self.depth = min(level, BLOCK_DEPTH)
        self.x0, self.x1, self.y0, self.y1 = tile_range(level, plan.bbox)
        bx0, bx1, by0, by1 = self.x0 >> self.depth, self.x1 >> self.depth, self.y0 >> self.depth, self.y1 >> self.depth
        bx, by = (a.ravel() for a in np.meshgrid(np.arange(bx0, bx1 + 1), np.arange(by0, by1 + 1)))
        order = np.argsort(morton(bx, by), kind="stable")
        bx, by = bx[order], by[order]
        self.blocks = list(zip(bx.tolist(), by.tolist(), strict=True))
        if plan.filtered:  # count what the filters keep, block by block
            self.counts = np.array([len(self._block_cells(i)[0]) for i in range(len(self.blocks))], dtype=np.int64)
        else:  # a block's share of the bbox rectangle
            d = self.depth
            self.counts = (
                (np.minimum(((bx + 1) << d) - 1, self.x1) - np.maximum(bx << d, self.x0) + 1)
                * (np.minimum(((by + 1) << d) - 1, self.y1) - np.maximum(by << d, self.y0) + 1)
            ).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _block_cells(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, x, y) of block i's cells in the plan, in Morton order."""
        bx, by = self.blocks[i]
        d = self.depth
        if not self.plan.block_meets(self.level, (d, bx, by)):
            empty = np.zeros(0, np.int64)
            return np.zeros(0, np.uint64), empty, empty
        xs = np.arange(max(bx << d, self.x0), min(((bx + 1) << d) - 1, self.x1) + 1)
        ys = np.arange(max(by << d, self.y0), min(((by + 1) << d) - 1, self.y1) + 1)
        x, y = (a.ravel().astype(np.int64) for a in np.meshgrid(xs, ys))
        keep = self.plan.keep(self.level, x, y, (d, bx, by))
        x, y = x[keep], y[keep]
        codes = morton(x, y)
        order = np.argsort(codes)
        return codes[order], x[order], y[order]

    def cells(self, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(codes, x, y) of positions start..stop, a block (or its part) at a time."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for i in range(max(first, 0), len(self.blocks)):
            lo, hi = int(self.starts[i]), int(self.starts[i + 1])
            if lo >= stop:
                break
            if hi <= start:
                continue
            codes, x, y = self._block_cells(i)
            part = slice(max(start, lo) - lo, min(stop, hi) - lo)
            yield codes[part], x[part], y[part]

    def at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, x, y) of the cells at sorted plan positions."""
        blocks = np.searchsorted(self.starts, positions, side="right") - 1
        parts = []
        for i in np.unique(blocks):
            codes, x, y = self._block_cells(int(i))
            local = positions[blocks == i] - self.starts[i]
            parts.append((codes[local], x[local], y[local]))
        if not parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        codes, x, y = (np.concatenate(col) for col in zip(*parts, strict=True))
        return codes, x, y

    def batches(self, start: int, stop: int, batch: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(first position, codes, x, y) of consecutive batches of positions start..stop."""
        pending: list[tuple[np.ndarray, ...]] = []
        held, position = 0, start
        for part in self.cells(start, stop):
            pending.append(part)
            held += len(part[0])
            while held >= batch:
                joined = [np.concatenate(col) for col in zip(*pending, strict=True)]
                codes, x, y = (a[:batch] for a in joined)
                yield position, codes, x, y
                position += batch
                pending = [tuple(a[batch:] for a in joined)]
                held -= batch
        if held:
            codes, x, y = (np.concatenate(col) for col in zip(*pending, strict=True))
            yield position, codes, x, y

    def shard(self, index: int, count: int, batch: int) -> tuple[int, int]:
        """Positions [start, stop) of shard `index` of `count`: contiguous quadkey ranges of nearly
        equal size whose edges fall on batch boundaries, so shards batch cells as one run does."""

        def edge(j: int) -> int:
            return len(self) if j >= count else (len(self) * j // count) // batch * batch

        return edge(index), edge(index + 1)

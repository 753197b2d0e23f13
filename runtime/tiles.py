"""Web-mercator tile math shared by training, corpus, precompute and the server.

Cells are XYZ tiles; within a level they are ordered by quadkey, which for one level is the
order of the Morton code (bit-interleaved x, y): the cells under a tile are one contiguous run
of a level's sorted codes. Scalar tile math is mercantile's; the array forms here are numpy's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import mercantile
import numpy as np

EARTH_RADIUS_M = 6378137.0
EARTH_CIRCUMFERENCE_M = 2 * math.pi * EARTH_RADIUS_M
MAX_LEVEL = 24  # Morton codes of levels <= 24 fit in 48 bits.
# The web-mercator square ends at this latitude (atan(sinh(pi)) in degrees): no tile lies beyond it.
MERCATOR_LAT_LIMIT = 85.0511287798066
# The whole tiled world as (west, south, east, north).
WORLD_BBOX = (-180.0, -MERCATOR_LAT_LIMIT, 180.0, MERCATOR_LAT_LIMIT)

# (west, south, east, north) in degrees, west < east.
Box = tuple[float, float, float, float]


class Footprint(NamedTuple):
    """Where imagery or a store's cells lie: (west, south, east, north) in degrees, west > east
    where it crosses the antimeridian, as RFC 7946 writes such a bbox and rasterio's
    transform_bounds returns one. A plain box holding it (`bounds`) spans every longitude then:
    places on the far side of the planet passed a test against it, and its middle, longitude 0,
    was advertised as the imagery's centre."""

    west: float
    south: float
    east: float
    north: float

    @classmethod
    def enclosing(cls, boxes: Sequence[Box]) -> Footprint:
        """The least longitude span holding every box: across the antimeridian where the widest
        gap between the boxes lies elsewhere (files on both sides of 180 degrees)."""
        south, north = min(b[1] for b in boxes), max(b[3] for b in boxes)
        spans: list[list[float]] = []
        for west, _, east, _ in sorted(boxes):
            if spans and west <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], east)
            else:
                spans.append([west, east])
        # The widest gap between spans, the one across the antimeridian (wrap) included, is left out.
        gaps = [(spans[0][0] + 360 - spans[-1][1], -1)] + [
            (spans[i + 1][0] - spans[i][1], i) for i in range(len(spans) - 1)
        ]
        _, widest = max(gaps)
        if widest < 0:
            return cls(spans[0][0], south, spans[-1][1], north)
        return cls(spans[widest + 1][0], south, spans[widest][1], north)

    @property
    def wraps(self) -> bool:
        """Whether it crosses the antimeridian."""
        return self.west > self.east

    @property
    def boxes(self) -> tuple[Box, ...]:
        """It as west < east boxes: one, or two across the antimeridian (the first ending at
        180 E, the second starting at 180 W)."""
        if self.wraps:
            return (self.west, self.south, 180.0, self.north), (-180.0, self.south, self.east, self.north)
        return ((self.west, self.south, self.east, self.north),)

    @property
    def bounds(self) -> Box:
        """The one west < east box holding it, as TileJSON (whose bounds "MUST NOT wrap"; MapLibre
        requests no tile for west > east), WMTS and GDAL take an extent: every longitude where it
        crosses the antimeridian."""
        if self.wraps:
            return (-180.0, self.south, 180.0, self.north)
        return (self.west, self.south, self.east, self.north)

    @property
    def centre(self) -> tuple[float, float]:
        """(lon, lat): the middle of its longitude span, near 180 degrees for one across the
        antimeridian (the middle of `bounds`, longitude 0, lies on the far side of the planet)."""
        east = self.east + 360.0 if self.wraps else self.east
        lon = (self.west + east) / 2
        return (lon - 360.0 if lon > 180 else lon), (self.south + self.north) / 2

    def covers(self, lon: float, lat: float) -> bool:
        """Whether the point (longitude in -180..180) lies inside it, edges included."""
        if not self.south <= lat <= self.north:
            return False
        if self.wraps:
            return lon >= self.west or lon <= self.east
        return self.west <= lon <= self.east

    def clipped(self, bbox: Box) -> Footprint | None:
        """The part of it inside a west < east box, or None where they do not meet."""
        parts = [(max(b[0], bbox[0]), max(b[1], bbox[1]), min(b[2], bbox[2]), min(b[3], bbox[3])) for b in self.boxes]
        parts = [p for p in parts if p[0] < p[2] and p[1] < p[3]]
        return Footprint.enclosing(parts) if parts else None


_SPREAD = (
    (16, 0x0000FFFF0000FFFF),
    (8, 0x00FF00FF00FF00FF),
    (4, 0x0F0F0F0F0F0F0F0F),
    (2, 0x3333333333333333),
    (1, 0x5555555555555555),
)
_COMPACT = (
    (1, 0x3333333333333333),
    (2, 0x0F0F0F0F0F0F0F0F),
    (4, 0x00FF00FF00FF00FF),
    (8, 0x0000FFFF0000FFFF),
    (16, 0x00000000FFFFFFFF),
)


def _spread(v):
    """Insert a zero bit above each of the low 32 bits (works on ints and uint64 arrays)."""
    v = v & 0xFFFFFFFF
    for shift, mask in _SPREAD:
        v = (v | (v << shift)) & mask
    return v


def _compact(v):
    """Inverse of `_spread`: keep the even bits and pack them together."""
    v = v & 0x5555555555555555
    for shift, mask in _COMPACT:
        v = (v | (v >> shift)) & mask
    return v


def morton(x, y):
    """Morton code of tile columns x and rows y (the y bit above the x bit, like quadkey digits
    2*y + x). Python ints give an int; arrays give a uint64 array."""
    if isinstance(x, (int, np.integer)) and isinstance(y, (int, np.integer)):
        return _spread(int(x)) | (_spread(int(y)) << 1)
    x = np.asarray(x).astype(np.uint64)
    y = np.asarray(y).astype(np.uint64)
    return _spread(x) | (_spread(y) << np.uint64(1))


def demorton(code):
    """Inverse of `morton`: (x, y), as ints or uint64 arrays."""
    if isinstance(code, (int, np.integer)):
        return _compact(int(code)), _compact(int(code) >> 1)
    code = np.asarray(code).astype(np.uint64)
    return _compact(code), _compact(code >> np.uint64(1))


def quadkey(x: int, y: int, z: int) -> str:
    """Bing-style quadkey string of tile (z, x, y); '' for z = 0."""
    return mercantile.quadkey(x, y, z)


def tile_centres(z: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) in degrees of the centres of tiles (z, x, y)."""
    n = float(1 << z)
    xf = (np.asarray(x, dtype=np.float64) + 0.5) / n
    yf = (np.asarray(y, dtype=np.float64) + 0.5) / n
    lon = xf * 360.0 - 180.0
    lat = np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * yf))))
    return lon, lat


def tile_of(lat: np.ndarray, lon: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """XYZ tile (x, y) holding each point at zoom z."""
    n = np.left_shift(1, np.asarray(z, np.int64)).astype(np.float64)
    lat_r = np.radians(np.clip(lat, -MERCATOR_LAT_LIMIT, MERCATOR_LAT_LIMIT))
    x = np.floor((np.asarray(lon) + 180.0) / 360.0 * n)
    y = np.floor((1.0 - np.arcsinh(np.tan(lat_r)) / np.pi) / 2.0 * n)
    return np.clip(x, 0, n - 1).astype(np.int64), np.clip(y, 0, n - 1).astype(np.int64)


def tile_index(lat: np.ndarray, lon: np.ndarray, z: int) -> np.ndarray:
    """Each point's tile at zoom z as one int, y * 2**z + x: np.bincount(..., minlength=4**z)
    counts the points per tile."""
    lat = np.asarray(lat, np.float64)
    x, y = tile_of(lat, np.asarray(lon, np.float64), np.full(lat.shape, z))
    return y * (1 << z) + x


def points_per_tile(lat: np.ndarray, lon: np.ndarray, z: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How many of the points fall in each tile (z, x[i], y[i]): how crowded a level's cells are."""
    n = 1 << z
    return np.bincount(tile_index(lat, lon, z), minlength=n * n)[np.asarray(y) * n + np.asarray(x)]


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of tile (z, x, y)."""
    return tuple(mercantile.bounds(x, y, z))


def tiles_bounds(z: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """(west, south, east, north) arrays in degrees of tiles (z, x, y): `tile_bounds` for arrays."""
    n = float(1 << z)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)

    def lat(row: np.ndarray) -> np.ndarray:
        return np.degrees(np.arctan(np.sinh(np.pi * (1.0 - 2.0 * row / n))))

    return x / n * 360.0 - 180.0, lat(y + 1), (x + 1) / n * 360.0 - 180.0, lat(y)


def cells_area_km2(z: int, y: np.ndarray) -> np.ndarray:
    """Ground area in km^2 of the tiles of rows y at zoom z, on a sphere of the WGS84 equatorial
    radius: R^2 dlon (sin north - sin south). A web-mercator map gives polar land most of its
    cells (at 60 degrees a cell is a quarter of one at the equator), so an average over a region
    weighs each cell by this."""
    _, south, _, north = tiles_bounds(z, np.zeros(len(y)), y)
    band = np.sin(np.radians(north)) - np.sin(np.radians(south))
    return (EARTH_RADIUS_M / 1000) ** 2 * (2 * np.pi / float(1 << z)) * band


def mercator_pixel_size(z: int, size: int) -> float:
    """Web-mercator metres per pixel of a `size`-pixel tile at zoom z (ground metres at the equator)."""
    return EARTH_CIRCUMFERENCE_M / (size * float(1 << z))


def ground_sample_distance(z: int, lat: np.ndarray | float, size: int) -> np.ndarray:
    """Metres per pixel on the ground of a `size`-pixel tile at zoom z and latitude `lat`."""
    return np.cos(np.radians(lat)) * EARTH_CIRCUMFERENCE_M / (size * float(1 << z))


def tile_range(z: int, bbox: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Inclusive column and row ranges (x0, x1, y0, y1) of the zoom-z tiles that intersect bbox
    (west, south, east, north); latitudes are clamped to the mercator limit. A bbox edge on a tile
    boundary belongs to the tile inside the box (mercantile.tiles' rule)."""
    west, south, east, north = bbox
    south = max(-MERCATOR_LAT_LIMIT, min(MERCATOR_LAT_LIMIT, south))
    north = max(-MERCATOR_LAT_LIMIT, min(MERCATOR_LAT_LIMIT, north))
    upper_left = mercantile.tile(west, north, z)
    lower_right = mercantile.tile(east - mercantile.LL_EPSILON, south + mercantile.LL_EPSILON, z)
    return upper_left.x, lower_right.x, upper_left.y, lower_right.y


def tiles_in_bbox(z: int, bbox: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """All tiles (x, y) of zoom z that intersect bbox (west, south, east, north), as arrays."""
    x0, x1, y0, y1 = tile_range(z, bbox)
    xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
    return xs.ravel().astype(np.int64), ys.ravel().astype(np.int64)


def morton_ranges(z: int, x0: int, x1: int, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending half-open Morton code ranges [lo, hi) that together hold exactly the zoom-z
    tiles with x0 <= x <= x1 and y0 <= y <= y1: a box's cells are these runs of a level's sorted
    codes. A quadtree descent: a block inside the box is one range, one across its edge splits
    in four, so the ranges number about the blocks along the edge, not the tiles inside. It
    starts from the smallest block that holds the whole box."""
    top_shift = max((x0 ^ x1).bit_length(), (y0 ^ y1).bit_length())
    bx, by = np.array([x0 >> top_shift], np.uint64), np.array([y0 >> top_shift], np.uint64)
    los = []
    for shift in range(top_shift, -1, -1):
        left, right = bx << np.uint64(shift), ((bx + np.uint64(1)) << np.uint64(shift)) - np.uint64(1)
        top, bottom = by << np.uint64(shift), ((by + np.uint64(1)) << np.uint64(shift)) - np.uint64(1)
        meets = (right >= x0) & (left <= x1) & (bottom >= y0) & (top <= y1)
        inside = (left >= x0) & (right <= x1) & (top >= y0) & (bottom <= y1)
        los.append((morton(bx[inside], by[inside]) << np.uint64(2 * shift), shift))
        edge = meets & ~inside
        if not edge.any():
            break
        bx, by = bx[edge] << np.uint64(1), by[edge] << np.uint64(1)
        bx = np.concatenate([bx, bx + np.uint64(1), bx, bx + np.uint64(1)])
        by = np.concatenate([by, by, by + np.uint64(1), by + np.uint64(1)])
    lo = np.concatenate([codes for codes, _ in los])
    hi = np.concatenate([codes + np.uint64(1 << 2 * shift) for codes, shift in los])
    order = np.argsort(lo, kind="stable")
    return lo[order], hi[order]

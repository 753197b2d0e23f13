"""OGC API - Maps: one image of a layer over any box, in CRS84 or Web Mercator. Its pixels are the
tiles': the map is drawn from the value tiles (`.npy`) the tile route serves, at the zoom whose
pixels are at least as fine as the map's, mosaicked and sampled nearest at each map pixel's
centre, then coloured with the tiles' colormap and scale (PNG, WebP) or kept as values (a float32
GeoTIFF placed on the box, or .npy). A box of one tile at the tile's size is that tile, pixel for
pixel."""

from __future__ import annotations

import asyncio
import io
import math
import re
from dataclasses import dataclass, replace
from typing import Annotated, Literal
from urllib.parse import parse_qsl

import morecantile
import numpy as np
from fastapi import Depends, HTTPException, Query
from starlette.types import Scope

from runtime.tiles import EARTH_CIRCUMFERENCE_M, EARTH_RADIUS_M, MERCATOR_LAT_LIMIT, mercator_pixel_size
from server import render
from server.cache import digest
from server.engine import GRID
from server.http import Refusals
from server.params import (
    CRS84,
    CRS84_GRID,
    DIGITS,
    MATRIX_SETS,
    MAX_ZOOM,
    in_event_loop,
    numbers_pattern,
    parse_bbox,
    parse_box,
)
from server.queries import shown
from server.service import SoundscapeService, TileRequest

WEB_MERCATOR = "http://www.opengis.net/def/crs/EPSG/0/3857"
# Each CRS under the names a client writes it: its URI, its safe CURIE and the CURIE (OpenAPI lists
# them; each is taken in any case).
CRS_SPELLINGS = {uri: (uri, f"[{curie}]", curie) for uri, curie in ((CRS84, "OGC:CRS84"), (WEB_MERCATOR, "EPSG:3857"))}
CRS_NAMES = {name.casefold(): uri for uri, names in CRS_SPELLINGS.items() for name in names}
CRS_ENUM = {"enum": [name for names in CRS_SPELLINGS.values() for name in names]}
MAX_SIDE = 2048  # pixels a side: the server faces the open internet
DEFAULT_SIDE = 1024  # the longer side of a map asked with neither width nor height
HALF_WORLD = EARTH_CIRCUMFERENCE_M / 2  # Web Mercator's x at the antimeridian, and its y at MERCATOR_LAT_LIMIT
SLACK_M = 1e-6  # metres a Web Mercator bbox may reach past the world's edge (a float's rounding)
# The formats a map is served in: the tiles' images, coloured by their encoders, and their values.
ENCODERS = {"png": render.encode_png, "webp": render.encode_webp}
MAP_FORMATS = (*ENCODERS, *render.VALUE_FORMATS)
Box = tuple[float, float, float, float]


def max_tiles(tilesize: int) -> int:
    """The most tiles a map is drawn from: a map of MAX_SIDE pixels at its zoom's resolution
    spans at most MAX_SIDE / tilesize tiles a side, plus a part tile at each end."""
    return (MAX_SIDE // tilesize + 2) ** 2


@dataclass(frozen=True)
class MapRequest:
    """A validated map: its CRS (a URI), its box in that CRS (west > east across the
    antimeridian), its size in pixels and its format."""

    crs: str
    bbox: Box
    width: int
    height: int
    fmt: str

    @property
    def spans(self) -> tuple[float, float]:
        """The box's width and height in the CRS's units, across the antimeridian too."""
        west, south, east, north = self.bbox
        world = 360.0 if self.crs == CRS84 else EARTH_CIRCUMFERENCE_M
        return (east - west) % world or world, north - south

    @property
    def placed(self) -> Box:
        """The box as a raster's bounds: across the antimeridian its east lies past the world's
        edge (GDAL reads such a raster in place; one of west > east it cannot)."""
        west, south, _, north = self.bbox
        return west, south, west + self.spans[0], north

    @property
    def content_bbox(self) -> str:
        """The box as drawn, for the Content-Bbox header."""
        return ",".join(repr(v) for v in self.bbox)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Web Mercator x of each column's centre (past the antimeridian, east of it: unwrapped)
        and y of each row's, NaN where a CRS84 row lies beyond Web Mercator's latitudes."""
        west, _, _, north = self.bbox
        dx, dy = self.spans
        xs = west + (np.arange(self.width) + 0.5) * (dx / self.width)
        ys = north - (np.arange(self.height) + 0.5) * (dy / self.height)
        if self.crs == WEB_MERCATOR:
            return xs, ys
        return mercator_x(xs), mercator_y(ys)

    def resolution(self) -> float:
        """The finest map pixel in Web Mercator metres: a CRS84 map's rows are finest at the
        latitude nearest the equator."""
        dx, dy = self.spans
        if self.crs == WEB_MERCATOR:
            return min(dx / self.width, dy / self.height)
        _, _, _, north = self.bbox
        edges = mercator_y(np.clip(north - np.arange(self.height + 1) * (dy / self.height), *LAT_RANGE))
        rows = -np.diff(edges)
        finest_row = float(rows[rows > 0].min()) if (rows > 0).any() else math.inf
        return min(float(mercator_x(np.asarray(dx))) / self.width, finest_row)


LAT_RANGE = (-MERCATOR_LAT_LIMIT, MERCATOR_LAT_LIMIT)


def mercator_x(lon: np.ndarray) -> np.ndarray:
    return np.radians(lon) * EARTH_RADIUS_M


def mercator_y(lat: np.ndarray) -> np.ndarray:
    """Web Mercator y of latitudes in degrees, NaN beyond MERCATOR_LAT_LIMIT (no tile there)."""
    lat = np.asarray(lat, dtype=np.float64)
    inside = np.abs(lat) <= MERCATOR_LAT_LIMIT
    y = EARTH_RADIUS_M * np.log(np.tan(np.pi / 4 + np.radians(np.where(inside, lat, 0.0)) / 2))
    return np.where(inside, y, np.nan)


def crs_uri(name: str | None, parameter: str) -> str:
    """The URI of the CRS `name` (CRS84 when left out), or a 422 naming `parameter`."""
    if name is None:
        return CRS84
    uri = CRS_NAMES.get(name.casefold())
    if uri is None:
        raise HTTPException(
            422,
            f"{parameter} must be {CRS84} (longitude, latitude in degrees; the default) or {WEB_MERCATOR} "
            f"(Web Mercator metres), not {shown(name)}",
        )
    return uri


def parse_metres(text: str) -> Box:
    """`west,south,east,north` in Web Mercator metres (west > east across the antimeridian)."""
    edge = HALF_WORLD + SLACK_M
    west, south, east, north = parse_box(text, edge, edge, "Web Mercator metres")
    # Within the world's edge: a float's rounding past it would wrap the box round the world.
    west, south, east, north = (max(-HALF_WORLD, min(HALF_WORLD, v)) for v in (west, south, east, north))
    return west, south, east, north


def to_crs(box: Box, given: str, crs: str) -> Box:
    """`box` in `given` CRS as a box in `crs`: each axis maps on its own in both CRSs, so the
    corners map exactly. Latitudes beyond Web Mercator's are cut to its edge."""
    if given == crs:
        return box
    west, south, east, north = box
    if crs == WEB_MERCATOR:
        low, high = mercator_y(np.clip([south, north], *LAT_RANGE))
        if not low < high:
            raise HTTPException(
                422, f"bbox lies beyond Web Mercator's latitudes (±{MERCATOR_LAT_LIMIT:.4f}): nothing to draw in it"
            )
        xs = np.clip(mercator_x(np.asarray([west, east])), -HALF_WORLD, HALF_WORLD)
        low, high = np.clip([low, high], -HALF_WORLD, HALF_WORLD)
        return float(xs[0]), float(low), float(xs[1]), float(high)
    # Within the world's edges: a float's rounding past 180 would wrap the box round the world.
    lons = np.clip(np.degrees(np.asarray([west, east]) / EARTH_RADIUS_M), -180.0, 180.0)
    lats = np.degrees(np.arctan(np.sinh(np.asarray([south, north]) / EARTH_RADIUS_M)))
    return float(lons[0]), float(lats[0]), float(lons[1]), float(lats[1])


def map_size(width: int | None, height: int | None, spans: tuple[float, float]) -> tuple[int, int]:
    """The map's size: as given; the side left out from the other and the box's aspect in the
    map's CRS; with neither, DEFAULT_SIDE on the longer side."""
    aspect = spans[0] / spans[1]
    if width is not None:
        return width, height if height is not None else worked_out(width / aspect, "height", f"width {width}")
    if height is not None:
        return worked_out(height * aspect, "width", f"height {height}"), height
    if aspect >= 1:
        return DEFAULT_SIDE, worked_out(DEFAULT_SIDE / aspect, "height", "")
    return worked_out(DEFAULT_SIDE * aspect, "width", ""), DEFAULT_SIDE


def worked_out(pixels: float, name: str, given: str) -> int:
    """A side worked out from the other (`given`) and the box's aspect: whole pixels, at least
    one; a 422 naming it when over MAX_SIDE."""
    if not pixels < MAX_SIDE + 0.5:
        raise HTTPException(
            422,
            f"{name} worked out from {given} and the bbox's aspect would be over {MAX_SIDE} pixels: give "
            f"{name} too, or a smaller {given.split()[0]}",
        )
    return max(1, round(pixels))


@dataclass
class MapParams:
    """OGC API - Maps' core parameters: the box, its CRS, the map's CRS, size and format."""

    bbox: Annotated[
        str | None,
        Query(
            max_length=200,
            description="west,south,east,north in bbox-crs (default: the store's bounds); west > east crosses "
            "the antimeridian.",
            json_schema_extra=numbers_pattern(4),
        ),
    ] = None
    width: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_SIDE,
            description=f"Width in pixels (default: from height and the bbox's aspect, or {DEFAULT_SIDE} on the "
            "longer side).",
        ),
        DIGITS,
    ] = None
    height: Annotated[
        int | None,
        Query(ge=1, le=MAX_SIDE, description="Height in pixels (default: from width and the bbox's aspect)."),
        DIGITS,
    ] = None
    f: Annotated[
        Literal["png", "webp", "npy", "tif"],
        Query(
            description="Format: png (default) or webp, coloured as the tiles are; tif (a float32 GeoTIFF placed on "
            "the box, in crs) or npy (float32), the layer's values, NaN where no cell is.",
        ),
    ] = "png"
    crs: Annotated[
        str | None,
        Query(
            max_length=100,
            description=f"CRS of the map: {CRS84} (default) or {WEB_MERCATOR}.",
            json_schema_extra=CRS_ENUM,
        ),
    ] = None
    bbox_crs: Annotated[
        str | None,
        Query(
            alias="bbox-crs",
            max_length=100,
            description=f"CRS of bbox: {CRS84} (default) or {WEB_MERCATOR}.",
            json_schema_extra=CRS_ENUM,
        ),
    ] = None

    def validated(self, service: SoundscapeService, refusals: Refusals | None = None) -> MapRequest:
        """The map asked: one 422 naming every bad parameter (those in `refusals` too). What
        server/params.py's refusal handler calls on each parameter set of a refused request."""
        refusals = Refusals() if refusals is None else refusals
        asked = self.checked(service, refusals)
        refusals.raise_any()
        assert asked is not None  # refused otherwise
        return asked

    def checked(self, service: SoundscapeService, refusals: Refusals) -> MapRequest | None:
        """The map asked, or None with each bad parameter's sentence kept in `refusals`, so that
        the route's other parameters are checked before one 422 names them all."""
        with refusals.on("crs"):
            crs = crs_uri(self.crs, "crs")
        with refusals.on("bbox-crs"):
            given = crs_uri(self.bbox_crs, "bbox-crs")
        if not refusals.names.isdisjoint(("crs", "bbox-crs")):
            return None
        with refusals.on("bbox"):
            if self.bbox is None:
                box = to_crs(service.store.bounds, CRS84, crs)
            else:
                parsed = parse_bbox(self.bbox) if given == CRS84 else parse_metres(self.bbox)
                assert parsed is not None  # a bbox given
                box = to_crs(parsed, given, crs)
        if "bbox" in refusals.names:
            return None
        drawn = MapRequest(crs, box, 1, 1, self.f)
        with refusals.on("width height"):
            width, height = map_size(self.width, self.height, drawn.spans)
            return replace(drawn, width=width, height=height)
        return None


MapParamsDep = Annotated[MapParams, Depends(in_event_loop(MapParams))]

MAP_PATH = re.compile(r"^/collections/[^/]+/map$")
MAX_QUERY_FIELDS = 100  # more fields than a map takes: the request is costed as the largest map


def request_cost(scope: Scope) -> int:
    """The rate limit's tokens a request spends (server/ratelimit.py): one, but a map one per
    256 x 256 pixels it asks, since it draws about that many tiles. A side left out counts as
    DEFAULT_SIDE; a malformed one as MAX_SIDE (the route refuses it, at a validation's cost)."""
    if not MAP_PATH.match(scope["path"]):
        return 1
    try:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), max_num_fields=MAX_QUERY_FIELDS))
    except ValueError:
        query = {"width": "", "height": ""}
    sides = []
    for name in ("width", "height"):
        value = query.get(name)
        side = DEFAULT_SIDE if value is None else int(value) if value.isdigit() and len(value) <= 4 else MAX_SIDE
        sides.append(min(max(side, 1), MAX_SIDE))
    return math.ceil(sides[0] / 256) * math.ceil(sides[1] / 256)


@dataclass(frozen=True)
class Plan:
    """Where each map pixel reads its value: the tiles of `zoom` (`size` pixels a side) and, in
    their mosaic over the world, each map column's pixel column (unwrapped: past the antimeridian
    it continues east) and each row's pixel row (-1 where no tile is, beyond Web Mercator)."""

    zoom: int
    size: int
    columns: np.ndarray
    rows: np.ndarray

    @classmethod
    def at(cls, asked: MapRequest, zoom: int, size: int) -> Plan:
        xs, ys = asked.centres()
        pixel = mercator_pixel_size(zoom, size)
        columns = np.floor((xs + HALF_WORLD) / pixel).astype(np.int64)
        rows = np.floor((HALF_WORLD - np.nan_to_num(ys, nan=HALF_WORLD)) / pixel).astype(np.int64)
        rows = np.where(np.isnan(ys), -1, np.clip(rows, 0, (size << zoom) - 1))
        return cls(zoom, size, columns, rows)

    @classmethod
    def of(cls, asked: MapRequest, size: int, zooms: tuple[int, int]) -> Plan:
        """The plan at the coarsest zoom whose pixels are no larger than the map's finest, within
        `zooms`, and coarser still while it needs more than `max_tiles` (a CRS84 map spanning many
        latitudes has finer rows near the equator than near the poles)."""
        lo, hi = zooms
        ratio = EARTH_CIRCUMFERENCE_M / (size * asked.resolution())
        zoom = hi if not ratio < 2.0**hi else max(lo, math.ceil(math.log2(ratio) - 1e-9))
        plan = cls.at(asked, zoom, size)
        while plan.zoom > 0 and plan.count() > max_tiles(size):
            plan = cls.at(asked, plan.zoom - 1, size)
        return plan

    def spans(self) -> tuple[range, range]:
        """The tile columns (unwrapped) and rows the map reads."""
        valid = self.rows[self.rows >= 0]
        if not len(valid):
            return range(0), range(0)
        columns = range(int(self.columns.min()) // self.size, int(self.columns.max()) // self.size + 1)
        return columns, range(int(valid.min()) // self.size, int(valid.max()) // self.size + 1)

    def count(self) -> int:
        """len(tiles()), counted rather than listed: a plan at a zoom a client asked for may span
        millions of tiles before Plan.of coarsens it (minzoom=24 over the world ran out of memory)."""
        columns, rows = self.spans()
        return min(len(columns), 1 << self.zoom) * len(rows)

    def tiles(self) -> set[tuple[int, int]]:
        """(x, y) of each tile the map reads, x wrapped into the zoom's columns."""
        columns, rows = self.spans()
        return {(x % (1 << self.zoom), y) for x in columns for y in rows}

    def values(self, tiles: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
        """The map's values: each pixel's nearest in the mosaic of `tiles`; NaN where none is."""
        out = np.full((len(self.rows), len(self.columns)), np.nan, dtype=np.float32)
        columns, rows = self.spans()
        if not len(rows):
            return out
        size, count = self.size, 1 << self.zoom
        mosaic = np.block([[tiles[x % count, y] for x in columns] for y in rows])
        valid = self.rows >= 0
        out[valid] = mosaic[np.ix_(self.rows[valid] - rows.start * size, self.columns - columns.start * size)]
        return out

    def name(self, asked: MapRequest, tile: str) -> str:
        """The map's ETag, known before drawing: its tiles' name (`tile`, that of tile 0/0/0 of
        its parameters) and its geometry."""
        geometry = {"crs": asked.crs, "bbox": list(asked.bbox), "size": [asked.width, asked.height], "zoom": self.zoom}
        return digest({"tile": tile, **geometry})


def geotiff_crs(crs: str) -> str:
    """The CRS (WKT) a map's GeoTIFF is placed in: WGS 84's for CRS84, the tiles' grid's
    (EPSG:3857) for Web Mercator."""
    return render.degrees() if crs == CRS84 else render.grid()[1]


async def draw(service: SoundscapeService, asked: MapRequest, plan: Plan, tile: TileRequest, text: str | None) -> bytes:
    """The map in its format: the value tiles of `tile`'s parameters that `plan` reads (through
    the tile cache, as the tile route renders them), sampled, then coloured as the PNG tiles are
    or kept as values. Its tiles, their mosaic and the map are its memory: the maps drawing at
    once in a worker hold a bounded number of tiles (`service.map_tiles`)."""
    scale = None if asked.fmt in render.VALUE_FORMATS else await service.tile_scale(tile, text)
    places = sorted(plan.tiles())

    async with service.map_tiles.take(len(places) * (plan.size // 256) ** 2):
        # Rendered side by side, as a browser's connections would ask them (a first refusal, a
        # 503, reaches the client as itself; the tiles still drawing end in the cache).
        bodies = await asyncio.gather(
            *(service.tile(replace(tile, z=plan.zoom, x=x, y=y, fmt="npy"), text) for x, y in places)
        )
        tiles = {p: np.load(io.BytesIO(body), allow_pickle=False) for p, body in zip(places, bodies, strict=True)}

        def encode() -> bytes:
            values = plan.values(tiles)
            if asked.fmt == "tif":
                return render.encode_geotiff(values, geotiff_crs(asked.crs), asked.placed, tile.layer)
            if asked.fmt == "npy":
                return render.encode_npy(values)
            assert scale is not None  # worked out for every picture format
            return ENCODERS[asked.fmt](values, scale.lo, scale.hi, tile.colormap)

        return await service.run(encode)


CRS84_MATRICES = MATRIX_SETS[CRS84_GRID]


async def crs84_tile(service: SoundscapeService, tile: TileRequest, text: str | None) -> bytes:
    """A WorldCRS84Quad tile: the map of its box at its size, drawn from the grid's value tiles as
    every map is (so it is the map route's image of that box, pixel for pixel)."""
    box = CRS84_MATRICES.bounds(morecantile.Tile(tile.x, tile.y, tile.z))
    asked = MapRequest(CRS84, (box.left, box.bottom, box.right, box.top), tile.size, tile.size, tile.fmt)
    plan = Plan.of(asked, tile.size, (0, MAX_ZOOM))
    return await draw(service, asked, plan, replace(tile, tms=GRID), text)

"""`soundscape pack`: a map's tiles, as the server draws them, in one MBTiles or PMTiles file,
for a map that has to work offline (QGIS and GDAL open MBTiles; so do tile servers of MBTiles,
for web maps) or be handed on as a file (a PMTiles archive on any static web host is read by
web maps through Protomaps' pmtiles.js, no tile server needed); or the layer's values at one
zoom, its `.tif` tiles side by side, in one Cloud Optimized GeoTIFF for GIS work.

The tiles come from the server's own app, run in this process: the map is named by the tile
URL's parameters (`q=birdsong&hour=6&layer=contrast`), refused with the sentence the server would
answer, and every tile is byte for byte the one `/tiles/...` serves for the same bundle and store.
The tiles are written into `OUT.partial` (MBTiles 1.3), which becomes OUT once complete (or is
turned into the PMTiles archive or the GeoTIFF OUT): an interrupted run leaves OUT as it was, and
the same command run again resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import mercantile
import morecantile
import numpy as np
import rasterio
import rasterio.shutil
from fastapi import HTTPException
from pmtiles.convert import mbtiles_to_pmtiles
from rasterio.windows import Window
from starlette.types import ASGIApp, Message
from tqdm import tqdm

from runtime.arguments import levels_in
from runtime.errors import UserError
from runtime.files import lock_file, unlock_file
from runtime.tiles import MERCATOR_LAT_LIMIT
from server.engine import CELLS_PER_TILE_LOG2, GRID
from server.params import MAX_ZOOM, parse_bbox
from server.render import GEOTIFF_OPTIONS, grid, values_description

FORMATS = ("png", "webp")  # the picture formats MBTiles 1.3 names and the tile routes draw
DEFAULT_MAX_TILES = 100_000
BATCH = 64  # tiles asked for at once, then written and committed: what a resumed run may redo
# The app's tile cache: a pack asks for each tile once. The demo world's whole map peaked at 401 MB
# with it, 498 MB with serve's 256 MB, in the same 29 s.
CACHE_MB = 16
MBTILES_APPLICATION_ID = 0x4D504258  # "MPBX", MBTiles 1.3's SQLite application_id
PMTILES = ".pmtiles"  # OUT's suffix for a PMTiles archive; an MBTiles file otherwise
GEOTIFF = (".tif", ".tiff")  # OUT's suffixes for a Cloud Optimized GeoTIFF of the layer's values
# The values' GeoTIFF as GDAL's COG driver writes it: deflate with the floating-point predictor
# (as the .tif tiles), overviews averaged from the full resolution (NaN, no cell, left out).
COG_OPTIONS = {"compress": "DEFLATE", "predictor": "FLOATING_POINT", "overview_resampling": "AVERAGE"}
MAP_KEY = "soundscape_map"  # the metadata row naming the map a file holds, for resuming it
TIFF_TAGS = ("attribution", MAP_KEY)  # the metadata a values GeoTIFF keeps beside what its values are
HOST = "localhost"  # the Host header of the in-process requests: an allowed host of every server
LL_EPSILON = 1e-11  # mercantile.tiles' nudge: a box's east or south edge on a tile edge takes no tile beyond


class PackError(UserError):
    """A map, box or file `soundscape pack` cannot make, in one sentence."""


@dataclass(frozen=True)
class TileRange:
    """The tiles of zoom `z` from column `x0` to `x1` and row `y0` to `y1`, ends included."""

    z: int
    x0: int
    x1: int
    y0: int
    y1: int

    def __len__(self) -> int:
        return (self.x1 - self.x0 + 1) * (self.y1 - self.y0 + 1)

    def tiles(self) -> Iterator[tuple[int, int, int]]:
        for x in range(self.x0, self.x1 + 1):
            for y in range(self.y0, self.y1 + 1):
                yield self.z, x, y


def tile_ranges(box: tuple[float, float, float, float], zooms: list[int]) -> list[TileRange]:
    """The tiles over `box` (degrees; west above east crosses the antimeridian) at each zoom, as
    mercantile.tiles finds them, without listing them: a count is known before any tile is made."""
    west, south, east, north = box
    parts = [(west, east)] if west < east else [(west, 180.0), (-180.0, east)]
    south, north = max(south, -MERCATOR_LAT_LIMIT), min(north, MERCATOR_LAT_LIMIT)
    ranges = []
    for z in zooms:
        found = []
        for w, e in parts:
            first = mercantile.tile(w, north, z)
            last = mercantile.tile(e - LL_EPSILON, south + LL_EPSILON, z)
            found.append(TileRange(z, first.x, last.x, first.y, last.y))
        if len(found) == 2 and found[1].x1 >= found[0].x0:  # both sides of 180 reach one column: every column
            found = [TileRange(z, 0, (1 << z) - 1, found[0].y0, found[0].y1)]
        ranges.extend(found)
    return ranges


def map_query(text: str) -> str:
    """The tile parameters of a map: a query string (`q=birdsong&hour=6`), or a URL holding one,
    such as the viewer's "Copy XYZ URL" (`http://.../tiles/{z}/{x}/{y}.png?q=birdsong&...`)."""
    query = urlsplit(text).query if "?" in text else text
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise PackError(f"no tile parameters in {text[:200]!r}: give them as a query string, e.g. 'q=birdsong&hour=6'")
    return urlencode(pairs)


def box_argument(text: str) -> tuple[float, float, float, float]:
    """`--bbox`, read as the server reads a bbox: ValueError with its sentence."""
    try:
        box = parse_bbox(text)
    except HTTPException as exc:
        raise ValueError(exc.detail) from None
    assert box is not None
    return box


async def get(app: ASGIApp, path: str, query: bytes = b"") -> tuple[int, bytes]:
    """GET `path` with the query string `query` from `app`, in this process: its status and body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", HOST.encode())],
        "client": ("127.0.0.1", 0),
        "server": (HOST, 80),
    }
    status, body = 500, bytearray()

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, bytes(body)


async def get_ok(app: ASGIApp, target: str) -> bytes:
    """The body of a 200; PackError with the server's sentence (`detail`) for a refusal (4xx),
    RuntimeError for a failure (5xx: a fault, not the user's)."""
    path, _, query = target.partition("?")
    status, body = await get(app, path, query.encode())
    if status >= 500:
        raise RuntimeError(f"the server failed on {target[:200]} ({status}): {body[:300]!r}")
    if status != 200:
        raise PackError(json.loads(body)["detail"])  # every 4xx is {"detail": sentence} (docs/api.md)
    return body


@dataclass(frozen=True)
class MapPlan:
    """What a pack writes: the tile path (a template of {z}, {x} and {y}, with the map's
    parameters), its MBTiles metadata, and the tiles."""

    template: str
    metadata: dict[str, str]
    ranges: list[TileRange]
    tilesize: int

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.ranges)

    def tile(self, z: int, x: int, y: int) -> str:
        """The path (and query) of one tile."""
        return self.template.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))


def middle(west: float, east: float) -> float:
    """The longitude halfway from `west` to `east` going east (across 180 when west > east)."""
    span = east - west if west < east else east - west + 360
    return (west + span / 2 + 180) % 360 - 180


async def plan_map(
    app: ASGIApp,
    query: str,
    zooms: list[int] | None,
    box: tuple[float, float, float, float] | None,
    max_tiles: int,
    values: bool = False,
) -> MapPlan:
    """The map's TileJSON (its tile template, zooms, bounds and legend in words) and the tiles
    over `box` (the store's bounds when None) at `zooms` (the TileJSON's when None); with
    `values`, the `.tif` tiles of one zoom (the store's full resolution when None)."""
    tilejson = json.loads(await get_ok(app, f"/tilejson.json?{query}"))
    ids = json.loads(await get_ok(app, "/healthz"))
    url = urlsplit(tilejson["tiles"][0])
    template = f"{url.path}?{url.query}"
    fmt = url.path.rsplit(".", 1)[-1]
    if values:
        # By default the zoom whose tiles draw the store's finest cells 16 px a side (TileJSON's
        # maxzoom is that level): finer zooms only interpolate them, in a file 4**k times larger.
        zooms = zooms or [max(tilejson["minzoom"], tilejson["maxzoom"] - CELLS_PER_TILE_LOG2)]
        if len(zooms) != 1:
            raise PackError(
                f"a GeoTIFF holds the values of one zoom (its overviews are made from them), not {len(zooms)}: "
                f"give --zooms one zoom, e.g. --zooms {zooms[-1]}"
            )
        template, fmt = f"/tiles/{GRID}/{{z}}/{{x}}/{{y}}.tif?{url.query}", "tif"
    elif fmt not in FORMATS:
        raise PackError(f"a pack holds pictures: tile_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    zooms = zooms or list(range(tilejson["minzoom"], tilejson["maxzoom"] + 1))
    given, box = box, box or tuple(tilejson["bounds"])
    ranges = tile_ranges(box, zooms)
    count = sum(len(r) for r in ranges)
    if count > max_tiles:
        per_zoom = ", ".join(f"{z}: {sum(len(r) for r in ranges if r.z == z)}" for z in zooms)
        raise PackError(
            f"the map is {count} tiles (per zoom {per_zoom}), over --max-tiles {max_tiles}: "
            "narrow --zooms or --bbox, or raise --max-tiles"
        )
    west, south, east, north = box
    lon, lat, zoom = tilejson["center"] if given is None else (middle(west, east), (south + north) / 2, zooms[0])
    metadata = {
        "name": tilejson["name"],
        "format": fmt,
        "type": "overlay",
        "version": "1",
        "description": tilejson.get("description", ""),
        "attribution": tilejson.get("attribution", ""),
        # A box across 180 is written as every longitude: MBTiles readers (GDAL) and PMTiles'
        # (MapLibre through pmtiles.js) take west > east for no box at all.
        "bounds": ",".join(f"{v:.10g}" for v in (box if west < east else (-180.0, south, 180.0, north))),
        "center": f"{lon:.10g},{lat:.10g},{min(max(zoom, zooms[0]), zooms[-1])}",
        "minzoom": str(zooms[0]),
        "maxzoom": str(zooms[-1]),
        MAP_KEY: json.dumps(
            {"tiles": template, "bundle": ids["bundle"], "store": ids["store"], "zooms": zooms, "bbox": list(box)}
        ),
    }
    return MapPlan(template, metadata, ranges, tilejson["tilesize"])


def open_partial(path: Path, metadata: dict[str, str]) -> sqlite3.Connection:
    """`path` (OUT.partial) as an MBTiles database of this map: created, or opened to resume when
    it holds the same map (PackError when it holds another)."""
    try:
        db = sqlite3.connect(path)
    except sqlite3.Error as exc:  # a folder this user cannot write, or a read-only file system
        raise PackError(f"cannot write the MBTiles file {path} ({exc})") from None
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if {"metadata", "tiles"} <= tables:
            held = dict(db.execute("SELECT name, value FROM metadata WHERE name = ?", (MAP_KEY,)))
            if held.get(MAP_KEY) != metadata[MAP_KEY]:
                raise PackError(
                    f"{path} holds part of another map (another command, bundle or store): delete it, "
                    "or run the command that began it again to finish it"
                )
            return db
        db.execute(f"PRAGMA application_id = {MBTILES_APPLICATION_ID}")
        db.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
        db.execute("CREATE UNIQUE INDEX name ON metadata (name)")
        db.execute("CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB)")
        db.execute("CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row)")
        db.executemany("INSERT INTO metadata VALUES (?, ?)", metadata.items())
        db.commit()
        return db
    except sqlite3.DatabaseError as exc:  # not an SQLite file, or one this user cannot write
        db.close()
        raise PackError(f"cannot write the MBTiles file {path} ({exc}): delete it if it is another file") from None
    except PackError:
        db.close()
        raise


def flipped(z: int, row: int) -> int:
    """An XYZ row as MBTiles counts it (from the bottom, as TMS does), and back."""
    return (1 << z) - 1 - row


def written(db: sqlite3.Connection) -> set[tuple[int, int, int]]:
    """The (z, x, y) of the tiles a file holds."""
    rows = db.execute("SELECT zoom_level, tile_column, tile_row FROM tiles")
    return {(z, x, flipped(z, row)) for z, x, row in rows}


async def fill(app: ASGIApp, plan: MapPlan, db: sqlite3.Connection, progress: bool) -> int:
    """Every tile of `plan` the file lacks, asked for BATCH at a time and committed after each
    batch; the number written."""
    done = written(db)
    todo = [t for r in plan.ranges for t in r.tiles() if t not in done]
    with tqdm(total=plan.count, initial=plan.count - len(todo), unit="tile", disable=not progress) as bar:
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            bodies = await asyncio.gather(*(get_ok(app, plan.tile(*tile)) for tile in batch))
            rows = [(z, x, flipped(z, y), body) for (z, x, y), body in zip(batch, bodies, strict=True)]
            db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?)", rows)
            db.commit()
            bar.update(len(batch))
    return len(todo)


def write_values(db: sqlite3.Connection, plan: MapPlan, out: Path, progress: bool) -> None:
    """The `.tif` tiles of `db` side by side in one float32 GeoTIFF on their grid (a box across
    180 continues east of it, as GDAL reads such a raster), with the map's name, what its values
    are, its attribution and MAP_KEY as metadata, copied into OUT as a Cloud Optimized GeoTIFF."""
    zoom, top, size = plan.ranges[0].z, plan.ranges[0].y0, plan.tilesize
    columns = {x: i for i, x in enumerate(x for r in plan.ranges for x in range(r.x0, r.x1 + 1))}
    width, height = len(columns) * size, (plan.ranges[0].y1 - top + 1) * size
    matrices, crs = grid()
    corner = matrices.xy_bounds(morecantile.Tile(plan.ranges[0].x0, top, zoom))
    metres = (corner.right - corner.left) / size  # a pixel's side
    transform = rasterio.transform.from_origin(corner.left, corner.top, metres, metres)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "float32"}
    options = {**GEOTIFF_OPTIONS, "blockxsize": size, "blockysize": size}
    raw = out.with_name(out.name + ".values")  # the plain GeoTIFF the COG is copied from
    with rasterio.open(raw, "w", **profile, **options, crs=crs, transform=transform, nodata=np.nan) as dst:
        tiles = db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")
        for z, x, row, body in tqdm(tiles, total=plan.count, unit="tile", desc="GeoTIFF", disable=not progress):
            with rasterio.MemoryFile(body) as memory, memory.open() as tile:
                values = tile.read(1)
            dst.write(values, 1, window=Window(columns[x] * size, (flipped(z, row) - top) * size, size, size))
        layer = dict(parse_qsl(urlsplit(plan.template).query))["layer"]  # TileJSON's template always names it
        dst.update_tags(description=values_description(layer), **{key: plan.metadata[key] for key in TIFF_TAGS})
        dst.set_band_description(1, plan.metadata["name"])
    converting = out.with_name(out.name + ".converting")
    rasterio.shutil.copy(raw, converting, driver="COG", **COG_OPTIONS)
    os.replace(converting, out)
    raw.unlink()


def pack(
    app: ASGIApp,
    query: str,
    out: Path,
    zooms: list[int] | None = None,
    box: tuple[float, float, float, float] | None = None,
    max_tiles: int = DEFAULT_MAX_TILES,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[MapPlan, int]:
    """Write the map `query` names (tile parameters) to `out`, a PMTiles archive if it ends in
    .pmtiles, its values as a Cloud Optimized GeoTIFF if it ends in .tif, else an MBTiles file:
    its plan and the number of tiles this run made (fewer than the plan's when it resumed)."""
    if out.is_dir():
        raise PackError(f"{out} is a folder, not a file")
    if not out.parent.is_dir():
        raise PackError(f"there is no folder {out.parent} to write {out.name} in")
    lock = out.with_name(f".{out.name}.lock")
    try:  # two packs of one OUT wrote one .partial at once: a traceback, or a half-made file
        handle = lock_file(lock, wait=False)
    except BlockingIOError:
        raise PackError(
            f"another pack is writing {out}; wait for it to finish (this command then resumes or refuses the "
            "finished file), or give another path"
        ) from None
    except OSError as exc:  # a folder this user cannot write: said of the file it would write first
        raise PackError(
            f"cannot write the MBTiles file {out.with_name(out.name + '.partial')} ({exc.strerror})"
        ) from None
    try:
        return _pack(app, query, out, zooms, box, max_tiles, overwrite, progress)
    finally:
        unlock_file(lock, handle)


def _pack(
    app: ASGIApp,
    query: str,
    out: Path,
    zooms: list[int] | None,
    box: tuple[float, float, float, float] | None,
    max_tiles: int,
    overwrite: bool,
    progress: bool,
) -> tuple[MapPlan, int]:
    """`pack` under its lock."""
    if out.exists() and not overwrite:
        raise PackError(f"{out} exists: give another path, or --overwrite to replace it once the new file is complete")
    partial = out.with_name(out.name + ".partial")
    values = out.suffix.lower() in GEOTIFF

    async def run() -> tuple[MapPlan, int]:
        plan = await plan_map(app, query, zooms, box, max_tiles, values)
        db = open_partial(partial, plan.metadata)
        try:
            count = await fill(app, plan, db, progress)
        finally:
            db.close()
        return plan, count

    plan, count = asyncio.run(run())
    if out.suffix == PMTILES:
        converting = out.with_name(out.name + ".converting")
        mbtiles_to_pmtiles(str(partial), str(converting), None)
        os.replace(converting, out)
        partial.unlink()
    elif values:
        with closing(sqlite3.connect(partial)) as db:
            write_values(db, plan, out, progress)
        partial.unlink()
    else:
        os.replace(partial, out)
    return plan, count


def zoom_argument(text: str) -> list[int]:
    """`--zooms`: '0-5', '3' or '2,4-6', each 0..MAX_ZOOM; ValueError with a sentence."""
    try:
        return levels_in(text, MAX_ZOOM)
    except ValueError as exc:
        raise ValueError(str(exc).replace("levels", "zooms")) from None

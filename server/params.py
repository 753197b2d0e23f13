"""Request parameters shared by the routes: their declarations (so OpenAPI documents them) and
their validation into engine types. Every bad value becomes a 422 with a sentence, and one 422
names every bad parameter of a request: FastAPI's validation of each parameter (types, ranges)
and the rules here (known sources, rescale, bbox, ...) are two stages, so when FastAPI refuses
some, `refuse_everything` still applies the rules to the rest (`Refusals`)."""

from __future__ import annotations

import datetime as dt
import inspect
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Protocol, TypeVar
from urllib.parse import unquote_plus

import morecantile
from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BeforeValidator, TypeAdapter
from pydantic_core import PydanticCustomError

from runtime.text import MAX_TEXT_LENGTH, TEXT_PATTERN
from server.engine import CELLS_PER_TILE_LOG2, GRID, QUERY_LAYERS, QueryMetadata
from server.http import (
    INTEGER_SPELLING,
    MAX_DETAIL_CHARS,
    NUMBER_SPELLING,
    Refusals,
    Refused,
    error_response,
    refuse_invalid,
)
from server.queries import ID_PATTERN, QueryError, is_query_id, shown, text_record
from server.render import VALUE_FORMATS, colormap_names
from server.service import SoundscapeService, TileRequest
from store.reader import Level

# The grid tiles are computed on, and WorldCRS84Quad, whose tiles are maps of their boxes drawn
# from the grid's (server/maps.py): GDAL's OGC API driver picks it, and the collection's CRS84
# bbox is in its units.
CRS84_GRID = "WorldCRS84Quad"
TMS_IDS = (GRID, CRS84_GRID)
MAX_ZOOM = 24
# Each tile matrix set, read once (morecantile's registry builds a new one per lookup: 0.24 ms).
MATRIX_SETS = {tms: morecantile.tms.get(tms) for tms in TMS_IDS}
# Each tile matrix set's columns and rows at zoom 0 (each zoom doubles both) and its finest zoom
# served: MAX_ZOOM, or the set's own last when coarser.
MATRICES = {
    tms: (found.matrix(0).matrixWidth, found.matrix(0).matrixHeight, min(MAX_ZOOM, found.maxzoom))
    for tms, found in MATRIX_SETS.items()
}
TILE_SIZES = (256, 512)
DEFAULT_COLORMAPS = {"heatmap": "magma", "contrast": "magma", "uncertainty": "viridis"}

# A rescale keeps this many significant digits of its span (max - min): finer steps change no
# colour of 255, and a rounded value names the tile, so a client cannot mint a new cache key with
# every float. Bounds: scores are probabilities and S is small.
RESCALE_DIGITS = 4
RESCALE_LIMIT = 1000.0
RESCALE_MIN_SPAN = 1e-6
MAX_K = 1000  # /search's k
MAX_BINS = 100  # /statistics' histogram bins
# A decimal number as OpenAPI states it for rescale= and bbox=: what a schema-driven client writes,
# and the finite numbers the server reads there and in /point's lon and lat (NaN and infinity are
# read to be refused by the rules of finite numbers). pydantic's float also reads ' 1' and '1_0':
# another URL of the same number at best, and `1_0` may be a slip for 1.0. ASCII digits: Python's
# \d is any script's (float() reads Arabic-Indic 10 as 10).
DECIMAL_NUMBER = r"[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?"
DECIMAL_FLOAT = re.compile(DECIMAL_NUMBER)
LAX_FLOAT = TypeAdapter(float)


def numbers_pattern(count: int) -> dict[str, str]:
    """The OpenAPI `pattern` of `count` comma-separated decimal numbers (a parameter's
    json_schema_extra: the schema states it, the route's own rules refuse with a sentence)."""
    return {"pattern": "^" + ",".join([DECIMAL_NUMBER] * count) + "$"}


# An integer parameter (query or path) is written in decimal digits, one spelling per number, as
# OpenAPI's `integer` is serialised: pydantic alone also reads 512.0, +6, ' 6', 06 and 1_0, and
# each spelling was another URL of the same tile for the fast path and the front door to keep.
DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)")
LAX_INT = TypeAdapter(int)


def decimal_digits(value: object) -> object:
    """`value` for int's own parsing, unless it is a number that parsing reads in a spelling other
    than decimal digits: refused, so that every number has one spelling (text that is no number
    at all is left to int's own refusal)."""
    if isinstance(value, str) and DECIMAL.fullmatch(value) is None and reads_as_int(value):
        raise PydanticCustomError(INTEGER_SPELLING, "Input should be an integer written in plain decimal digits")
    return value


def reads_as_int(text: str) -> bool:
    try:
        LAX_INT.validate_python(text)
    except ValueError:  # pydantic's ValidationError
        return False
    return True


def decimal_spelling(value: object) -> object:
    """`value` for float's own parsing, unless it is a finite number that parsing reads in a
    spelling DECIMAL_NUMBER does not state: refused, as `decimal_digits` refuses an integer's."""
    if isinstance(value, str) and misspelled_number(value):
        raise PydanticCustomError(NUMBER_SPELLING, "Input should be a number written as a decimal number")
    return value


def misspelled_number(text: str) -> bool:
    """Whether pydantic reads `text` as a finite number that DECIMAL_NUMBER does not state (' 1',
    '1_0'). Text that is no number is left to float's own refusal, and NaN or infinity to the
    rule of finite numbers, which names it."""
    if DECIMAL_FLOAT.fullmatch(text) is not None:
        return False
    try:
        return math.isfinite(LAX_FLOAT.validate_python(text))
    except ValueError:  # pydantic's ValidationError
        return False


def decimal_number(text: str) -> float:
    """A number of a bbox or rescale, read by the rule of /point's lon and lat (`decimal_spelling`);
    a ValueError for another spelling or no number."""
    if misspelled_number(text):
        raise ValueError(f"{text[:40]!r} is not written as a decimal number")
    return LAX_FLOAT.validate_python(text)


def true_or_false(value: object) -> object:
    """`value` if it is no text or is true or false, as a client serialises OpenAPI's boolean;
    pydantic alone also reads 1, yes, on, t, y (0, no, off, f, n) in any case."""
    if isinstance(value, str) and value not in ("true", "false"):
        raise PydanticCustomError("bool_parsing", "Input should be true or false")
    return value


# Last in a parameter's Annotated, after its Query(ge, le): before them, pydantic could not apply
# the range to the integer's own schema, and OpenAPI published `ge`/`le` for minimum/maximum.
DIGITS = BeforeValidator(decimal_digits)
DECIMAL_SPELLING = BeforeValidator(decimal_spelling)  # a number parameter's (/point's lon and lat)
Integer = Annotated[int, DIGITS]  # a path part (z, x, y)
# A tile's pixel ratio in its path (`{y}@2x.png`): its size in units of 256 pixels.
Scale = Annotated[int, Path(ge=1, le=len(TILE_SIZES), description="Pixel ratio: @1x is 256 px, @2x 512."), DIGITS]
TRUE_OR_FALSE = BeforeValidator(true_or_false)
# TiTiler's rendering parameters, on a route that draws or describes tiles (one that takes
# colormap_name): refused with what does the job here, never silently ignored, for the map drawn
# without them would not be the one asked for.
UNSUPPORTED = {
    "colormap": "pick a named colormap with colormap_name (GET /colormaps lists them)",
    "expression": "a tile has one value per pixel, chosen with layer=contrast, layer=heatmap or layer=uncertainty",
    "color_formula": "colours come from colormap_name over rescale=min,max alone",
    "algorithm": "a tile has one value per pixel, chosen with layer=contrast, layer=heatmap or layer=uncertainty",
    "resampling": "a tile draws each cell of the store's level as one square of one value, never resampled",
    "buffer": "a tile is tilesize pixels square, with no buffer around it",
    "padding": "a tile is drawn from the cells under it alone, with no padding",
    "tile_scale": "ask tilesize=512 (or the tile {y}@2x) for tiles of twice the pixels",
}

Layer = Literal["heatmap", "contrast", "uncertainty"]
Format = Literal["png", "webp", "npy", "tif"]  # render.FORMATS
# Where this sound stands out (docs/demo-model.md, "The contrast layer"); the paper's -CSD map is
# layer=heatmap.
DEFAULT_LAYER: Layer = "contrast"
# q= is held to the rule of a registered text (server/queries.py text_record: at most
# MAX_TEXT_LENGTH characters once case-folded and single-spaced), not to its length as sent, or
# a text POST /queries takes (its JSON body holds 8 KiB) was refused as q=. This bounds the work.
MAX_SENT_TEXT = 8 * 1024
TextParam = Annotated[
    str | None,
    Query(
        max_length=MAX_SENT_TEXT,
        description=f"Text query, e.g. birdsong: at most {MAX_TEXT_LENGTH} characters once case-folded "
        "and single-spaced, as POST /queries takes it.",
        json_schema_extra={"pattern": TEXT_PATTERN},
    ),
]
QueryIdParam = Annotated[
    str | None, Query(description="A query id returned by POST /queries.", json_schema_extra={"pattern": ID_PATTERN})
]
# The values hour and month take: declared here, and so in OpenAPI, the 422s and GET /metadata.
HOURS = (0, 23)
MONTHS = (1, 12)
HourParam = Annotated[
    int | None,
    Query(ge=HOURS[0], le=HOURS[1], description=f"Hour of day, {HOURS[0]}-{HOURS[1]}; absent = unknown."),
    DIGITS,
]
MonthParam = Annotated[
    int | None,
    Query(ge=MONTHS[0], le=MONTHS[1], description=f"Month, {MONTHS[0]}-{MONTHS[1]}; absent = unknown."),
    DIGITS,
]
SourceParam = Annotated[
    str | None,
    Query(
        max_length=100, description="Who recorded it: one of the bundle's sources (GET /metadata); absent = unknown."
    ),
]
LevelParam = Annotated[int | None, Query(ge=0, le=MAX_ZOOM, description="Store level (default: the finest)."), DIGITS]
# A moment, as OGC API and STAC write one (RFC 3339): each place is answered at its clock then.
DATETIME_EXAMPLE = "2024-06-01T06:00:00Z"
DatetimeParam = Annotated[
    str | None,
    Query(
        max_length=64,
        description=f"The moment asked, as RFC 3339 writes it ({DATETIME_EXAMPLE}, or at an offset "
        "2024-06-01T08:00:00+02:00), instead of hour and month: each place (each cell of a map) at the hour and "
        "month its clocks show then (its time zone, daylight saving included). Without an offset "
        "(2024-06-01T06:00), every place's own clock: hour and month alike everywhere.",
        json_schema_extra={"format": "date-time"},
    ),
]


@dataclass
class QueryParams:
    """What to look for and when: a text or a registered query plus metadata."""

    q: TextParam = None
    query: QueryIdParam = None
    hour: HourParam = None
    month: MonthParam = None
    source: SourceParam = None
    datetime: DatetimeParam = None

    def moment(self, refusals: Refusals) -> dt.datetime | None:
        """The moment `datetime` names (parse_datetime), if given: instead of hour and month."""
        if self.datetime is None:
            return None
        if self.hour is not None or self.month is not None:
            refusals.refuse("datetime", "give datetime, or hour and month, not both: datetime sets both")
            return None
        with refusals.on("datetime"):
            return parse_datetime(self.datetime)
        return None  # refused

    def refuse_any(self, service: SoundscapeService, refusals: Refusals) -> None:
        """One 422 naming every refusal, if there is one. A text q refused for nothing else meets
        the model's vocabulary as it is embedded; a request refused anyway is told now too
        when the model knows no word of q (a tokenizer pass)."""
        if refusals and self.q is not None:
            with refusals.on("q"):
                service.check_text(self.q)
        refusals.raise_any()


@dataclass
class StyleParams(QueryParams):
    """A tile's parameters but its size: those of a tile asked at a pixel ratio (`{y}@2x`)."""

    layer: Annotated[
        Layer,
        Query(
            description="contrast (default): log-odds against everyday sounds at the cell (where this sound "
            "stands out); heatmap: match probability (the paper's -CSD map); uncertainty: S of the cell."
        ),
    ] = DEFAULT_LAYER
    colormap_name: Annotated[str | None, Query(max_length=64, description="A rio-tiler colormap name.")] = None
    rescale: Annotated[
        str | None,
        Query(max_length=64, description="min,max of the colour scale.", json_schema_extra=numbers_pattern(2)),
    ] = None

    def validated(
        self, service: SoundscapeService, refusals: Refusals | None = None
    ) -> list[tuple[TileRequest, str | None]]:
        return TileParams(**vars(self)).validated(service, refusals)


# Published as an enum, so schema-driven clients send only sizes taken; validated by
# `refuse_tile_size`, whose 422 names it with the other bad parameters.
TileSizeParam = Annotated[
    int,
    Query(description="Tile size in pixels: 256 or 512.", json_schema_extra={"enum": list(TILE_SIZES)}),
    DIGITS,
]


def refuse_tile_size(size: int, refusals: Refusals) -> None:
    """A tile size other than those served refused, in one sentence wherever it is given."""
    if size not in TILE_SIZES:
        refusals.refuse("tilesize", f"tilesize must be 256 or 512, not {size}")


@dataclass
class TileParams(StyleParams):
    tilesize: TileSizeParam = TILE_SIZES[0]

    def validated(
        self, service: SoundscapeService, refusals: Refusals | None = None
    ) -> list[tuple[TileRequest, str | None]]:
        """`tile_request` of tile 0/0/0: the rules a refusal of a tile or TileJSON route applies to
        the values FastAPI took (`refused_detail`; the routes call tile_request with their own
        tile). A list, as a capabilities document's layers are."""
        return [tile_request(service, TMS_IDS[0], 0, 0, 0, "png", self, refusals)]


# What only shapes a document: never echoed into its tile URLs.
DOCUMENT_FIELDS = ("tile_format", "minzoom", "maxzoom")


@dataclass
class DocumentParams(TileParams):
    """A TileJSON or WMTS document's parameters: those of its tiles, echoed into their URLs, and,
    named as TiTiler names them, the tiles' format and the zooms the document offers."""

    tile_format: Annotated[
        Format | None, Query(description="Format of the tiles the document points to (default png).")
    ] = None
    minzoom: Annotated[
        int | None, Query(ge=0, le=MAX_ZOOM, description="Coarsest zoom offered (default: the store's)."), DIGITS
    ] = None
    maxzoom: Annotated[
        int | None,
        Query(ge=0, le=MAX_ZOOM, description="Finest zoom offered (default: the store's finest level)."),
        DIGITS,
    ] = None

    @property
    def fmt(self) -> Format:
        return self.tile_format or "png"

    def zooms(self, service: SoundscapeService) -> tuple[int, int]:
        """The zooms offered: those given, else the store's (finer zooms draw its finest level's
        cells larger, so a client may ask for them)."""
        store = service.store
        lo = max(0, store.minlevel - CELLS_PER_TILE_LOG2) if self.minzoom is None else self.minzoom
        return lo, store.maxlevel if self.maxzoom is None else self.maxzoom

    def refuse_zooms(self, service: SoundscapeService, refusals: Refusals) -> None:
        lo, hi = self.zooms(service)
        if lo > hi:
            low = f"minzoom {lo}" + ("" if self.minzoom is not None else " (the store's, left out)")
            high = f"maxzoom {hi}" + ("" if self.maxzoom is not None else " (the store's finest level, left out)")
            refusals.refuse("minzoom maxzoom", f"{low} is above {high}: give minzoom <= maxzoom")

    def validated(
        self, service: SoundscapeService, refusals: Refusals | None = None
    ) -> list[tuple[TileRequest, str | None]]:
        refusals = Refusals() if refusals is None else refusals
        self.refuse_zooms(service, refusals)
        return [tile_request(service, TMS_IDS[0], 0, 0, 0, self.fmt, self, refusals)]


@dataclass
class CapabilitiesParams(DocumentParams):
    """A WMTS capabilities document's parameters: no query is needed (the uncertainty layer alone
    is listed then), and `layer` picks the query layers listed."""

    def layers(self) -> tuple[Layer, ...]:
        """contrast, the default layer, is listed unless another layer is asked for (layer=heatmap
        or layer=uncertainty: the documents of before the contrast layer)."""
        if self.q is None and self.query is None:
            return ("uncertainty",)
        return ("heatmap", "contrast", "uncertainty") if self.layer == "contrast" else ("heatmap", "uncertainty")

    def validated(
        self, service: SoundscapeService, refusals: Refusals | None = None
    ) -> list[tuple[TileRequest, str | None]]:
        """Each listed layer's request of tile 0/0/0 and text to embed: one 422 naming every bad
        parameter. The uncertainty layer is drawn with its own scale and colours, so a malformed
        rescale or colormap_name is refused for the query layers' sake, even when it is alone."""
        refusals = Refusals() if refusals is None else refusals
        self.refuse_zooms(service, refusals)
        with refusals.on("rescale"):
            parse_rescale(self.rescale)
        with refusals.on("colormap_name"):
            colormap(self.colormap_name, "heatmap")
        return [
            tile_request(
                service,
                TMS_IDS[0],
                0,
                0,
                0,
                self.fmt,
                replace(self, layer=layer)
                if layer in QUERY_LAYERS
                else replace(self, layer=layer, rescale=None, colormap_name=None),
                refusals,
            )
            for layer in self.layers()
        ]


@dataclass
class CollectionParams(CapabilitiesParams):
    """An OGC collection route's parameters: a capabilities document's but `layer`, which the
    collection names. The route refuses a `layer` given (meta.refuse_layer), so the OpenAPI
    document does not list it."""

    layer: Annotated[Layer, Query(include_in_schema=False)] = DEFAULT_LAYER


@dataclass(frozen=True)
class Asked:
    """What /point and /search are asked: the query, its metadata, the level and /search's bbox."""

    query_id: str
    meta: QueryMetadata
    level: Level
    box: tuple[float, float, float, float] | None = None
    when: dt.datetime | None = None  # datetime: the hour and month are each place's clock then


# The names of the one CRS coordinates are given in (longitude, latitude in degrees), as TiTiler's
# coord_crs spells it: another would place the point elsewhere, were it ignored.
# OpenAPI lists these spellings; each is taken in any case.
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
DEGREES_CRS = ("EPSG:4326", "OGC:CRS84", CRS84)
DEGREES_CRS_FOLDED = frozenset(name.casefold() for name in DEGREES_CRS)


@dataclass
class PointParams(QueryParams):
    level: LevelParam = None
    coord_crs: Annotated[
        str | None,
        Query(
            max_length=64,
            description="CRS of the coordinates, as TiTiler names it: EPSG:4326 or OGC:CRS84 (longitude, "
            "latitude in degrees), the only one taken and the default.",
            json_schema_extra={"enum": list(DEGREES_CRS)},
        ),
    ] = None

    def validated(self, service: SoundscapeService, refusals: Refusals | None = None) -> Asked:
        """The query, metadata, level and box asked for: one 422 naming every bad parameter."""
        refusals = Refusals() if refusals is None else refusals
        if self.coord_crs is not None and self.coord_crs.casefold() not in DEGREES_CRS_FOLDED:
            refusals.refuse(
                "coord_crs",
                f"coord_crs must be EPSG:4326 or OGC:CRS84 (longitude, latitude in degrees), not "
                f"{self.coord_crs[:40]!r}: transform the coordinates to degrees first",
            )
        with refusals.on("q query"):
            qid = requested_query_id(service, self)
        with refusals.on("source"):
            meta = query_metadata(service, self)
        with refusals.on("level"):
            level = service.level(self.level)
        box = self.box(refusals)
        when = self.moment(refusals)
        self.refuse_any(service, refusals)
        return Asked(qid, meta, level, box, when)

    def box(self, refusals: Refusals) -> tuple[float, float, float, float] | None:
        """The box the answer is limited to: none for a point."""
        return None


@dataclass
class AreaParams(PointParams):
    """An answer over the cells of a level (/search, /statistics): all of them, or a box's."""

    bbox: Annotated[
        str | None,
        Query(
            max_length=200,
            description="west,south,east,north in degrees: every cell whose centre lies in the box, and only "
            "those (west > east crosses the antimeridian).",
            json_schema_extra=numbers_pattern(4),
        ),
    ] = None

    def box(self, refusals: Refusals) -> tuple[float, float, float, float] | None:
        with refusals.on("bbox"):
            return parse_bbox(self.bbox)
        return None  # refused


@dataclass
class SearchParams(AreaParams):
    k: Annotated[int, Query(ge=1, le=MAX_K, description="How many cells."), DIGITS] = 10
    exact: Annotated[
        bool,
        Query(
            description="Under an hour, month or source the store does not hold, rank every cell of "
            "the level (a fusion of the whole level: slower on large levels) instead of the "
            "candidates that stored rankings near the request name (docs/api.md)."
        ),
        TRUE_OR_FALSE,
    ] = False
    rank_by: Annotated[
        Literal["score", "contrast"],
        Query(
            description="score: the match probability (the heatmap layer); contrast: where the sound stands "
            "out against everyday sounds (the contrast layer)."
        ),
    ] = "score"


@dataclass
class StatisticsParams(AreaParams):
    bins: Annotated[
        int,
        Query(ge=1, le=MAX_BINS, description="Equal bins of each layer's histogram, from its min to its max."),
        DIGITS,
    ] = 10


class Validated(Protocol):
    """A parameters class: its values checked by its rules, one 422 naming every bad one."""

    def validated(self, service: SoundscapeService, refusals: Refusals | None = None) -> object: ...


P = TypeVar("P", bound=Validated)
E = TypeVar("E", bound=Callable[..., Any])
# The parameters class each dependency of `in_event_loop` builds: a refusal names the bad
# parameters of a route from it (`refused_detail`).
PARAMS_CLASSES: dict[Callable[..., Any], type[Validated]] = {}
# A route's own refusals of its request (`refusing`), beside its parameters classes': made in
# every 422 of it, FastAPI's included, so that one names every bad parameter.
ROUTE_REFUSALS: dict[Callable[..., Any], Callable[[Request, Refusals], None]] = {}


def refusing(check: Callable[[Request, Refusals], None]) -> Callable[[E], E]:
    """Have a route endpoint's 422s make `check`'s refusals, FastAPI's too; the endpoint starts
    its own from `request_refusals`."""

    def register(endpoint: E) -> E:
        ROUTE_REFUSALS[endpoint] = check
        return endpoint

    return register


async def each_once(request: Request) -> None:
    """Refuse a parameter the route takes given more than once: `q=rain&q=birdsong` would
    otherwise draw the last one silently. Parameters the route does not take (a cache buster
    such as `_=1733040000`) stay ignored, repeated or not, unless the name is a slip of one it
    takes (`slips`) or another's name for one (`ALIASES`), one of TiTiler's rendering parameters
    (`UNSUPPORTED`), another service's time (`time_refusal`), or a tilesize beside a pixel ratio.
    Also refuse one whose percent-encoded bytes are not UTF-8 (`not_utf8`).
    The 422 names every other bad parameter too."""
    items = request.query_params.multi_items()
    counts = Counter(k for k, _ in items)
    repeated = [(k, n) for k, n in counts.items() if n > 1]
    garbled = any(REPLACED in v for _, v in items)  # the decoder's mark for bytes that are not UTF-8
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    taken, slips_of = taken_by(route.endpoint, route.dependant)
    slipped = [(name, meant) for name in counts.keys() - taken if (meant := slips_of.get(spelling(name)))]
    unsupported = [name for name in counts if name in UNSUPPORTED and "colormap_name" in taken]
    timed = sorted({(n, meant) for n, v in items if (meant := time_refusal(n, v))}) if "hour" in taken else []
    # A tile asked at a pixel ratio (`{y}@2x`) has that ratio's size: a tilesize would name it twice.
    ratio = request.path_params.get("scale") if "tilesize" in counts else None
    if repeated or garbled or slipped or unsupported or timed or ratio is not None:
        refusals = request_refusals(request)
        for name in unsupported:
            refusals.refuse(name, f"{name} is not supported: {UNSUPPORTED[name]}")
        for name, meant in timed:
            refusals.refuse(name, f"{name[:40]!r} is not a parameter of this route: {meant}")
        if ratio is not None:
            refusals.refuse("tilesize", f"tilesize and @{ratio[:8]}x both give the tile's size: give one of them")
        for name, meant in slipped:
            refusals.refuse(
                name,
                f"{name[:40]!r} is not a parameter of this route: did you mean {meant!r}? (names are exact; one "
                "the route does not take is ignored, so the answer would not be what you asked)",
            )
        for name, times in repeated:
            if name in taken:
                refusals.refuse(name, f"{name} is given {times} times: give each parameter once")
        if garbled:
            not_utf8(request.scope.get("query_string", b""), taken, refusals)
        if refusals:
            raise Refused(refused_detail(request, refusals))


# What a slip of a name adds or leaves out but for a trailing s: case aside, dashes, underscores
# and whitespace (`colormap name=`, `colormap+name=` and `tile-size=` are slips too).
SLIP_MARKS = re.compile(r"[\s_-]+")


def spelling(name: str) -> str:
    """A parameter name as a slip would leave it, but for a trailing s (`slips`): `Hour`,
    ` hour`, `ho ur` and `tile-size` are `hour`, `hour`, `hour` and `tilesize`."""
    return SLIP_MARKS.sub("", name.casefold())


def slips(name: str) -> set[str]:
    """Each `spelling` a slip of `name` has: its own, with an s added and, when it ends in s,
    without it (`hours` of hour, `ks` of k, `bbox-crss` of bbox-crs)."""
    folded = spelling(name)
    return {folded, folded + "s", *([folded[:-1]] if folded.endswith("s") and len(folded) > 1 else [])}


def slip_of(name: str, known: Iterable[str]) -> str | None:
    """The name of `known` that `name` is a slip of (or is), if any."""
    folded = spelling(name)
    return next((k for k in known if folded in slips(k)), None)


# Other services' names for a parameter here (OGC API's and STAC's `limit`, a `zoom` for the
# level, `text` for the query), as `spelling` leaves them: refused naming ours, as a slip is. The
# CRS parameters of the other routes too: ignored, `crs=EPSG:3857` on /point would read metres
# as degrees (coord_crs names the CRS of /point's and /search's coordinates, bbox-crs the map's box).
ALIASES = {
    "limit": "k",
    "topk": "k",
    "zoom": "level",
    "z": "level",
    "text": "q",
    "hourofday": "hour",
    "timeofday": "hour",
    "monthofyear": "month",
    "colourmapname": "colormap_name",
    "cmap": "colormap_name",  # matplotlib's and xarray's names for the colour map and its range
    "vmin": "rescale",
    "vmax": "rescale",
    "crs": "coord_crs",
    "bboxcrs": "coord_crs",
    "coordcrs": "bbox-crs",
}
# Other services' parameters for a time, on a route that takes `hour` (and so `datetime`, OGC
# API's and STAC's): the `time` dimension of WMS and WMTS, a `date`, a `season`. The map drawn
# without them is the unknown hour's and month's, so each is refused saying what to give instead.
THE_MOMENT = (
    f"give the moment as datetime={DATETIME_EXAMPLE} (RFC 3339), or the local hour of day as hour=0..23 and the "
    "month as month=1..12"
)
TIME_PARAMETERS = {
    "time": THE_MOMENT,
    "date": THE_MOMENT,
    "season": "give the month as month=1..12 (a season's months differ between the hemispheres)",
}
TIME_SLIPS = {slip: name for name in TIME_PARAMETERS for slip in slips(name)}
# A cache buster's timestamp (`time=1733040000`, seconds or milliseconds since 1970) is no time
# of day or date a person wrote: such a parameter stays ignored.
TIMESTAMP = re.compile(r"[0-9]{7,}")  # ASCII digits (a regex's \d also takes other scripts' digits)


def time_refusal(name: str, value: str) -> str | None:
    """What to give instead, when the query parameter `name=value` is another service's time
    (`TIME_PARAMETERS`); None for any other parameter."""
    meant = TIME_SLIPS.get(spelling(name))
    return None if meant is None or TIMESTAMP.fullmatch(value.strip()) else TIME_PARAMETERS[meant]


TAKEN: dict[Callable[..., Any], tuple[set[str], dict[str, str]]] = {}


def taken_by(endpoint: Callable[..., Any], dependant: Dependant) -> tuple[set[str], dict[str, str]]:
    """The query parameters of a route (its endpoint's: the same in every app), and each of them
    under the `slips` of its name and of its ALIASES (a name's own first); worked out once per endpoint."""
    if endpoint not in TAKEN:
        names = query_names(dependant)
        aliases = {slip: name for alias, name in ALIASES.items() if name in names for slip in slips(alias)}
        TAKEN[endpoint] = names, aliases | {slip: n for n in sorted(names) for slip in slips(n)}
    return TAKEN[endpoint]


REPLACED = "\ufffd"


def not_utf8(query_string: bytes, taken: set[str], refusals: Refusals) -> None:
    """Refuse each parameter the route takes whose value is not UTF-8 once percent-decoded: the
    query string decoder puts U+FFFD in place of such bytes, so `q=caf%E9+birds` (Latin-1) would
    map the text 'caf\ufffd birds', a query nobody wrote."""
    for pair in query_string.decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        name = unquote_plus(name)
        if name in taken and name not in refusals.names:
            try:
                unquote_plus(value, errors="strict")
            except UnicodeDecodeError:
                refusals.refuse(
                    name, f"{name} is not UTF-8 text: percent-encode the UTF-8 bytes of each character (é is %C3%A9)"
                )


def query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    return {p.alias for d in each_dependant(dependant) for p in d.query_params}


def each_dependant(dependant: Dependant) -> Iterator[Dependant]:
    """A route's dependant and those of its dependencies, theirs included."""
    yield dependant
    for dependency in dependant.dependencies:
        yield from each_dependant(dependency)


def refused_detail(request: Request, refusals: Refusals) -> str:
    """The detail of one 422 naming every bad parameter of the request: those in `refusals` (begun
    by `request_refusals`: the route's own first), those FastAPI's validation refuses, and those
    the rules of the route's parameters class refuse among the values FastAPI takes (a refused
    one's default in its place, its rules not applied)."""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        dependants = list(each_dependant(route.dependant))
        _, bad_path = request_params_to_args([p for d in dependants for p in d.path_params], request.path_params)
        values, bad_query = request_params_to_args(
            [p for d in dependants for p in d.query_params], request.query_params
        )
        refuse_invalid(request, [*bad_path, *bad_query], refusals)
        for dependency in dependants:
            if dependency.call is not None and (cls := PARAMS_CLASSES.get(dependency.call)) is not None:
                fields = (f.name for f in dependency.query_params if f.alias not in refusals.names)
                with suppress(Refused):  # raised for the sentences it leaves in refusals
                    cls(**{name: values[name] for name in fields if name in values}).validated(
                        request.app.state.service, refusals
                    )
    return refusals.detail


async def refuse_everything(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation refused parameters before any rule of this module ran: one 422
    naming those and every other bad parameter."""
    refusals = request_refusals(request)
    refuse_invalid(request, exc.errors(), refusals)
    return error_response(422, refused_detail(request, refusals), limit=MAX_DETAIL_CHARS)


def request_refusals(request: Request) -> Refusals:
    """A request's refusals before its parameters are checked: its route's own (`refusing`), made
    before FastAPI's, so the first sentence of a parameter stands and the route's says more
    (`layer` is no parameter of a collection, where FastAPI's lists the layers)."""
    refusals = Refusals()
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and (check := ROUTE_REFUSALS.get(route.endpoint)) is not None:
        check(request, refusals)
    return refusals


def in_event_loop(cls: type[P]) -> Callable[..., Awaitable[P]]:
    """A dependency that builds `cls` from the request as `Depends()` would, but in the event
    loop: FastAPI runs a class dependency in its thread pool, a hop that cost every tile request
    about 0.3 ms of CPU (BENCHMARKS.md, tenth pass). Same parameters, same OpenAPI."""

    async def build(**values: Any) -> P:
        return cls(**values)

    build.__signature__ = inspect.signature(cls, eval_str=True)  # type: ignore[attr-defined]
    build.__name__ = build.__qualname__ = cls.__name__
    PARAMS_CLASSES[build] = cls
    return build


TileParamsDep = Annotated[TileParams, Depends(in_event_loop(TileParams))]
StyleParamsDep = Annotated[StyleParams, Depends(in_event_loop(StyleParams))]
DocumentParamsDep = Annotated[DocumentParams, Depends(in_event_loop(DocumentParams))]
CapabilitiesParamsDep = Annotated[CapabilitiesParams, Depends(in_event_loop(CapabilitiesParams))]
CollectionParamsDep = Annotated[CollectionParams, Depends(in_event_loop(CollectionParams))]
PointParamsDep = Annotated[PointParams, Depends(in_event_loop(PointParams))]
SearchParamsDep = Annotated[SearchParams, Depends(in_event_loop(SearchParams))]
StatisticsParamsDep = Annotated[StatisticsParams, Depends(in_event_loop(StatisticsParams))]


def query_metadata(service: SoundscapeService, params: QueryParams) -> QueryMetadata:
    sources = service.bundle.sources.names
    if params.source is not None and params.source not in sources:
        raise HTTPException(
            422,
            f"source must be one of {', '.join(sources)} (GET /metadata says what each means) or left out "
            f"for an unknown source, not {params.source[:40]!r}",
        )
    return QueryMetadata(hour=params.hour, month=params.month, source=params.source)


def requested_query_id(service: SoundscapeService, params: QueryParams) -> str:
    """The id a tile URL refers to: `query=` as given, or the id of the text `q=`."""
    if params.q is not None and params.query is not None:
        raise HTTPException(422, "give q (a text) or query (a registered id), not both")
    if params.query is not None:
        if not is_query_id(params.query):
            raise HTTPException(422, f"query must be a 16-hex-digit id from POST /queries, not {params.query!r}")
        return params.query
    if params.q is None:
        raise HTTPException(422, "q (a text query, e.g. q=birdsong) or query (an id from POST /queries) is required")
    try:
        return text_record(service.text_namespace, params.q).id
    except QueryError as exc:
        raise HTTPException(422, f"q: {exc}") from None


async def query_embedding(service: SoundscapeService, params: QueryParams, query_id: str):
    """(record, embedding) of the request's query (text embedded on first use)."""
    if params.q is not None:
        return await service.text_query(params.q)
    return await service.resolve(query_id)


def parse_rescale(text: str | None) -> tuple[float, float] | None:
    """`min,max` rounded to RESCALE_DIGITS significant digits of max - min before it keys or
    colours a tile (what is drawn is what is cached), or None: the layer's default scale
    (SoundscapeService.scale)."""
    if text is None:
        return None
    try:
        lo, hi = (decimal_number(v) for v in text.split(","))
    except ValueError:
        raise HTTPException(422, f"rescale must be two numbers min,max, not {text!r}") from None
    if not (-RESCALE_LIMIT <= lo < hi <= RESCALE_LIMIT):  # NaN fails every comparison
        raise HTTPException(
            422, f"rescale needs finite min < max within -{RESCALE_LIMIT:g}..{RESCALE_LIMIT:g}, got {text!r}"
        )
    if hi - lo < RESCALE_MIN_SPAN:
        raise HTTPException(422, f"rescale max - min must be at least {RESCALE_MIN_SPAN:g}, got {text!r}")
    digits = RESCALE_DIGITS - 1 - math.floor(math.log10(hi - lo))
    return round(lo, digits) + 0.0, round(hi, digits) + 0.0  # + 0.0: -0.0 names the same tile as 0.0


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """`west,south,east,north` in degrees (OGC API's bbox order), or None. West above east is a
    box across the antimeridian."""
    return None if text is None else parse_box(text, 180, 90, "degrees")


def parse_box(text: str, x_limit: float, y_limit: float, units: str) -> tuple[float, float, float, float]:
    """`west,south,east,north` in `units`: x within +-x_limit (west above east across the
    antimeridian), south below north within +-y_limit; a 422 saying which rule a box breaks."""
    try:
        west, south, east, north = (decimal_number(v) for v in text.split(","))
    except ValueError:
        raise HTTPException(
            422, f"bbox must be four numbers west,south,east,north in {units}, not {shown(text)}"
        ) from None
    if not (-x_limit <= west <= x_limit and -x_limit <= east <= x_limit) or west == east:  # NaN fails them all
        raise HTTPException(
            422, f"bbox needs west and east in -{x_limit:.10g}..{x_limit:.10g} and apart, got {shown(text)}"
        )
    if not -y_limit <= south < north <= y_limit:
        raise HTTPException(422, f"bbox needs -{y_limit:.10g} <= south < north <= {y_limit:.10g}, got {shown(text)}")
    return west, south, east, north


PLACEHOLDER = re.compile(r"\{\w+\}")  # `{Time}` of a WMTS ResourceURL template, not filled in
# An offset's "+" that came as a space: a query string's "+" is a space unless written %2B, and some
# clients send it as typed (QGIS, given a capabilities URL holding %2B, asks with "+").
UNESCAPED_PLUS = re.compile(r"([Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


def parse_datetime(text: str) -> dt.datetime:
    """One moment: a date and time at an offset (an instant) or without one (a clock's reading),
    in the years 2..9998 (so its place's clock, up to a day off, is a date too); a 422 saying what
    to give for an interval, a date alone or anything else."""
    if "/" in text:
        raise HTTPException(422, f"datetime must be one moment, not an interval: {shown(text)}")
    text = UNESCAPED_PLUS.sub(r"\1+\2", text)
    with suppress(ValueError):
        dt.date.fromisoformat(text)
        raise HTTPException(
            422, f"datetime {shown(text)} is a date alone: give its time too ({DATETIME_EXAMPLE}), or month=1..12"
        )
    if PLACEHOLDER.fullmatch(text):
        raise HTTPException(
            422,
            f"datetime={shown(text)} is a WMTS template's placeholder the client left as it was: pick a value of "
            "the layer's Time dimension (QGIS: Select dimensions, or tileDimensions=Time=<instant> in its source)",
        )
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            422,
            f"datetime must be a date and time as RFC 3339 writes it ({DATETIME_EXAMPLE}, or "
            f"2024-06-01T08:00:00+02:00 at an offset), not {shown(text)}",
        ) from None
    if not 2 <= when.year <= 9998:
        raise HTTPException(422, f"datetime's year must be 2..9998, not {when.year}")
    return when


def colormap(name: str | None, layer: str) -> str:
    """The colormap a layer is drawn in: `name`, or the layer's default when it is left out. An
    empty name is refused like every other empty parameter, not taken for the default."""
    if name == "":
        raise HTTPException(422, "colormap_name is empty: give a name GET /colormaps lists, or leave colormap_name out")
    name = DEFAULT_COLORMAPS[layer] if name is None else name
    if name not in colormap_names():
        raise HTTPException(422, f"unknown colormap_name {name!r} (GET /colormaps lists them)")
    return name


def check_tms(tms: str) -> None:
    """404 for a tile matrix set this server does not serve."""
    if tms not in TMS_IDS:
        raise HTTPException(404, f"unknown tile matrix set {tms!r}; available: {', '.join(TMS_IDS)}")


VALUE_NAMES = {"tif": "GeoTIFF", "npy": ".npy"}


def placed(tms: str, fmt: str) -> bool:
    """Whether `tms` serves tiles of `fmt`: values (.npy, .tif) only on the grid they are computed
    on; another's tiles are pictures drawn from the grid's (render.encode_tile_geotiff places on
    GRID alone)."""
    return fmt not in VALUE_FORMATS or tms == GRID


def check_placed(tms: str, fmt: str) -> None:
    """404 for tiles `tms` does not serve in `fmt` (`placed`): a tile's, and that of a document
    whose template would lead to such tiles only."""
    if not placed(tms, fmt):
        raise HTTPException(
            404,
            f"{VALUE_NAMES[fmt]} tiles are served on {GRID} only, the grid their values are computed on, not on {tms}",
        )


def scaled(params: StyleParams, scale: int) -> TileParams:
    """The parameters of a tile asked at a pixel ratio (`@2x`): its size is that ratio's (a
    `tilesize` beside it is refused by `each_once`)."""
    return TileParams(**vars(params), tilesize=TILE_SIZES[0] * scale)


def check_tile(tms: str, z: int, x: int, y: int) -> None:
    """404 for a tile outside the tile matrix set, before any work."""
    check_tms(tms)
    columns, rows, top = MATRICES[tms]
    if not (0 <= z <= top and 0 <= x < columns << z and 0 <= y < rows << z):
        raise HTTPException(
            404,
            f"tile {z}/{x}/{y} is outside the {tms} grid (zoom 0-{top}, x in 0..{columns}*2^z-1, y in 0..{rows}*2^z-1)",
        )


def tile_request(
    service: SoundscapeService,
    tms: str,
    z: int,
    x: int,
    y: int,
    fmt: str,
    params: TileParams,
    refusals: Refusals | None = None,
) -> tuple[TileRequest, str | None]:
    """The validated request and the text to embed (None for a registered query): one 422 naming
    every bad parameter (those in `refusals` too), else a 404 for a tile outside the grid. In that
    order, as FastAPI's own refusals come before the route: a bad parameter is a 422 wherever the
    tile is."""
    refusals = Refusals() if refusals is None else refusals
    refuse_tile_size(params.tilesize, refusals)
    heatmap = params.layer in QUERY_LAYERS
    # The uncertainty layer draws no query, but a malformed q or query is still a 422 there (it
    # is not looked up: an unknown id draws the same S)
    given = params.q is not None or params.query is not None
    with refusals.on("q query layer"):
        qid = requested_query_id(service, params) if heatmap or given else None
    with refusals.on("source"):
        meta = query_metadata(service, params)
    when = params.moment(refusals)
    with refusals.on("colormap_name"):  # a layer's default colormap is a known one
        colour = colormap(params.colormap_name, params.layer)
    with refusals.on("rescale"):
        rescale = parse_rescale(params.rescale)
    params.refuse_any(service, refusals)
    meta, moment = clocked(meta, when)
    check_tile(tms, z, x, y)
    check_placed(tms, fmt)
    request = TileRequest(
        z=z,
        x=x,
        y=y,
        fmt=fmt,
        size=params.tilesize,
        layer=params.layer,
        query=qid if heatmap else None,
        meta=meta,
        colormap=colour,
        rescale=rescale,
        tms=tms,
        moment=moment,
    )
    return request, (params.q if heatmap else None)


def clocked(meta: QueryMetadata, when: dt.datetime | None) -> tuple[QueryMetadata, dt.datetime | None]:
    """The metadata and the instant a map is drawn at: a moment without an offset is every
    place's own clock, so its hour and month; one with an offset is an instant (in UTC, to the
    second: no zone's offset has a fraction of one), each cell's clock then its hour and month."""
    if when is None:
        return meta, None
    if when.tzinfo is None:
        return replace(meta, hour=when.hour, month=when.month), None
    return meta, when.astimezone(dt.UTC).replace(microsecond=0)


def echo(params: QueryParams, **extra) -> dict:
    """The parameters a client gave, to echo into TileJSON/WMTS URLs (None dropped)."""
    values = {k: v for k, v in vars(params).items() if v is not None and k not in DOCUMENT_FIELDS}
    values.update({k: v for k, v in extra.items() if v is not None})
    if values.get("tilesize") == 256:
        values.pop("tilesize")
    return values

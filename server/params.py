"""Request parameters shared by the routes: their declarations (so OpenAPI documents them) and
their validation into engine types. Every bad value becomes a 422 with a sentence."""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote_plus

from fastapi import Depends, HTTPException, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from server.engine import QUERY_LAYERS, QueryMetadata
from server.queries import MAX_TEXT_LENGTH, QueryError, is_query_id, shown, text_record
from server.render import colormap_names
from server.service import SoundscapeService, TileRequest

TMS_IDS = ("WebMercatorQuad",)
MAX_ZOOM = 24
TILE_SIZES = (256, 512)
DEFAULT_COLORMAPS = {"heatmap": "magma", "contrast": "magma", "uncertainty": "viridis"}

# A rescale keeps this many significant digits of its span (max - min): finer steps change no
# colour of 255, and a rounded value names the tile, so a client cannot mint a new cache key with
# every float. Bounds: scores are probabilities and S is small.
RESCALE_DIGITS = 4
RESCALE_LIMIT = 1000.0
RESCALE_MIN_SPAN = 1e-6
UNSUPPORTED = {
    "colormap": "pick a named colormap with colormap_name (GET /colormaps lists them)",
    "expression": "a tile has one value per pixel, chosen with layer=contrast, layer=heatmap or layer=uncertainty",
}

Layer = Literal["heatmap", "contrast", "uncertainty"]
# Where this sound stands out (docs/demo-model.md, "The contrast layer"); the paper's -CSD map is
# layer=heatmap.
DEFAULT_LAYER: Layer = "contrast"
TextParam = Annotated[str | None, Query(max_length=MAX_TEXT_LENGTH, description="Text query, e.g. birdsong.")]
QueryIdParam = Annotated[str | None, Query(description="A query id returned by POST /queries.")]
HourParam = Annotated[int | None, Query(ge=0, le=23, description="Hour of day, 0-23; absent = unknown.")]
MonthParam = Annotated[int | None, Query(ge=1, le=12, description="Month, 1-12; absent = unknown.")]
SourceParam = Annotated[
    str | None,
    Query(
        max_length=100, description="Who recorded it: one of the bundle's sources (GET /metadata); absent = unknown."
    ),
]
LevelParam = Annotated[int | None, Query(ge=0, le=MAX_ZOOM, description="Store level (default: the finest).")]


@dataclass
class QueryParams:
    """What to look for and when: a text or a registered query plus metadata."""

    q: TextParam = None
    query: QueryIdParam = None
    hour: HourParam = None
    month: MonthParam = None
    source: SourceParam = None


@dataclass
class TileParams(QueryParams):
    layer: Annotated[
        Layer,
        Query(
            description="contrast (default): log-odds against everyday sounds at the cell (where this sound "
            "stands out); heatmap: match probability (the paper's -CSD map); uncertainty: S of the cell."
        ),
    ] = DEFAULT_LAYER
    colormap_name: Annotated[str | None, Query(max_length=64, description="A rio-tiler colormap name.")] = None
    rescale: Annotated[str | None, Query(max_length=64, description="min,max of the colour scale.")] = None
    tilesize: Annotated[int, Query(description="Tile size in pixels: 256 or 512.")] = 256
    # TiTiler parameters this server does not take: refused (422), never silently ignored.
    colormap: Annotated[str | None, Query(include_in_schema=False)] = None
    expression: Annotated[str | None, Query(include_in_schema=False)] = None

    def __post_init__(self) -> None:
        for name, advice in UNSUPPORTED.items():
            if getattr(self, name) is not None:
                raise HTTPException(422, f"{name} is not supported: {advice}")


P = TypeVar("P")


async def each_once(request: Request) -> None:
    """Refuse a parameter the route takes given more than once: `q=rain&q=birdsong` would
    otherwise draw the last one silently. Parameters the route does not take (a cache buster
    such as `_=1733040000`) stay ignored, repeated or not. Also refuse one whose percent-encoded
    bytes are not UTF-8 (`not_utf8`)."""
    items = request.query_params.multi_items()
    repeated = [(k, n) for k, n in Counter(k for k, _ in items).items() if n > 1]
    garbled = any(REPLACED in v for _, v in items)  # the decoder's mark for bytes that are not UTF-8
    route = request.scope.get("route")
    if (repeated or garbled) and isinstance(route, APIRoute):
        taken = query_names(route.dependant)
        for name, times in repeated:
            if name in taken:
                raise HTTPException(422, f"{name} is given {times} times: give each parameter once")
        if garbled:
            not_utf8(request.scope.get("query_string", b""), taken)


REPLACED = "\ufffd"


def not_utf8(query_string: bytes, taken: set[str]) -> None:
    """422 for a parameter the route takes whose value is not UTF-8 once percent-decoded: the
    query string decoder puts U+FFFD in place of such bytes, so `q=caf%E9+birds` (Latin-1) would
    map the text 'caf\ufffd birds', a query nobody wrote."""
    for pair in query_string.decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        name = unquote_plus(name)
        if name in taken:
            try:
                unquote_plus(value, errors="strict")
            except UnicodeDecodeError:
                raise HTTPException(
                    422,
                    f"{name} is not UTF-8 text: percent-encode the UTF-8 bytes of each character (é is %C3%A9)",
                ) from None


def query_names(dependant: Dependant) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    return {p.alias for p in dependant.query_params}.union(*(query_names(d) for d in dependant.dependencies))


def in_event_loop(cls: type[P]) -> Callable[..., Awaitable[P]]:
    """A dependency that builds `cls` from the request as `Depends()` would, but in the event
    loop: FastAPI runs a class dependency in its thread pool, a hop that cost every tile request
    about 0.3 ms of CPU (BENCHMARKS.md, tenth pass). Same parameters, same OpenAPI."""

    async def build(**values: Any) -> P:
        return cls(**values)

    build.__signature__ = inspect.signature(cls, eval_str=True)  # type: ignore[attr-defined]
    build.__name__ = build.__qualname__ = cls.__name__
    return build


QueryParamsDep = Annotated[QueryParams, Depends(in_event_loop(QueryParams))]
TileParamsDep = Annotated[TileParams, Depends(in_event_loop(TileParams))]


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


async def query_embedding(service: SoundscapeService, params: QueryParams):
    """(record, embedding) of the request's query (text embedded on first use)."""
    qid = requested_query_id(service, params)
    if params.q is not None:
        return await service.text_query(params.q)
    return await service.resolve(qid)


def parse_rescale(text: str | None) -> tuple[float, float] | None:
    """`min,max` rounded to RESCALE_DIGITS significant digits of max - min before it keys or
    colours a tile (what is drawn is what is cached), or None: the layer's default scale
    (SoundscapeService.scale)."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
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
    if text is None:
        return None
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError:
        raise HTTPException(
            422, f"bbox must be four numbers west,south,east,north in degrees, not {shown(text)}"
        ) from None
    if not (-180 <= west <= 180 and -180 <= east <= 180) or west == east:  # NaN fails every comparison
        raise HTTPException(422, f"bbox needs west and east in -180..180 and apart, got {shown(text)}")
    if not -90 <= south < north <= 90:
        raise HTTPException(422, f"bbox needs -90 <= south < north <= 90, got {shown(text)}")
    return west, south, east, north


def colormap(name: str | None, layer: str) -> str:
    name = name or DEFAULT_COLORMAPS[layer]
    if name not in colormap_names():
        raise HTTPException(422, f"unknown colormap_name {name!r}; GET /colormaps lists them")
    return name


def check_tms(tms: str) -> None:
    """404 for a tile matrix set this server does not serve."""
    if tms not in TMS_IDS:
        raise HTTPException(404, f"unknown tile matrix set {tms!r}; available: {', '.join(TMS_IDS)}")


def check_tile(tms: str, z: int, x: int, y: int) -> None:
    """404 for a tile outside the tile matrix set, before any work."""
    check_tms(tms)
    if not (0 <= z <= MAX_ZOOM and 0 <= x < (1 << z) and 0 <= y < (1 << z)):
        raise HTTPException(404, f"tile {z}/{x}/{y} is outside the {tms} grid (zoom 0-{MAX_ZOOM}, x and y in 0..2^z-1)")


def tile_request(
    service: SoundscapeService, tms: str, z: int, x: int, y: int, fmt: str, params: TileParams
) -> tuple[TileRequest, str | None]:
    """The validated request and the text to embed (None for a registered query)."""
    check_tile(tms, z, x, y)
    if params.tilesize not in TILE_SIZES:
        raise HTTPException(422, f"tilesize must be 256 or 512, not {params.tilesize}")
    heatmap = params.layer in QUERY_LAYERS
    # The uncertainty layer draws no query, but a malformed q or query is still a 422 there (it
    # is not looked up: an unknown id draws the same S)
    given = params.q is not None or params.query is not None
    qid = requested_query_id(service, params) if heatmap or given else None
    request = TileRequest(
        z=z,
        x=x,
        y=y,
        fmt=fmt,
        size=params.tilesize,
        layer=params.layer,
        query=qid if heatmap else None,
        meta=query_metadata(service, params),
        colormap=colormap(params.colormap_name, params.layer),
        rescale=parse_rescale(params.rescale),
        tms=tms,
    )
    return request, (params.q if heatmap else None)


def echo(params: QueryParams, **extra) -> dict:
    """The parameters a client gave, to echo into TileJSON/WMTS URLs (None dropped)."""
    values = {k: v for k, v in vars(params).items() if v is not None}
    values.update({k: v for k, v in extra.items() if v is not None})
    if values.get("tilesize") == 256:
        values.pop("tilesize")
    return values

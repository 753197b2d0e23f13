"""Map tiles: `/tiles/{z}/{x}/{y}.png` (WebMercatorQuad, 256 px) and
`/tiles/{tms}/{z}/{x}/{y}[.png|.webp|.npy|.tif]`, each also at a pixel ratio (`{y}@2x`: 512 px,
as TiTiler and MapLibre's `{ratio}` write it): one endpoint, six routes. The ETag is known
before rendering."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server import maps
from server.engine import GRID
from server.http import (
    BINARY,
    conditional,
    errors,
    held,
    if_none_match_tags,
)
from server.params import (
    Format,
    Integer,
    Scale,
    StyleParams,
    StyleParamsDep,
    TileParams,
    TileParamsDep,
    scaled,
    tile_request,
)
from server.render import FORMATS
from server.routes.deps import ServiceDep
from server.service import SoundscapeService

router = APIRouter(tags=["tiles"])
TILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": dict.fromkeys(FORMATS.values(), BINARY), "description": "The tile."},
    304: {"description": "Not modified (If-None-Match)."},
    **errors(404, 412, 422, 503, notes={404: "Outside the tile matrix set, or unknown query id."}),
}


async def _tile(
    request: Request,
    service: ServiceDep,
    tms: str,
    z: int,
    x: int,
    y: int,
    fmt: str,
    params: TileParams,
) -> Response:
    tile, text = tile_request(service, tms, z, x, y, fmt, params)
    if text is None and tile.query is not None:
        # Registered ids only (q= of the same text names the same cached tile), and before any
        # 304 or 412 (known before rendering): `*` matches only a tile that exists
        await service.resolve(tile.query)
    elif text is not None and "*" in if_none_match_tags(request):
        service.check_text(text)  # 422 for a text the model knows no word of, as without the header
    name = service.tile_name(tile)
    etag = f'"{name}"'
    answer = held(request, etag, "tile")
    if answer is not None:
        return answer
    drawn = None if tile.tms == GRID else (lambda: maps.crs84_tile(service, tile, text))
    body = await service.tile(tile, text, name, drawn)
    return conditional(request, Response(body, media_type=FORMATS[fmt]), "tile", etag)


# The path parameters a tile route may take besides z, x and y.
OPTIONAL_PARTS = ("tms", "scale", "fmt")


def tile_endpoint(name: str, path: str) -> Callable[..., Awaitable[Response]]:
    """The endpoint of the tile route `path`: it takes the path parameters among {tms}, {scale}
    and {fmt} that `path` holds. Without {tms} the tile is WebMercatorQuad's XYZ tile, without
    {fmt} a PNG; with {scale} its size is the pixel ratio's (`scaled`), and the route publishes
    no tilesize."""
    at_ratio = "{scale}" in path

    async def endpoint(
        request: Request, service: SoundscapeService, z: int, x: int, y: int, params: StyleParams, **parts: Any
    ) -> Response:
        # A route without {scale} takes TileParams (its signature below), a tile's size included.
        asked = scaled(params, parts["scale"]) if at_ratio else cast(TileParams, params)
        return await _tile(request, service, parts.get("tms", GRID), z, x, y, parts.get("fmt", "png"), asked)

    annotations: dict[str, Any] = {"request": Request, "service": ServiceDep, "tms": str}
    annotations |= {
        "z": Integer,
        "x": Integer,
        "y": Integer,
        "scale": Scale,
        "fmt": Format,
        "params": StyleParamsDep if at_ratio else TileParamsDep,
    }
    taken = [n for n in annotations if n not in OPTIONAL_PARTS or f"{{{n}}}" in path]
    keyword = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, keyword, annotation=annotations[n]) for n in taken], return_annotation=Response
    )
    endpoint.__name__ = endpoint.__qualname__ = name  # FastAPI's operationId
    return endpoint


# Starlette tries the routes in order, so those at a pixel ratio come first: `{y}.{fmt}` would
# read `0.0@2x` as y 0 in the format '0@2x', not as the y '0.0' that it is.
TILE_ROUTES = (
    ("xyz_tile_scaled", "/tiles/{z}/{x}/{y}@{scale}x.png", "XYZ tile at a pixel ratio: @2x is 512 px (PNG)"),
    ("xyz_tile", "/tiles/{z}/{x}/{y}.png", "XYZ tile (WebMercatorQuad, PNG)"),
    (
        "tms_tile_scaled",
        "/tiles/{tms}/{z}/{x}/{y}@{scale}x.{fmt}",
        "Tile of a tile matrix set at a pixel ratio (@2x: 512 px), as png, webp, npy or tif",
    ),
    ("tms_tile_png_scaled", "/tiles/{tms}/{z}/{x}/{y}@{scale}x", "Tile of a tile matrix set at a pixel ratio (PNG)"),
    (
        "tms_tile",
        "/tiles/{tms}/{z}/{x}/{y}.{fmt}",
        "Tile of a tile matrix set, as png, webp, npy or tif (float32 GeoTIFF of the values)",
    ),
    ("tms_tile_png", "/tiles/{tms}/{z}/{x}/{y}", "Tile of a tile matrix set (PNG)"),
)
for route_name, route_path, route_summary in TILE_ROUTES:
    router.add_api_route(
        route_path,
        tile_endpoint(route_name, route_path),
        methods=["GET"],
        response_class=Response,
        responses=TILE_RESPONSES,
        summary=route_summary,
    )

"""Map tiles: `/tiles/{z}/{x}/{y}.png` (WebMercatorQuad, 256 px) and
`/tiles/{tms}/{z}/{x}/{y}[.png|.webp|.npy|.tif]`, each also at a pixel ratio (`{y}@2x`: 512 px,
as TiTiler and MapLibre's `{ratio}` write it). The ETag is known before rendering. Starlette
tries the routes in order, so those at a pixel ratio come first: `{y}.{fmt}` would read
`0.0@2x` as y 0 in the format '0@2x', not as the y '0.0' that it is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.http import (
    BINARY,
    cache_control,
    conditional,
    errors,
    if_none_match_tags,
    not_modified,
    precondition_failed,
)
from server.params import Format, Integer, Scale, StyleParamsDep, TileParams, TileParamsDep, scaled, tile_request
from server.render import FORMATS
from server.routes.deps import ServiceDep

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
    held = precondition_failed(request, etag) or not_modified(request, etag, cache_control(request, "tile"))
    if held is not None:
        return held
    body = await service.tile(tile, text, name)
    return conditional(request, Response(body, media_type=FORMATS[fmt]), "tile", etag)


@router.get(
    "/tiles/{z}/{x}/{y}@{scale}x.png",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="XYZ tile at a pixel ratio: @2x is 512 px (WebMercatorQuad, PNG)",
)
async def xyz_tile_scaled(
    request: Request,
    service: ServiceDep,
    z: Integer,
    x: Integer,
    y: Integer,
    scale: Scale,
    params: StyleParamsDep,
) -> Response:
    return await _tile(request, service, "WebMercatorQuad", z, x, y, "png", scaled(request, params, scale))


@router.get(
    "/tiles/{z}/{x}/{y}.png",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="XYZ tile (WebMercatorQuad, PNG)",
)
async def xyz_tile(
    request: Request,
    service: ServiceDep,
    z: Integer,
    x: Integer,
    y: Integer,
    params: TileParamsDep,
) -> Response:
    return await _tile(request, service, "WebMercatorQuad", z, x, y, "png", params)


@router.get(
    "/tiles/{tms}/{z}/{x}/{y}@{scale}x.{fmt}",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="Tile of a tile matrix set at a pixel ratio (@2x: 512 px), as png, webp, npy or tif",
)
async def tms_tile_scaled(
    request: Request,
    service: ServiceDep,
    tms: str,
    z: Integer,
    x: Integer,
    y: Integer,
    scale: Scale,
    fmt: Format,
    params: StyleParamsDep,
) -> Response:
    return await _tile(request, service, tms, z, x, y, fmt, scaled(request, params, scale))


@router.get(
    "/tiles/{tms}/{z}/{x}/{y}@{scale}x",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="Tile of a tile matrix set at a pixel ratio (@2x: 512 px; PNG)",
)
async def tms_tile_png_scaled(
    request: Request,
    service: ServiceDep,
    tms: str,
    z: Integer,
    x: Integer,
    y: Integer,
    scale: Scale,
    params: StyleParamsDep,
) -> Response:
    return await _tile(request, service, tms, z, x, y, "png", scaled(request, params, scale))


@router.get(
    "/tiles/{tms}/{z}/{x}/{y}.{fmt}",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="Tile of a tile matrix set, as png, webp, npy or tif (float32 GeoTIFF of the values)",
)
async def tms_tile(
    request: Request,
    service: ServiceDep,
    tms: str,
    z: Integer,
    x: Integer,
    y: Integer,
    fmt: Format,
    params: TileParamsDep,
) -> Response:
    return await _tile(request, service, tms, z, x, y, fmt, params)


@router.get(
    "/tiles/{tms}/{z}/{x}/{y}",
    response_class=Response,
    responses=TILE_RESPONSES,
    summary="Tile of a tile matrix set (PNG)",
)
async def tms_tile_png(
    request: Request,
    service: ServiceDep,
    tms: str,
    z: Integer,
    x: Integer,
    y: Integer,
    params: TileParamsDep,
) -> Response:
    return await _tile(request, service, tms, z, x, y, "png", params)

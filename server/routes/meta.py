"""Describing the service: TileJSON, WMTS capabilities, colormap legends, health, readiness
and Prometheus metrics."""
from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from server import metrics, wmts
from server.engine import CELLS_PER_TILE_LOG2
from server.http import BINARY, TEXT, errors
from server.params import TMS_IDS, TileParams, echo, tile_request
from server.render import colormap_names, legend
from server.routes.deps import ServiceDep, SettingsDep

router = APIRouter(tags=["metadata"])
WMTS_RESPONSES = {200: {"content": {"application/xml": TEXT}}, **errors(404, 422, 503)}


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _tilejson(request: Request, service: ServiceDep, settings: SettingsDep, tms: str,
              params: TileParams, template: str) -> JSONResponse:
    tile, _ = tile_request(service, tms, 0, 0, 0, "png", params)  # validates every parameter
    query = echo(params)
    store = service.store
    west, south, east, north = store.bounds
    minzoom, maxzoom = max(0, store.minlevel - CELLS_PER_TILE_LOG2), store.maxlevel
    return JSONResponse({
        "tilejson": "3.0.0",
        "name": f"soundscape {params.layer}" + (f": {params.q}" if params.q else ""),
        "version": "1.0.0",
        "scheme": "xyz",
        "tiles": [f"{_base(request)}{template}?{urlencode(query)}"],
        "minzoom": minzoom, "maxzoom": maxzoom,
        "bounds": [west, south, east, north],
        "center": [(west + east) / 2, (south + north) / 2, min(maxzoom, minzoom + 2)],
        "attribution": store.attribution,  # the imagery's credit as precompute recorded it
        "legend": f"{_base(request)}/colormaps/{tile.colormap}",
        "rescale": list(tile.rescale),  # the values at the two ends of the legend
    }, headers={"Cache-Control": settings.cache_control})


@router.get("/tilejson.json", responses=errors(404, 422, 503),
            summary="TileJSON 3.0.0 of the XYZ tiles (echoes the query)")
def tilejson(request: Request, service: ServiceDep, settings: SettingsDep,
             params: Annotated[TileParams, Depends()]) -> JSONResponse:
    return _tilejson(request, service, settings, "WebMercatorQuad", params, "/tiles/{z}/{x}/{y}.png")


@router.get("/{tms}/tilejson.json", responses=errors(404, 422, 503),
            summary="TileJSON 3.0.0 of a tile matrix set's tiles")
def tms_tilejson(tms: str, request: Request, service: ServiceDep, settings: SettingsDep,
                 params: Annotated[TileParams, Depends()]) -> JSONResponse:
    return _tilejson(request, service, settings, tms, params, f"/tiles/{tms}/{{z}}/{{x}}/{{y}}.png")


def _wmts(request: Request, service: ServiceDep, settings: SettingsDep, params: TileParams) -> Response:
    has_query = params.q is not None or params.query is not None
    if has_query:
        tile_request(service, "WebMercatorQuad", 0, 0, 0, "png", params)
    layers = []
    for layer in ("heatmap", "uncertainty") if has_query else ("uncertainty",):
        query = echo(params, layer=layer)
        if layer == "uncertainty":
            query = {k: v for k, v in query.items() if k not in ("q", "query", "rescale", "colormap_name")}
        template = (f"{_base(request)}/tiles/WebMercatorQuad/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png?"
                    f"{urlencode(query)}")
        title = f"soundscape {layer}" + (f": {params.q}" if params.q and layer == "heatmap" else "")
        layers.append((layer, title, template))
    body = wmts.capabilities(str(request.url), layers, service.store.bounds, service.store.maxlevel)
    return Response(body, media_type="application/xml", headers={"Cache-Control": settings.cache_control})


@router.get("/WMTSCapabilities.xml", response_class=Response, responses=WMTS_RESPONSES,
            summary="OGC WMTS 1.0.0 capabilities: heatmap (when q or query is given) and uncertainty")
def wmts_capabilities(request: Request, service: ServiceDep, settings: SettingsDep,
                      params: Annotated[TileParams, Depends()]) -> Response:
    return _wmts(request, service, settings, params)


@router.get("/{tms}/WMTSCapabilities.xml", response_class=Response, responses=WMTS_RESPONSES,
            summary="WMTS capabilities of a TMS")
def tms_wmts_capabilities(tms: str, request: Request, service: ServiceDep, settings: SettingsDep,
                          params: Annotated[TileParams, Depends()]) -> Response:
    if tms not in TMS_IDS:
        raise HTTPException(404, f"unknown tile matrix set {tms!r}; available: {', '.join(TMS_IDS)}")
    return _wmts(request, service, settings, params)


@router.get("/colormaps", summary="Names of the colormaps")
def colormaps(settings: SettingsDep) -> JSONResponse:
    return JSONResponse({"colormaps": colormap_names()}, headers={"Cache-Control": settings.cache_control})


@router.get("/colormaps/{name}", response_class=Response,
            responses={200: {"content": {"image/png": BINARY}}, **errors(404, 422, notes={404: "Unknown colormap."})},
            summary="Legend: the colormap as a PNG ramp (low values left, or bottom)")
def colormap_legend(name: str, settings: SettingsDep,
                    width: Annotated[int, Query(ge=1, le=2048)] = 256,
                    height: Annotated[int, Query(ge=1, le=2048)] = 16,
                    orientation: Literal["horizontal", "vertical"] = "horizontal") -> Response:
    if name not in colormap_names():
        raise HTTPException(404, f"unknown colormap {name!r}; GET /colormaps lists them")
    return Response(legend(name, width, height, orientation == "vertical"), media_type="image/png",
                    headers={"Cache-Control": settings.cache_control})


@router.get("/healthz", summary="Liveness")
async def healthz(service: ServiceDep) -> JSONResponse:
    return JSONResponse({"status": "ok", "bundle": service.bundle.id, "store": service.store.id,
                         "cache": service.tiles.name}, headers={"Cache-Control": "no-store"})


@router.get("/readyz", summary="Readiness: model loaded; reports Redis (down = degraded, still serving)")
async def readyz(service: ServiceDep) -> JSONResponse:
    redis = "not configured"
    if service.redis is not None:
        redis = "ok" if await service.redis.ping() else "down"
    return JSONResponse({"status": "degraded" if redis == "down" else "ready", "redis": redis,
                         "bundle": service.bundle.id, "store": service.store.id},
                        headers={"Cache-Control": "no-store"})


@router.get("/metrics", response_class=Response, responses={200: {"content": {metrics.CONTENT_TYPE: TEXT}}},
            summary="Prometheus metrics of this worker")
def prometheus() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

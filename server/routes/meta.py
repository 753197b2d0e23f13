"""Describing the service: TileJSON, WMTS capabilities, OGC API - Tiles tilesets and tile matrix
sets, colormap legends, health, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlencode

import morecantile
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from server import metrics, wmts
from server.engine import LAYERS, QUERY_LAYERS
from server.http import BINARY, TEXT, conditional, errors
from server.params import (
    DEFAULT_LAYER,
    DIGITS,
    HOURS,
    MONTHS,
    TMS_IDS,
    CapabilitiesParams,
    CapabilitiesParamsDep,
    DocumentParams,
    DocumentParamsDep,
    check_tms,
    echo,
)
from server.render import FORMATS, VALUE_FORMATS, colormap_names, legend
from server.routes.deps import ServiceDep
from server.service import SoundscapeService, TileRequest
from server.urls import base_url, tile_template

router = APIRouter(tags=["metadata"])
WMTS_RESPONSES = {200: {"content": {"application/xml": TEXT}}, **errors(404, 422, 503)}


UNITS = {
    "heatmap": "match probability (0 to 1): the model's calibrated probability that the sound is heard in the cell",
    "contrast": "log-odds (natural log) that the sound is heard in the cell minus half the mean log-odds of 24 "
    "everyday sounds there: higher where this sound is heard more than elsewhere, beyond what makes any sound "
    "likely in the cell",
    "uncertainty": "S, the sum of the cell embedding's variances sigma^2, unitless (the embedding's means have "
    "unit length; higher: the model is less sure what the place sounds like)",
}


async def layer_legend(service: SoundscapeService, tile: TileRequest, text: str | None) -> dict:
    """What a layer's colours mean: its scale, units, how the scale was chosen and which ends
    are clipped; for tiles of values (npy, tif), what the values are. TileJSON, WMTS and the
    viewer all describe a layer with this."""
    if tile.fmt in VALUE_FORMATS:
        return {
            "description": f"float32 values, NaN where no cell is (no colours): {UNITS[tile.layer]}",
            "scale": {"units": UNITS[tile.layer]},
        }
    scale = await service.tile_scale(tile, text)
    level, sampled = service.engine.scale_sample
    if tile.rescale is not None:
        method = "rescale parameter"
    elif tile.layer in QUERY_LAYERS:
        value = "match probability" if tile.layer == "heatmap" else "contrast"
        method = (
            f"2nd to 98th percentile of this query's {value} over {len(sampled)} cells spread "
            f"over level {level.level} under this hour, month and source; one scale for every tile and zoom"
        )
    else:
        method = "the store's range of S (its 1st to 99th percentile), the same for every hour, month and source"
    ends = [f"values below {scale.lo:g} are drawn in the lowest colour"] if scale.clipped_low else []
    ends += [f"values above {scale.hi:g} in the highest colour"] if scale.clipped_high else []
    description = (
        f"{tile.colormap} colours from {scale.lo:g} (left of the legend) to {scale.hi:g} (right): "
        f"{UNITS[tile.layer]}. Scale: {method}." + (f" Clipped: {'; '.join(ends)}." if ends else "")
    )
    return {
        "rescale": [scale.lo, scale.hi],
        "colormap": tile.colormap,
        "description": description,
        "scale": {
            "min": scale.lo,
            "max": scale.hi,
            "units": UNITS[tile.layer],
            "method": method,
            "clipped_low": scale.clipped_low,
            "clipped_high": scale.clipped_high,
        },
    }


def layer_title(params: DocumentParams) -> str:
    """A TileJSON's name and a tileset's title: the layer and its text query."""
    return f"soundscape {params.layer}" + (f": {params.q}" if params.q else "")


async def _tilejson(request: Request, service: ServiceDep, tms: str | None, params: DocumentParams) -> Response:
    """TileJSON of the XYZ tiles (`tms` None) or of a tile matrix set's tiles: a 422 naming every
    bad parameter before a 404 for an unknown tile matrix set, as tile_request answers."""
    [(tile, text)] = params.validated(service)
    check_tms(tms or TMS_IDS[0])
    base = base_url(request)
    store = service.store
    west, south, east, north = store.bounds
    # Inside the cells: the middle of `bounds` lies on the far side of the planet for imagery
    # across the antimeridian, whose bounds span every longitude (TileJSON's bounds never wrap).
    lon, lat = store.footprint.centre
    minzoom, maxzoom = params.zooms(service)
    xyz_tms = None if params.fmt == "png" else TMS_IDS[0]
    legend = await layer_legend(service, tile, text)
    document = JSONResponse(
        {
            "tilejson": "3.0.0",
            "name": layer_title(params),
            "version": "1.0.0",
            "scheme": "xyz",
            # The XYZ route serves PNG alone: another format is on the tile matrix set's route.
            "tiles": [tile_template(base, urlencode(echo(params)), tms or xyz_tms, fmt=params.fmt)],
            "minzoom": minzoom,
            "maxzoom": maxzoom,
            "bounds": [west, south, east, north],
            "center": [lon, lat, min(maxzoom, minzoom + 2)],
            # Not TileJSON (whose clients ignore unknown keys): where the cells lie, west > east
            # across the antimeridian as RFC 7946 writes such a box; the viewer opens on it there.
            "footprint": list(store.footprint),
            "attribution": store.attribution,  # the imagery's credit as precompute recorded it
            "tilesize": tile.size,
            **({"legend": f"{base}/colormaps/{tile.colormap}"} if "colormap" in legend else {}),
            **legend,
        },
    )
    return conditional(request, document, "document")


@router.get(
    "/tilejson.json",
    responses=errors(404, 422, 503),
    summary="TileJSON 3.0.0 of the XYZ tiles (echoes the query; describes the colours)",
)
async def tilejson(request: Request, service: ServiceDep, params: DocumentParamsDep) -> Response:
    return await _tilejson(request, service, None, params)


@router.get(
    "/{tms}/tilejson.json", responses=errors(404, 422, 503), summary="TileJSON 3.0.0 of a tile matrix set's tiles"
)
async def tms_tilejson(tms: str, request: Request, service: ServiceDep, params: DocumentParamsDep) -> Response:
    return await _tilejson(request, service, tms, params)


async def _wmts(request: Request, service: ServiceDep, params: CapabilitiesParams, tms: str = TMS_IDS[0]) -> Response:
    """The capabilities of `tms`'s tiles: a 422 naming every bad parameter before a 404 for an
    unknown tile matrix set, as tile_request answers."""
    layers_asked = params.validated(service)
    check_tms(tms)
    base = base_url(request)
    layers = []
    for layer, (tile, text) in zip(params.layers(), layers_asked, strict=True):
        query = echo(params, layer=layer)
        if layer == "uncertainty":
            query = {k: v for k, v in query.items() if k not in ("q", "query", "rescale", "colormap_name")}
        cell = ("{TileMatrix}", "{TileCol}", "{TileRow}")
        template = tile_template(base, urlencode(query), TMS_IDS[0], cell, params.fmt)
        title = f"soundscape {layer}" + (f": {params.q}" if params.q and layer in QUERY_LAYERS else "")
        legend = await layer_legend(service, tile, text)
        legend_url = f"{base}/colormaps/{tile.colormap}" if "colormap" in legend else None
        layers.append(wmts.Layer(layer, title, template, FORMATS[params.fmt], legend["description"], legend_url))
    own_url = f"{base}{request.url.path}?{request.url.query}"
    body = wmts.capabilities(own_url, layers, service.store.bounds, params.zooms(service), params.tilesize)
    return conditional(request, Response(body, media_type="application/xml"), "document")


@router.get(
    "/WMTSCapabilities.xml",
    response_class=Response,
    responses=WMTS_RESPONSES,
    summary="OGC WMTS 1.0.0 capabilities: heatmap (when q or query is given) and uncertainty",
)
async def wmts_capabilities(request: Request, service: ServiceDep, params: CapabilitiesParamsDep) -> Response:
    return await _wmts(request, service, params)


@router.get(
    "/{tms}/WMTSCapabilities.xml",
    response_class=Response,
    responses=WMTS_RESPONSES,
    summary="WMTS capabilities of a TMS",
)
async def tms_wmts_capabilities(
    tms: str, request: Request, service: ServiceDep, params: CapabilitiesParamsDep
) -> Response:
    return await _wmts(request, service, params, tms)


UNKNOWN_SOURCE = (
    "source left out: where anyone would hear it, a condition the model learned by training with metadata "
    "dropout (for the demo model: its sources together, in their proportions at each place)"
)


def metadata_values(sources: list[str], descriptions: dict[str, str]) -> dict:
    """The values each metadata and layer parameter takes, and what each means (a source as its
    bundle's manifest describes it, else null): what a client (the viewer's controls) offers a user."""
    return {
        "source": {
            "unknown": UNKNOWN_SOURCE,
            "values": [{"value": name, "description": descriptions.get(name)} for name in sources],
        },
        "hour": {
            "min": HOURS[0],
            "max": HOURS[1],
            "description": "the local hour of the day the sound is heard at",
            "unknown": "hour left out: any hour",
        },
        "month": {
            "min": MONTHS[0],
            "max": MONTHS[1],
            "description": "the month the sound is heard in (1 = January)",
            "unknown": "month left out: any month",
        },
        "layer": {
            "default": DEFAULT_LAYER,
            "values": [
                {"value": layer, "description": UNITS[layer], "needs_query": layer in QUERY_LAYERS} for layer in LAYERS
            ],
        },
    }


@router.get(
    "/metadata",
    summary="The values of source, hour, month and layer this server takes, and what each means",
)
def metadata(request: Request, service: ServiceDep) -> Response:
    return conditional(
        request,
        JSONResponse(metadata_values(service.bundle.sources.names, service.bundle.source_descriptions)),
        "document",
    )


# OGC API - Tiles: the tile matrix sets and tilesets are listed and described as TiTiler's
# clients expect. A tileset's tile template keeps TiTiler's {z}/{x}/{y} order under OGC's names
# ({tileMatrix}/{tileCol}/{tileRow}), so the core class, whose paths end in {tileRow}/{tileCol},
# is not claimed, nor the tileset classes that rest on it.
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
]
TMS_REL = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
OGC_CELL = ("{tileMatrix}", "{tileCol}", "{tileRow}")  # the tile URL's {z}/{x}/{y}, as OGC names them


@router.get("/conformance", summary="OGC API conformance classes this server implements")
def conformance(request: Request) -> Response:
    return conditional(request, JSONResponse({"conformsTo": CONFORMANCE}), "document")


@router.get("/tileMatrixSets", summary="The tile matrix sets tiles are served in (OGC API - Tiles)")
def tile_matrix_sets(request: Request) -> Response:
    base = base_url(request)
    sets = [
        {
            "id": tms,
            "title": morecantile.tms.get(tms).title,
            "links": [{"href": f"{base}/tileMatrixSets/{tms}", "rel": TMS_REL, "type": "application/json"}],
        }
        for tms in TMS_IDS
    ]
    return conditional(request, JSONResponse({"tileMatrixSets": sets}), "document")


@router.get(
    "/tileMatrixSets/{tms}",
    summary="A tile matrix set (OGC TMS 2.0 JSON)",
    responses={404: {"description": "Unknown tile matrix set."}},
)
def tile_matrix_set(tms: str, request: Request) -> Response:
    check_tms(tms)
    return conditional(
        request, JSONResponse(morecantile.tms.get(tms).model_dump(mode="json", exclude_none=True)), "document"
    )


def tile_matrix_limits(tms: str, bounds: tuple[float, float, float, float], zooms: tuple[int, int]) -> list[dict]:
    """The tiles over `bounds` (degrees) at each zoom of `zooms`: OGC's tileMatrixSetLimits, so a
    client asks for no tile outside the cells nor any zoom outside those offered."""
    matrix_set = morecantile.tms.get(tms)
    west, south, east, north = bounds
    limits = []
    for z in range(zooms[0], zooms[1] + 1):
        first, last = matrix_set.tile(west, north, z, truncate=True), matrix_set.tile(east, south, z, truncate=True)
        limits.append(
            {
                "tileMatrix": str(z),
                "minTileRow": first.y,
                "maxTileRow": last.y,
                "minTileCol": first.x,
                "maxTileCol": last.x,
            }
        )
    return limits


def tileset_links(base: str, tms: str, query: str) -> list[dict]:
    """A tileset's own link (with the query it was asked with) and its tile matrix set's."""
    return [
        {
            "rel": "self",
            "href": f"{base}/tiles/{tms}" + (f"?{query}" if query else ""),
            "type": "application/json",
            "title": f"The tileset in the {tms} tile matrix set",
        },
        {
            "rel": TMS_REL,
            "href": f"{base}/tileMatrixSets/{tms}",
            "type": "application/json",
            "title": f"Definition of the {tms} tile matrix set",
        },
    ]


def tileset_summary(base: str, tms: str, title: str, query: str) -> dict:
    """What a tileset is and where it is described: an entry of the tileset list and the head of
    the tileset itself."""
    matrix_set = morecantile.tms.get(tms)
    return {
        "title": title,
        "dataType": "map",
        "crs": matrix_set.crs.srs,
        "tileMatrixSetURI": matrix_set.uri,
        "links": tileset_links(base, tms, query),
    }


@router.get(
    "/tiles",
    responses=errors(422, 503),
    summary="OGC API - Tiles: the tilesets of this query, one per tile matrix set (echoes the query)",
)
async def tilesets(request: Request, service: ServiceDep, params: DocumentParamsDep) -> Response:
    """The tileset of each tile matrix set: bad parameters and an unknown query id answer as the
    tilesets themselves would (a text is not embedded: the list shows no colours)."""
    params.validated(service)
    if params.query is not None and params.layer in QUERY_LAYERS:
        await service.resolve(params.query)
    base, query = base_url(request), request.url.query
    sets = [tileset_summary(base, tms, layer_title(params), query) for tms in TMS_IDS]
    return conditional(request, JSONResponse({"tilesets": sets}), "document")


@router.get(
    "/tiles/{tms}",
    responses=errors(404, 422, 503, notes={404: "Unknown tile matrix set."}),
    summary="OGC API - Tiles: a tileset of this query (tile template, limits per zoom; describes the colours)",
)
async def tileset(tms: str, request: Request, service: ServiceDep, params: DocumentParamsDep) -> Response:
    """The tileset: a 422 naming every bad parameter before a 404 for an unknown tile matrix set,
    as tile_request answers. Its item link is the tile template of the `tile_format` asked (png
    by default), the query echoed into it as into TileJSON's."""
    [(tile, text)] = params.validated(service)
    check_tms(tms)
    base = base_url(request)
    west, south, east, north = service.store.bounds
    legend = await layer_legend(service, tile, text)
    item = {
        "rel": "item",
        "href": tile_template(base, urlencode(echo(params)), tms, OGC_CELL, params.fmt),
        "type": FORMATS[params.fmt],
        "templated": True,
        "title": f"{params.fmt} tiles",
    }
    document = tileset_summary(base, tms, layer_title(params), request.url.query)
    document["links"].append(item)
    document.update(
        {
            "description": legend["description"],
            "attribution": service.store.attribution,
            "boundingBox": {"lowerLeft": [west, south], "upperRight": [east, north], "crs": CRS84},
            "tileMatrixSetLimits": tile_matrix_limits(tms, service.store.bounds, params.zooms(service)),
        }
    )
    return conditional(request, JSONResponse(document), "document")


@router.get("/colormaps", summary="Names of the colormaps")
def colormaps(request: Request) -> Response:
    return conditional(request, JSONResponse({"colormaps": colormap_names()}), "document")


@router.get(
    "/colormaps/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": BINARY}}, **errors(404, 422, notes={404: "Unknown colormap."})},
    summary="Legend: the colormap as a PNG ramp (low values left, or bottom)",
)
def colormap_legend(
    name: str,
    request: Request,
    width: Annotated[int, Query(ge=1, le=2048), DIGITS] = 256,
    height: Annotated[int, Query(ge=1, le=2048), DIGITS] = 16,
    orientation: Literal["horizontal", "vertical"] = "horizontal",
) -> Response:
    if name not in colormap_names():
        raise HTTPException(404, f"unknown colormap {name!r}; GET /colormaps lists them")
    return conditional(
        request, Response(legend(name, width, height, orientation == "vertical"), media_type="image/png"), "tile"
    )


@router.get("/healthz", summary="Liveness")
async def healthz(request: Request, service: ServiceDep) -> Response:
    return conditional(
        request,
        JSONResponse(
            {"status": "ok", "bundle": service.bundle.id, "store": service.store.id, "cache": service.tiles.name}
        ),
        "live",
    )


@router.get("/readyz", summary="Readiness: model loaded; reports Redis (down = degraded, still serving)")
async def readyz(request: Request, service: ServiceDep) -> Response:
    redis = "not configured"
    if service.redis is not None:
        redis = "ok" if await service.redis.ping() else "down"
    registry = service.registry
    queries = (
        "durable"
        if registry.durable
        else f"at risk: redis maxmemory-policy {registry.eviction_policy} may evict them (use volatile-lru)"
    )
    answer = {
        "status": "degraded" if redis == "down" else "ready",
        "redis": redis,
        "queries": queries,
        "bundle": service.bundle.id,
        "precision": service.bundle.precision,
        "store": service.store.id,
    }
    return conditional(request, JSONResponse(answer), "live")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE: TEXT}}},
    summary="Prometheus metrics of this worker",
)
def prometheus(request: Request) -> Response:
    body, content_type = metrics.exposition()
    return conditional(request, Response(body, media_type=content_type), "live")

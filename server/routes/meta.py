"""Describing the service: TileJSON, WMTS capabilities, OGC API - Tiles tilesets and tile matrix
sets, OGC API collections and their maps (OGC API - Maps), colormap legends, health, readiness and
Prometheus metrics."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated, Literal
from urllib.parse import urlencode

import morecantile
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from server import maps, metrics, wmts
from server.engine import CELLS_PER_TILE_LOG2, GRID, LAYERS, QUERY_LAYERS, UNITS
from server.http import (
    BINARY,
    TEXT,
    Refusals,
    conditional,
    errors,
    held,
    if_none_match_tags,
)
from server.params import (
    DEFAULT_LAYER,
    DIGITS,
    HOURS,
    MATRICES,
    MATRIX_SETS,
    MONTHS,
    TILE_SIZES,
    TMS_IDS,
    CapabilitiesParams,
    CapabilitiesParamsDep,
    CollectionParamsDep,
    DocumentParams,
    DocumentParamsDep,
    TileSizeParam,
    check_placed,
    check_tms,
    echo,
    placed,
    refuse_tile_size,
    refusing,
    request_refusals,
)
from server.queries import shown
from server.render import FORMATS, VALUE_FORMATS, colormap_names, grid, legend, values_description
from server.routes.deps import ServiceDep
from server.service import SoundscapeService, TileRequest
from server.urls import base_url, tile_template
from store.reader import Store

router = APIRouter(tags=["metadata"])
WMTS_RESPONSES = {200: {"content": {"application/xml": TEXT}}, **errors(404, 422, 503)}


async def layer_legend(service: SoundscapeService, tile: TileRequest, text: str | None) -> dict:
    """What a layer's colours mean: its scale, units, how the scale was chosen and which ends
    are clipped; for tiles of values (npy, tif), what the values are. TileJSON, WMTS and the
    viewer all describe a layer with this."""
    if tile.fmt in VALUE_FORMATS:
        return {
            "description": values_description(tile.layer),
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
            f"over level {level.level} under this "
            + (f"source, each at its clock at {tile.moment.isoformat()}" if tile.moment else "hour, month and source")
            + "; one scale for every tile and zoom"
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
    check_placed(tms or TMS_IDS[0], params.fmt)  # its template would lead to 404s alone
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


def refuse_kvp_operation(request: Request, refusals: Refusals) -> None:
    """A KVP operation other than GetCapabilities (`REQUEST=GetTile`, the name in any case, as OWS
    takes it) refused: this WMTS is RESTful only, and answering the capabilities in its place sent
    a client asking for a tile an XML document with 200."""
    for name, value in request.query_params.multi_items():
        if name.casefold() == "request" and value.casefold() != "getcapabilities":
            refusals.refuse(
                name,
                f"{name[:40]}={shown(value)} is not served: this WMTS is RESTful only, so ask each tile by its "
                f"layer's ResourceURL template ({TMS_IDS[0]}/{{TileMatrix}}/{{TileCol}}/{{TileRow}} under /tiles/)",
            )


TIME = "Time"  # an instant's WMTS dimension, as OGC names it: its value goes into the tiles' `datetime=`


def time_dimension(instant: datetime, one_scale: bool) -> wmts.Dimension:
    """The instant asked as its layers' Time dimension: the default, beside each whole hour of its
    day (UTC), so a GIS user picks another hour of that day (QGIS: "Select dimensions") from the
    same layers, each place at its own clock then. `one_scale`: every instant's tiles share the
    layer's colour scale (a rescale, or the uncertainty's range), else each has its own."""
    day = instant.replace(hour=0, minute=0, second=0)
    values = sorted({instant, *(day + timedelta(hours=hour) for hour in range(24))})
    scale = (
        "every instant on the layer's one colour scale"
        if one_scale
        else "each instant on a colour scale of its own (the layer's abstract gives the default's; a rescale= "
        "in the capabilities URL puts every instant on one, so they compare)"
    )
    abstract = f"an instant (UTC): each place at the hour and month its clocks show then; {scale}"
    return wmts.Dimension(TIME, "time", abstract, "ISO8601", _utc(instant), tuple(map(_utc, values)))


def _utc(instant: datetime) -> str:
    """An instant in UTC as RFC 3339 writes it most often: 2024-07-01T10:30:00Z."""
    return instant.isoformat().replace("+00:00", "Z")


async def _wmts(request: Request, service: ServiceDep, params: CapabilitiesParams, tms: str = TMS_IDS[0]) -> Response:
    """The capabilities of `tms`'s tiles: a 422 naming every bad parameter (a KVP operation but
    GetCapabilities too) before a 404 for an unknown tile matrix set, as tile_request answers."""
    layers_asked = params.validated(service, request_refusals(request))
    check_tms(tms)
    if tms != GRID:  # server/wmts.py writes WebMercatorQuad's matrices
        raise HTTPException(
            404, f"WMTS capabilities are written for {GRID}; {tms}'s tiles are listed at /tiles/{tms} (OGC API - Tiles)"
        )
    base = base_url(request)
    layers = []
    for layer, (tile, text) in zip(params.layers(), layers_asked, strict=True):
        query = echo(params, layer=layer)
        if layer == "uncertainty":
            query = {k: v for k, v in query.items() if k not in ("q", "query", "rescale", "colormap_name")}
        dimensions: tuple[wmts.Dimension, ...] = ()
        if tile.moment is not None:  # an instant: the template takes the Time a client picks
            dimensions = (time_dimension(tile.moment, layer == "uncertainty" or tile.rescale is not None),)
            query.pop("datetime")
        encoded = urlencode(query) + (f"&datetime={{{TIME}}}" if dimensions else "")  # query holds `layer`
        cell = ("{TileMatrix}", "{TileCol}", "{TileRow}")
        template = tile_template(base, encoded, TMS_IDS[0], cell, params.fmt)
        title = f"soundscape {layer}" + (f": {params.q}" if params.q and layer in QUERY_LAYERS else "")
        legend = await layer_legend(service, tile, text)
        legend_url = f"{base}/colormaps/{tile.colormap}" if "colormap" in legend else None
        media_type, abstract = FORMATS[params.fmt], legend["description"]
        layers.append(wmts.Layer(layer, title, template, media_type, abstract, legend_url, dimensions))
    own_url = f"{base}{request.url.path}?{request.url.query}"
    tiles_url = f"{base}/tiles/{TMS_IDS[0]}/"  # the prefix of every template: RESTful GetTile
    zooms = params.zooms(service)
    body = wmts.capabilities(own_url, tiles_url, layers, service.store.bounds, zooms, params.tilesize)
    return conditional(request, Response(body, media_type="application/xml"), "document")


@router.get(
    "/WMTSCapabilities.xml",
    response_class=Response,
    responses=WMTS_RESPONSES,
    summary="OGC WMTS 1.0.0 capabilities: heatmap (when q or query is given) and uncertainty",
)
@refusing(refuse_kvp_operation)
async def wmts_capabilities(request: Request, service: ServiceDep, params: CapabilitiesParamsDep) -> Response:
    return await _wmts(request, service, params)


@router.get(
    "/{tms}/WMTSCapabilities.xml",
    response_class=Response,
    responses=WMTS_RESPONSES,
    summary="WMTS capabilities of a TMS",
)
@refusing(refuse_kvp_operation)
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
# ({tileMatrix}/{tileCol}/{tileRow}; OGC prescribes no order), but the core class is not claimed,
# nor the tileset classes that rest on it: it asks a 404 or 400 for a tile outside a tileset's
# tileMatrixSetLimits, where a tile past the store's maxzoom is drawn as any other (web maps
# zoom in further than the limits' last zoom). Nor are OGC API - Common's classes,
# though the landing page (`/?f=json`) and the collections are served as its JSON: its core
# class asks a 400 for a parameter the API does not define or a value it refuses, where this
# server ignores an unknown name (a cache buster) and answers 422; and `/` answers a browser
# the viewer, not a landing page.
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
]
OGC_REL = "http://www.opengis.net/def/rel/ogc/1.0/"
TMS_REL = OGC_REL + "tiling-scheme"
TILESETS_REL = OGC_REL + "tilesets-map"  # what GDAL's OGCAPI driver follows from a collection
MAP_REL = OGC_REL + "map"  # GDAL's OGCAPI driver (-oo API=MAP) takes it of type image/png or image/jpeg
CRS84 = maps.CRS84
OGC_CELL = ("{tileMatrix}", "{tileCol}", "{tileRow}")  # the tile URL's {z}/{x}/{y}, as OGC names them


def json_link(rel: str, href: str, title: str) -> dict:
    """A link to a JSON document: OGC clients (GDAL) pick a link by its `rel` and `type`."""
    return {"rel": rel, "href": href, "type": "application/json", "title": title}


def landing_page(request: Request) -> JSONResponse:
    """The OGC API landing page (`/` asked for JSON): where an OGC client such as GDAL's OGCAPI
    driver finds the collections, the tilesets and the API's description."""
    base = base_url(request)
    links = [
        json_link("self", f"{base}/?f=json", "This document"),
        {"rel": "alternate", "href": f"{base}/", "type": "text/html", "title": "The map viewer"},
        json_link("service-desc", f"{base}{request.app.openapi_url}", "The API definition (OpenAPI)"),
        {"rel": "service-doc", "href": f"{base}/docs", "type": "text/html", "title": "The API documentation"},
        json_link(OGC_REL + "conformance", f"{base}/conformance", "The OGC API conformance classes"),
        json_link("data", f"{base}/collections", "The map layers, one collection each"),
        json_link(TILESETS_REL, f"{base}/tiles?layer=uncertainty", "The tilesets of a layer (q=... for a query's)"),
        json_link(OGC_REL + "tiling-schemes", f"{base}/tileMatrixSets", "The tile matrix sets"),
    ]
    return JSONResponse({"title": request.app.title, "description": request.app.description, "links": links})


@router.get("/conformance", summary="OGC API conformance classes this server implements")
def conformance(request: Request) -> Response:
    return conditional(request, JSONResponse({"conformsTo": CONFORMANCE}), "document")


@router.get("/tileMatrixSets", summary="The tile matrix sets tiles are served in (OGC API - Tiles)")
def tile_matrix_sets(request: Request) -> Response:
    """Each tile matrix set with its `self` link to its definition, as OGC API - Tiles'
    tileMatrixSet-item asks, and the same link of rel tiling-scheme, which clients followed before."""
    base = base_url(request)
    sets = []
    for tms in TMS_IDS:
        definition, title = f"{base}/tileMatrixSets/{tms}", MATRIX_SETS[tms].title
        links = [json_link(rel, definition, f"Definition of {tms}") for rel in ("self", TMS_REL)]
        sets.append({"id": tms, "title": title, "links": links})
    return conditional(request, JSONResponse({"tileMatrixSets": sets}), "document")


@router.get(
    "/tileMatrixSets/{tms}",
    summary="A tile matrix set (OGC TMS 2.0 JSON)",
    responses={404: {"description": "Unknown tile matrix set."}},
)
def tile_matrix_set(tms: str, request: Request, tilesize: TileSizeParam = TILE_SIZES[0]) -> Response:
    """`tilesize=512` gives the matrices of the 512-pixel tiles (`tilesize=512` on the tile routes),
    which a tileset of such tiles links: a 422 for another size before a 404 for an unknown set."""
    refusals = Refusals()
    refuse_tile_size(tilesize, refusals)
    refusals.raise_any()
    check_tms(tms)
    return conditional(request, JSONResponse(tile_matrix_set_document(tms, tilesize)), "document")


@cache
def tile_matrix_set_document(tms: str, size: int = TILE_SIZES[0]) -> dict:
    """`tms` as OGC TMS 2.0 JSON, with TMS 1.0's names of the same values beside (type, identifier
    and supportedCRS; a matrix's identifier and topLeftCorner): GDAL 3.6 reads a tiling scheme by
    those alone (its OGCAPI driver failed "Invalid tiling matrix set name"), and TMS 2.0's schema
    admits members it does not define. Every matrix served has its origin top left, TMS 1.0's
    only corner. At another tile `size` than the registered set's 256 px, each matrix has as many
    tiles of `size` pixels, each pixel smaller (as WMTS declares them): a set of its own, without
    the registered set's `uri` and well-known scale set."""
    document = MATRIX_SETS[tms].model_dump(mode="json", exclude_none=True)
    document.update(type="TileMatrixSetType", identifier=document["id"], supportedCRS=document["crs"])
    shrink = TILE_SIZES[0] / size
    if size != TILE_SIZES[0]:
        document.pop("uri", None)
        document.pop("wellKnownScaleSet", None)
        document["title"] += f", {size}-pixel tiles"
    for matrix in document["tileMatrices"]:
        matrix.update(type="TileMatrixType", identifier=matrix["id"], topLeftCorner=matrix["pointOfOrigin"])
        matrix.update(tileWidth=size, tileHeight=size)
        matrix.update(cellSize=matrix["cellSize"] * shrink, scaleDenominator=matrix["scaleDenominator"] * shrink)
    return document


def tile_matrix_set_url(base: str, tms: str, size: int) -> str:
    """Where `tms`'s definition at tiles of `size` pixels is (`tilesize=` only where not 256)."""
    return with_query(f"{base}/tileMatrixSets/{tms}", "" if size == TILE_SIZES[0] else f"tilesize={size}")


def tile_matrix_limits(
    tms: str, zooms: tuple[int, int], bounds: tuple[float, float, float, float] | None
) -> list[dict]:
    """The tiles over `bounds` (degrees), or every tile of the matrix (None), at each zoom of
    `zooms`: OGC's tileMatrixSetLimits, so a client asks for no tile outside the cells nor any
    zoom outside those offered."""
    matrix_set = MATRIX_SETS[tms]
    limits = []
    for z in range(zooms[0], min(zooms[1], MATRICES[tms][2]) + 1):
        if bounds is None:
            matrix = matrix_set.matrix(z)
            first, last = (
                morecantile.Tile(0, 0, z),
                morecantile.Tile(matrix.matrixWidth - 1, matrix.matrixHeight - 1, z),
            )
        else:
            west, south, east, north = bounds
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


def with_query(url: str, query: str) -> str:
    """`url` with the query string a document was asked with: the links of OGC documents carry
    it as it came, so a client that appends its own query to each URL (GDAL) finds it there."""
    return url + (f"?{query}" if query else "")


def tileset_links(base: str, tiles: str, tms: str, query: str, size: int) -> list[dict]:
    """A tileset's own link (with the query it was asked with) and its tile matrix set's, at its
    tiles' `size`; `tiles` is the path of the tileset list (`/tiles`, or a collection's)."""
    return [
        json_link("self", with_query(f"{base}{tiles}/{tms}", query), f"The tileset in the {tms} tile matrix set"),
        json_link(TMS_REL, tile_matrix_set_url(base, tms, size), f"Definition of the {tms} tile matrix set"),
    ]


def tileset_summary(base: str, tiles: str, tms: str, title: str, query: str, size: int) -> dict:
    """What a tileset is and where it is described: an entry of the tileset list and the head of
    the tileset itself. Its tiles of `size` pixels are the registered set's at 256 px (its URI);
    at 512 they are a set of this server's, named by its definition's URL, which keeps `tms` in
    it: GDAL 3.6 picks a tileset by a tile matrix set's name within that URI (WorldCRS84Quad
    first; `-oo TILEMATRIXSET=`), then reads the matrices its tiling-scheme link gives."""
    matrix_set = MATRIX_SETS[tms]
    return {
        "title": title,
        "dataType": "map",
        "crs": matrix_set.crs.srs,
        "tileMatrixSetURI": matrix_set.uri if size == TILE_SIZES[0] else tile_matrix_set_url(base, tms, size),
        "links": tileset_links(base, tiles, tms, query, size),
    }


async def check_query(service: SoundscapeService, params: DocumentParams) -> None:
    """404 for an unknown query id of a query layer, as its tiles answer: a document that shows
    no colours (a list, a tileset of values) does not look it up otherwise."""
    if params.query is not None and params.layer in QUERY_LAYERS:
        await service.resolve(params.query)


async def layer_tilesets(
    request: Request, service: SoundscapeService, params: DocumentParams, tiles: str, refusals: Refusals | None = None
) -> Response:
    """The tileset of each tile matrix set at `tiles` (`/tiles`, or a collection's) that serves
    the `tile_format` asked (`placed`: values on the grid alone), so that none leads to 404s: bad
    parameters (`refusals` too) and an unknown query id answer as the tilesets themselves would."""
    params.validated(service, refusals)
    await check_query(service, params)
    base, query = base_url(request), request.url.query
    sets = [
        tileset_summary(base, tiles, tms, layer_title(params), query, params.tilesize)
        for tms in TMS_IDS
        if placed(tms, params.fmt)
    ]
    return conditional(request, JSONResponse({"tilesets": sets}), "document")


async def layer_tileset(
    request: Request,
    service: SoundscapeService,
    params: DocumentParams,
    tms: str,
    tiles: str,
    refusals: Refusals | None = None,
    over_cells: bool = True,
) -> Response:
    """The tileset of `params`'s layer in `tms`, listed at `tiles`: a 422 naming every bad
    parameter (`refusals` too) before a 404 for an unknown tile matrix set, as tile_request
    answers. Its item link is the tile template of the `tile_format` asked (png by default), the
    query echoed into it as into TileJSON's; its limits are the tiles over the cells, or every
    tile of each zoom when not `over_cells`."""
    [(tile, text)] = params.validated(service, refusals)
    check_tms(tms)
    check_placed(tms, params.fmt)  # its item template would lead to 404s alone
    await check_query(service, params)
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
    document = tileset_summary(base, tiles, tms, layer_title(params), request.url.query, params.tilesize)
    document["links"].append(item)
    document.update(
        {
            "description": legend["description"],
            "attribution": service.store.attribution,
            "boundingBox": {"lowerLeft": [west, south], "upperRight": [east, north], "crs": CRS84},
            "tileMatrixSetLimits": tile_matrix_limits(
                tms, params.zooms(service), service.store.bounds if over_cells else None
            ),
        }
    )
    return conditional(request, JSONResponse(document), "document")


@router.get(
    "/tiles",
    responses=errors(404, 422, 503, notes={404: "Unknown query id."}),
    summary="OGC API - Tiles: the tilesets of this query, one per tile matrix set (echoes the query)",
)
async def tilesets(request: Request, service: ServiceDep, params: DocumentParamsDep) -> Response:
    """The tileset of each tile matrix set (a text is not embedded: the list shows no colours)."""
    return await layer_tilesets(request, service, params, "/tiles")


@router.get(
    "/tiles/{tms}",
    responses=errors(404, 422, 503, notes={404: "Unknown tile matrix set or query id."}),
    summary="OGC API - Tiles: a tileset of this query (tile template, limits per zoom; describes the colours)",
)
async def tileset(tms: str, request: Request, service: ServiceDep, params: DocumentParamsDep) -> Response:
    return await layer_tileset(request, service, params, tms, "/tiles")


# OGC API - Common's collections: one per map layer, as WMTS lists them (the query layers when
# q or query is given, uncertainty always), each with its tilesets, so that an OGC client
# (GDAL's OGCAPI driver) opens a layer from its collection URL. The query string is that of the
# layer's tiles, but for `layer`: the collection's id names it. The parameters are WMTS's, whose
# layers they list: when FastAPI refuses one, the rest are checked as for those layers, so the
# 422 of a collection asked without a query does not also ask for one (server/params.py).
CollectionId = Annotated[str, Path(alias="collectionId", description="A layer: contrast, heatmap or uncertainty.")]
COLLECTION_RESPONSES = errors(404, 422, 503, notes={404: "Unknown collection, tile matrix set or query id."})


def refuse_layer(request: Request, refusals: Refusals) -> None:
    """A `layer` parameter refused, as the collections are the layers."""
    if "layer" in request.query_params:
        refusals.refuse(
            "layer",
            "layer is not a parameter of the collections: each layer is a collection of its own "
            "(GET /collections lists them, /collections/{layer} is one)",
        )


def layer_params(collection_id: str, params: DocumentParams) -> DocumentParams:
    """The parameters of the layer the collection `collection_id` is (404 for none such)."""
    layer = next((layer for layer in LAYERS if layer == collection_id), None)
    if layer is None:
        raise HTTPException(404, f"unknown collection {shown(collection_id)}; GET /collections lists them")
    return DocumentParams(**{**vars(params), "layer": layer})


def full_resolution_scale(store: Store) -> float:
    """WebMercatorQuad's scale denominator at the zoom whose tiles draw the store's finest cells
    16 px a side (finer tiles interpolate them): the map's full resolution. GDAL's OGC API driver
    reads a collection's `scaleDenominator` as that; without one it takes 1e-8 degrees a pixel."""
    zoom = max(0, store.maxlevel - CELLS_PER_TILE_LOG2)
    return float(grid()[0].matrix(zoom).scaleDenominator)


def collection(base: str, params: DocumentParams, legend: dict, store: Store, query: str) -> dict:
    """A layer as an OGC collection: what it shows (the legend in words), where (the store's
    bounds), at what full resolution, and the links to its tilesets and map, carrying the query
    it was asked with."""
    own = f"{base}/collections/{params.layer}"
    of_map = without_format(query)
    return {
        "id": params.layer,
        "title": layer_title(params),
        "description": legend["description"],
        "extent": {"spatial": {"bbox": [list(store.bounds)], "crs": CRS84}},
        "scaleDenominator": full_resolution_scale(store),
        "links": [
            json_link("self", with_query(own, query), "This collection"),
            json_link(TILESETS_REL, with_query(f"{own}/tiles", query), "The map tilesets of this layer"),
            # PNG, the default format (f=webp asks for WebP): the link carries the query alone, as
            # GDAL appends width, height and bbox to it
            {"rel": MAP_REL, "href": with_query(f"{own}/map", of_map), "type": FORMATS["png"], "title": "The map"},
            {
                "rel": MAP_REL,
                "href": with_query(f"{own}/map", "&".join(filter(None, (of_map, "f=tif")))),
                "type": FORMATS["tif"],
                "title": "The map's values: a float32 GeoTIFF",
            },
        ],
    }


def without_format(query: str) -> str:
    """A document's query string as it came, less its `f` (the format asked of the document, as
    OGC API clients write `f=json`): the map route's `f` names the map's format."""
    return "&".join(part for part in query.split("&") if part.partition("=")[0] != "f")


@router.get(
    "/collections",
    responses=COLLECTION_RESPONSES,
    summary="OGC API collections: one per map layer (contrast and heatmap with q or query; uncertainty always)",
)
@refusing(refuse_layer)
async def collections(request: Request, service: ServiceDep, params: CollectionParamsDep) -> Response:
    """Each layer the parameters allow, as WMTS lists them: one 422 naming every bad parameter.
    Each is described as `/collections/{collectionId}` describes it, as its links draw it (the
    uncertainty layer too takes `rescale` and `colormap_name`, which its links carry)."""
    params.validated(service, request_refusals(request))
    listed = [await layer_document(request, service, layer_params(layer, params)) for layer in params.layers()]
    own = with_query(f"{base_url(request)}/collections", request.url.query)
    document = {"links": [json_link("self", own, "This list")], "collections": listed}
    return conditional(request, JSONResponse(document), "document")


@router.get(
    "/collections/{collectionId}",
    responses=COLLECTION_RESPONSES,
    summary="OGC API collection: a map layer, its extent and its tilesets",
)
@refusing(refuse_layer)
async def layer_collection(
    collection_id: CollectionId, request: Request, service: ServiceDep, params: CollectionParamsDep
) -> Response:
    document = await layer_document(request, service, layer_params(collection_id, params), request_refusals(request))
    return conditional(request, JSONResponse(document), "document")


async def layer_document(
    request: Request, service: SoundscapeService, of_layer: DocumentParams, refusals: Refusals | None = None
) -> dict:
    """The collection of `of_layer`'s layer, described as its links (which carry the query it was
    asked with) draw it: the one description of a collection, listed or alone."""
    [(tile, text)] = of_layer.validated(service, refusals)
    await check_query(service, of_layer)
    legend = await layer_legend(service, tile, text)
    return collection(base_url(request), of_layer, legend, service.store, request.url.query)


@router.get(
    "/collections/{collectionId}/tiles",
    responses=COLLECTION_RESPONSES,
    summary="OGC API - Tiles: the tilesets of a collection (a layer), one per tile matrix set",
)
@refusing(refuse_layer)
async def collection_tilesets(
    collection_id: CollectionId, request: Request, service: ServiceDep, params: CollectionParamsDep
) -> Response:
    of_layer = layer_params(collection_id, params)
    tiles = f"/collections/{of_layer.layer}/tiles"
    return await layer_tilesets(request, service, of_layer, tiles, request_refusals(request))


@router.get(
    "/collections/{collectionId}/tiles/{tms}",
    responses=COLLECTION_RESPONSES,
    summary="OGC API - Tiles: a tileset of a collection (a layer), as /tiles/{tms} describes the query's",
)
@refusing(refuse_layer)
async def collection_tileset(
    collection_id: CollectionId, tms: str, request: Request, service: ServiceDep, params: CollectionParamsDep
) -> Response:
    """As /tiles/{tms} but for every tile of each zoom: GDAL 3.6's OGCAPI driver, which opens a
    collection, reads a zoom only with its limits and draws its tiles out of place unless they are
    the whole matrix (it counted columns from the limits' first and spread the matrix's rows over
    the limits' rows; fixed by GDAL's pull request 8130)."""
    of_layer = layer_params(collection_id, params)
    tiles = f"/collections/{of_layer.layer}/tiles"
    return await layer_tileset(request, service, of_layer, tms, tiles, request_refusals(request), over_cells=False)


MAP_RESPONSES: dict[int | str, dict] = {
    200: {
        "content": {FORMATS[f]: BINARY for f in maps.MAP_FORMATS},
        "description": "The map, with Content-Crs and Content-Bbox (the box as drawn, in the map's CRS).",
    },
    304: {"description": "Not modified (If-None-Match)."},
    **errors(404, 412, 422, 503, notes={404: "Unknown collection or query id."}),
}


@router.get(
    "/collections/{collectionId}/map",
    response_class=Response,
    responses=MAP_RESPONSES,
    summary="OGC API - Maps: one image of a collection (a layer) over any box, drawn from its tiles",
)
@refusing(refuse_layer)
async def collection_map(
    collection_id: CollectionId,
    request: Request,
    service: ServiceDep,
    params: CollectionParamsDep,
    asked: maps.MapParamsDep,
) -> Response:
    """The tiles' parameters pick the layer's values and colours, the map's the box, CRS, size
    and format (server/maps.py); one 422 names every bad parameter of both. The ETag is known
    before drawing, as a tile's."""
    of_layer = layer_params(collection_id, params)
    refusals = request_refusals(request)
    drawn = asked.checked(service, refusals)
    [(tile, text)] = of_layer.validated(service, refusals)  # raises every refusal, the map's too
    assert drawn is not None
    await check_query(service, of_layer)
    if text is not None and "*" in if_none_match_tags(request):
        service.check_text(text)  # 422 for a text the model knows no word of, as without the header
    plan = maps.Plan.of(drawn, tile.size, of_layer.zooms(service))
    etag = f'"{plan.name(drawn, service.tile_name(replace(tile, fmt=drawn.fmt)))}"'
    answer = held(request, etag, "tile")
    if answer is not None:
        return answer
    body = await maps.draw(service, drawn, plan, tile, text)
    headers = {"Content-Crs": f"<{drawn.crs}>", "Content-Bbox": drawn.content_bbox}
    return conditional(request, Response(body, media_type=FORMATS[drawn.fmt], headers=headers), "tile", etag)


@router.get("/colormaps", summary="Names of the colormaps")
def colormaps(request: Request) -> Response:
    return conditional(request, JSONResponse({"colormaps": colormap_names()}), "document")


@router.get(
    "/colormaps/{colormap_name}",
    response_class=Response,
    responses={200: {"content": {"image/png": BINARY}}, **errors(404, 422, notes={404: "Unknown colormap."})},
    summary="Legend: the colormap as a PNG ramp (low values left, or bottom)",
)
def colormap_legend(
    colormap_name: str,
    request: Request,
    width: Annotated[int, Query(ge=1, le=2048), DIGITS] = 256,
    height: Annotated[int, Query(ge=1, le=2048), DIGITS] = 16,
    orientation: Literal["horizontal", "vertical"] = "horizontal",
) -> Response:
    if colormap_name not in colormap_names():
        raise HTTPException(404, f"unknown colormap {colormap_name!r}; GET /colormaps lists them")
    ramp = legend(colormap_name, width, height, orientation == "vertical")
    return conditional(request, Response(ramp, media_type="image/png"), "tile")


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
    unshared = 0 if registry.client is None else await registry.unshared()
    if not registry.durable:
        queries = f"at risk: redis maxmemory-policy {registry.eviction_policy} may evict them (use volatile-lru)"
    elif unshared:
        queries = f"{unshared} not yet in redis (it refuses writes or lost them): other replicas cannot resolve them"
    else:
        queries = "durable"
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
async def prometheus(request: Request, service: ServiceDep) -> Response:
    count = await service.registry.count()
    metrics.REGISTERED.set(float("nan") if count is None else count)  # NaN: the file could not be read
    metrics.REGISTERED_MAX.set(service.registry.max_records)
    body, content_type = metrics.exposition()
    return conditional(request, Response(body, media_type=content_type), "live")

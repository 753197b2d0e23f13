"""REST answers: where a sound is most likely (`/search`), what one place sounds like over the day
and the year (`/point/{lon},{lat}`), and how a region's cells read (`/statistics`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import numpy as np
import shapely
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse, Response

from runtime.clock import clock_at
from runtime.tiles import cells_area_km2, demorton, quadkey, tile_bounds
from server.areas import AREA_MEDIA_TYPES, MAX_AREA_BYTES, MAX_AREA_VERTICES, SHAPE, parse_area
from server.bodies import read_capped
from server.engine import LAYERS, UNITS, QueryMetadata, ranks_whole_level
from server.http import conditional, errors
from server.params import (
    DECIMAL_SPELLING,
    Asked,
    PointParamsDep,
    SearchParamsDep,
    StatisticsParams,
    StatisticsParamsDep,
    clocked,
    query_embedding,
)
from server.routes.deps import ServiceDep
from server.service import SoundscapeService
from store.reader import Level

router = APIRouter(tags=["rest"])


class GeoJSONResponse(JSONResponse):
    media_type = "application/geo+json"


def _context(record, meta: QueryMetadata) -> dict:
    return {
        "query": record.id,
        **({"text": record.text} if record.text else {}),
        **{k: getattr(meta, k) for k in ("hour", "month", "source") if getattr(meta, k) is not None},
    }


@router.get(
    "/search",
    response_class=Response,  # no JSON default: the 200 is GeoJSON, errors are JSON
    responses={
        200: {
            "description": "A GeoJSON FeatureCollection of the best cells.",
            "content": {"application/geo+json": {"schema": {"type": "object"}}},
        },
        **errors(404, 422, 503, notes={404: "Unknown query id."}),
    },
)
async def search(request: Request, service: ServiceDep, params: SearchParamsDep) -> Response:
    """Top-k cells for a query as GeoJSON, best first by `rank_by`, with match probability, contrast
    and S under the requested metadata (at an instant, `datetime`, each cell at its place's clock
    then: every cell of the level or box ranked); `properties.ranked` says how many cells were ranked."""
    asked = params.validated(service)
    (meta, moment), chosen, box = clocked(asked.meta, asked.when), asked.level, asked.box
    record, embedding = await query_embedding(service, params, asked.query_id)
    within = None if box is None else await service.rows_within(chosen, box)
    # The contrast ranks as the score of one combined query: the same index and candidates serve it.
    ranking = embedding if params.rank_by == "score" else await service.run(service.engine.contrast_query, embedding)
    if moment is not None:
        rows, cells, ranked = await service.search_at(chosen, meta, moment, ranking, params.k, within)
    else:
        whole = params.exact or ranks_whole_level(params.rank_by, meta)
        rows, cells, ranked = await service.search(chosen, meta, ranking, params.k, whole, within)
    # cell_values: a cell reads as at its /point, whatever cells share the answer (k = 1000: ~0.1 ms a layer)
    scores = await service.run(service.engine.cell_values, cells, "heatmap", embedding)
    contrasts = await service.run(service.engine.cell_values, cells, "contrast", embedding)  # may embed the reference
    xs, ys = demorton(np.asarray(chosen.arrays.codes[rows]))
    features = []
    for rank, (row, x, y) in enumerate(zip(rows, xs, ys, strict=True)):
        lon, lat = (float(v) for v in chosen.arrays.lonlat[row])
        features.append(
            {
                "type": "Feature",
                "bbox": list(tile_bounds(chosen.level, int(x), int(y))),
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": {
                    "rank": rank + 1,
                    "score": float(scores[rank]),
                    "contrast": float(contrasts[rank]),
                    "uncertainty": float(cells.s[rank]),
                    "level": chosen.level,
                    "x": int(x),
                    "y": int(y),
                    "quadkey": quadkey(int(x), int(y), chosen.level),
                },
            }
        )
    collection = GeoJSONResponse(
        {
            "type": "FeatureCollection",
            "features": features,
            "properties": {
                **_context(record, meta),
                **({"datetime": params.datetime} if params.datetime is not None else {}),
                "level": chosen.level,
                "k": params.k,
                "rank_by": params.rank_by,
                **({"bbox": list(box)} if box is not None else {}),
                "ranked": ranked,
                "cells": len(chosen),
            },
        }
    )
    return conditional(request, collection, "document")


@router.get("/point/{lon},{lat}", responses=errors(404, 422, 503, notes={404: "No cell there, or unknown query id."}))
async def point(
    request: Request,
    service: ServiceDep,
    lon: Annotated[float, Path(ge=-180, le=180, allow_inf_nan=False), DECIMAL_SPELLING],
    lat: Annotated[float, Path(ge=-90, le=90, allow_inf_nan=False), DECIMAL_SPELLING],
    params: PointParamsDep,
) -> Response:
    """Match probability, contrast and S of the cell at (lon, lat), plus its 24-hour profile (month
    and source as given), 12-month profile (hour and source as given) and its values under each
    source and the unknown source (hour and month as given). `datetime` gives the hour and month
    the place's clocks show at that moment."""
    asked = params.validated(service)
    meta, clock = asked.meta, {}
    if asked.when is not None:
        local = await service.run(clock_at, asked.when, lat, lon)  # the first lookup loads tzfpy's zones: ~0.1 s
        meta = replace(meta, hour=local.hour, month=local.month)
        clock = {"datetime": params.datetime, "local_time": local.isoformat()}
    record, embedding = await query_embedding(service, params, asked.query_id)
    answer = await service.point(lon, lat, asked.level, meta, embedding)
    if answer is None:
        raise HTTPException(404, f"no cell of level {asked.level.level} at ({lon}, {lat}): outside the store")
    return conditional(
        request, JSONResponse({"coordinates": [lon, lat], **_context(record, meta), **clock, **answer}), "document"
    )


# The percentiles /statistics reports besides the median: a default colour scale's ends.
PERCENTILES = (2, 98)
# The area of POST /statistics, as its OpenAPI document describes the body.
AREA_BODY = {
    "requestBody": {
        "required": True,
        "description": f"{SHAPE} (RFC 7946: longitude, latitude in degrees), at most {MAX_AREA_VERTICES} "
        f"vertices and {MAX_AREA_BYTES} bytes.",
        "content": {
            media: {"schema": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}}
            for media in AREA_MEDIA_TYPES
        },
    }
}
STATISTICS_NOTES = {404: "No cell of the level has its centre in the area, or unknown query id."}


@router.get("/statistics", responses=errors(404, 422, 503, notes=STATISTICS_NOTES))
async def statistics(request: Request, service: ServiceDep, params: StatisticsParamsDep) -> Response:
    """Each layer's statistics (match probability, contrast, S) over the cells of a level whose
    centre lies in `bbox`, or every cell of the level, under the requested metadata (at an instant,
    `datetime`, each cell at its place's clock then): count, min, max, mean, std, median, the 2nd
    and 98th percentiles and a histogram, each cell counted once, and the mean with each cell
    weighed by its area on the ground (a web-mercator level gives polar land most of its cells)."""
    answer = await _statistics(service, params, params.validated(service))
    return conditional(request, JSONResponse(answer), "document")


@router.post(
    "/statistics",
    openapi_extra=AREA_BODY,
    responses=errors(404, 413, 415, 422, 503, notes=STATISTICS_NOTES),
)
async def area_statistics(request: Request, service: ServiceDep, params: StatisticsParamsDep) -> JSONResponse:
    """GET /statistics over the cells whose centre lies in a GeoJSON area, the body: a Polygon or
    MultiPolygon, or a Feature or FeatureCollection of them (a country's outline, a park)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in AREA_MEDIA_TYPES:
        raise HTTPException(415, f"send the area as application/geo+json or application/json, not {content_type!r}")
    if params.bbox is not None:
        raise HTTPException(422, "give the area in the body or a bbox=, not both")
    asked = params.validated(service)  # a 422 for the parameters before the body is read
    with service.upload_bodies.body() as place:  # bounded like an upload's bytes, apart from texts
        body = await read_capped(request, MAX_AREA_BYTES, place)
    area = await service.run(parse_area, body)
    return JSONResponse(await _statistics(service, params, asked, area))


async def _statistics(
    service: SoundscapeService, params: StatisticsParams, asked: Asked, area: shapely.Geometry | None = None
) -> dict:
    """The answer of /statistics (`asked`: its parameters validated): the cells of the level in the
    bbox, the area or the whole level."""
    (meta, moment), chosen, box = clocked(asked.meta, asked.when), asked.level, asked.box
    record, embedding = await query_embedding(service, params, asked.query_id)
    rows = await _rows(service, chosen, box, area)
    if moment is not None:
        cells = await service.cells_at(chosen, rows, meta, moment)
    elif box is None and area is None:  # the whole level: fused once per metadata and kept, as exact /search keeps it
        cells = await service.fused_level(chosen, meta)
    else:
        cells = await service.rows_embeddings(chosen, rows, meta)
    cell_area = cells_area_km2(chosen.level, demorton(np.asarray(chosen.arrays.codes[rows]))[1])
    layers = {}
    for layer in LAYERS:
        values = await service.run(service.engine.cell_values, cells, layer, embedding)  # as /point reads a cell
        layers[layer] = {**summary(values, cell_area, params.bins), "units": UNITS[layer]}
    return {
        **_context(record, meta),
        **({"datetime": params.datetime} if params.datetime is not None else {}),
        "level": chosen.level,
        **({"bbox": list(box)} if box is not None else {}),
        **({"area": {"type": area.geom_type, "bbox": list(area.bounds)}} if area is not None else {}),
        "cells": len(rows),
        "area_km2": float(cell_area.sum()),
        "layers": layers,
    }


async def _rows(
    service: SoundscapeService,
    level: Level,
    box: tuple[float, float, float, float] | None,
    area: shapely.Geometry | None,
) -> np.ndarray:
    """The rows /statistics reads: every cell of the level, or those whose centre lies in the box
    or the area (the cells of its box, then those it holds); 404 when there are none."""
    if area is not None:
        rows = await service.rows_within(level, area.bounds, "area")
        lon, lat = np.asarray(level.arrays.lonlat[rows]).T
        rows = rows[await service.run(shapely.intersects_xy, area, lon, lat)]
    else:
        rows = service.level_rows(level) if box is None else await service.rows_within(level, box)
    if len(rows) > service.settings.max_search_cells:  # a box's count first bounded from below
        raise service.too_many_cells(level, str(len(rows)), "bbox" if area is None else "area")
    if len(rows) == 0:
        raise HTTPException(
            404,
            f"no cell of level {level.level} has its centre in the {'area' if area is not None else 'bbox'}: "
            "outside the store, or smaller than the cells (pass a finer level=)",
        )
    return rows


def summary(values: np.ndarray, area: np.ndarray, bins: int) -> dict:
    """Statistics of one layer's values, TiTiler's names where it has one (`histogram`: [counts,
    edges], `bins` equal bins from min to max), and `area_mean`: the mean weighed by `area`."""
    values = values.astype(np.float64)
    counts, edges = np.histogram(values, bins=bins, range=(values.min(), values.max()))
    return {
        "count": len(values),
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        **{f"percentile_{p}": float(np.percentile(values, p)) for p in PERCENTILES},
        "area_mean": float(np.average(values, weights=area)),
        "histogram": [counts.tolist(), edges.tolist()],
    }

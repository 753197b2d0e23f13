"""Areas of interest a client sends as GeoJSON (RFC 7946: longitude, latitude in degrees), read
into one shapely geometry for POST /statistics: a Polygon or MultiPolygon, a Feature of one, or
a FeatureCollection of them (their union). Everything else is a 422 sentence naming what is
wrong, and the work a body can cause is bounded (its vertices, features and nesting)."""

from __future__ import annotations

import math

import shapely
from fastapi import HTTPException

from server.bodies import load_json

MAX_AREA_BYTES = 4 * 1024 * 1024
AREA_MEDIA_TYPES = ("application/geo+json", "application/json")
MAX_AREA_VERTICES = 100_000
MAX_AREA_FEATURES = 1_000
# A FeatureCollection's Feature's MultiPolygon: collection, features, feature, geometry, coordinates,
# polygon, ring, position.
MAX_AREA_DEPTH = 8
AREA_TYPES = ("Polygon", "MultiPolygon")
SHAPE = "a GeoJSON Polygon or MultiPolygon, or a Feature or FeatureCollection of them"
# The lists between a geometry's coordinates and its rings: a Polygon's coordinates are its rings,
# a MultiPolygon's are its polygons, each a list of rings.
RINGS_UNDER = {"Polygon": 0, "MultiPolygon": 1}


def parse_area(body: bytes) -> shapely.Geometry:
    """The area a GeoJSON body holds, prepared for point-in-polygon tests."""
    document = load_json(body, MAX_AREA_DEPTH, SHAPE)
    geometries = _geometries(document)
    vertices = 0
    for geometry in geometries:
        vertices += _check_coordinates(geometry, MAX_AREA_VERTICES - vertices)
    shapes = []
    for geometry in geometries:
        try:
            shape = shapely.geometry.shape(geometry)
        except (ValueError, TypeError, shapely.errors.ShapelyError) as exc:
            raise HTTPException(422, f"the {geometry['type']} is not a valid GeoJSON geometry: {exc}") from None
        if not shape.is_valid:
            raise HTTPException(
                422, f"the {geometry['type']} is not a valid polygon ({shapely.is_valid_reason(shape)}): fix it first"
            )
        shapes.append(shape)
    area = shapely.union_all(shapes) if len(shapes) > 1 else shapes[0]
    if area.is_empty or area.area == 0:
        raise HTTPException(422, "the area encloses nothing: send a polygon with an inside")
    shapely.prepare(area)
    return area


def _geometries(document: object) -> list[dict]:
    """The polygon geometries of a GeoJSON document."""
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        raise HTTPException(422, f"the body must be {SHAPE}: an object with a 'type'")
    kind = document["type"]
    if kind == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list) or not features:
            raise HTTPException(422, "a FeatureCollection needs a non-empty 'features' list")
        if len(features) > MAX_AREA_FEATURES:
            raise HTTPException(422, f"the FeatureCollection has over {MAX_AREA_FEATURES} features: merge them first")
        return [_geometry_of(feature) for feature in features]
    if kind == "Feature":
        return [_geometry_of(document)]
    return [_polygonal(document)]


def _geometry_of(feature: object) -> dict:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise HTTPException(422, "each of a FeatureCollection's features must be a GeoJSON Feature")
    return _polygonal(feature.get("geometry"))


def _polygonal(geometry: object) -> dict:
    if not isinstance(geometry, dict):
        raise HTTPException(422, f"a Feature's geometry must be {SHAPE}, not {type(geometry).__name__}")
    kind = geometry.get("type")
    if kind not in AREA_TYPES:
        raise HTTPException(422, f"a {str(kind)[:40]} has no area: send {SHAPE}")
    return geometry


def _check_coordinates(geometry: dict, allowed: int) -> int:
    """How many positions a polygon geometry has; 422 unless each is [longitude, latitude] (an
    altitude after them is allowed) in -180..180 and -90..90, nested as its type nests them, and
    unless they number at most `allowed` (what the area's earlier geometries left of the cap)."""
    kind = geometry["type"]
    rings = geometry.get("coordinates")
    for _ in range(RINGS_UNDER[kind]):
        if not isinstance(rings, list) or not all(isinstance(polygon, list) for polygon in rings):
            raise HTTPException(422, f"a {kind}'s coordinates must be nested lists of positions")
        rings = [ring for polygon in rings for ring in polygon]
    if not isinstance(rings, list) or not rings:
        raise HTTPException(422, f"a {kind}'s coordinates must be nested lists of positions")
    count = 0
    for ring in rings:
        if not isinstance(ring, list):
            raise HTTPException(422, f"a {kind}'s rings must be lists of positions")
        count += len(ring)
        if count > allowed:
            raise HTTPException(422, f"the area has over {MAX_AREA_VERTICES} vertices: simplify it first")
        for position in ring:
            if not _is_position(position):
                raise HTTPException(
                    422,
                    f"a {kind}'s positions must be [longitude, latitude] in degrees (-180..180, -90..90), "
                    f"not {str(position)[:60]}",
                )
    return count


def _is_position(position: object) -> bool:
    if not isinstance(position, list) or not 2 <= len(position) <= 3:
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in position):
        return False
    return -180 <= position[0] <= 180 and -90 <= position[1] <= 90

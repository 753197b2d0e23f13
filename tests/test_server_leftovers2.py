"""Parameters held to one rule on every route and in every description of them: an empty
colormap_name is refused like any other empty parameter, /metadata's ranges are the ones the
parameters declare, and the OpenAPI document states the tile sizes taken."""

import pytest

from tests.server_support import LAND_TILE, localhost_client, refused

Z, X, Y = LAND_TILE
TILE_ROUTES = [
    f"/tiles/{Z}/{X}/{Y}.png",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.webp",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy",
    "/tilejson.json",
    "/WebMercatorQuad/tilejson.json",
    "/WMTSCapabilities.xml",
    "/WebMercatorQuad/WMTSCapabilities.xml",
]
EMPTY_COLORMAP = "colormap_name is empty: give a name GET /colormaps lists, or leave colormap_name out"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return localhost_client(bundle_path, store_path)


@pytest.mark.parametrize("path", TILE_ROUTES)
def test_an_empty_colormap_name_is_refused_with_the_other_bad_parameters(client, path):
    """colormap_name= drew the default colormap, where every other empty parameter answers 422."""
    alone = refused(client.get(path, params={"q": "birdsong", "colormap_name": ""}))
    assert alone == EMPTY_COLORMAP
    together = refused(client.get(path, params={"q": "birdsong", "colormap_name": "", "hour": "25"}))
    assert together.split("; ") == ["hour must be an integer in 0..23, not '25'", EMPTY_COLORMAP]
    # the uncertainty layer, drawn in its own colours, refuses it all the same, as WMTS does without a query
    for params in [{"layer": "uncertainty"}, *([{}] if "WMTS" in path else [])]:
        assert refused(client.get(path, params={**params, "colormap_name": ""})) == EMPTY_COLORMAP, params


def test_an_empty_colormap_name_is_refused_before_a_404(client):
    for path in ("/tiles/30/0/0.png", "/NoSuchTMS/tilejson.json", "/NoSuchTMS/WMTSCapabilities.xml"):
        assert refused(client.get(path, params={"q": "birdsong", "colormap_name": ""})) == EMPTY_COLORMAP


def parameter_schemas(client) -> dict[str, dict[str, dict]]:
    """path -> parameter name -> JSON schema (its non-null branch) of each GET in /openapi.json."""
    document = client.get("/openapi.json").json()
    return {
        path: {
            p["name"]: next((s for s in p["schema"].get("anyOf", [p["schema"]]) if s.get("type") != "null"), {})
            | {k: v for k, v in p["schema"].items() if k == "default"}
            for p in operations["get"].get("parameters", [])
        }
        for path, operations in document["paths"].items()
        if "get" in operations
    }


def test_metadata_states_the_ranges_and_values_the_parameters_declare(client):
    """/metadata tells a client's controls what hour, month, layer and source take; the routes
    declare it again (OpenAPI) and validate by their declarations: one must not drift from the other."""
    metadata = client.get("/metadata").json()
    schemas = parameter_schemas(client)
    routes = {name: [path for path, params in schemas.items() if name in params] for name in ("hour", "month", "layer")}
    assert len(routes["hour"]) >= 8 and routes["hour"] == routes["month"], (
        routes
    )  # tiles, TileJSON, WMTS, /search, /point
    for name in ("hour", "month"):
        for path in routes[name]:
            schema = schemas[path][name]
            assert schema["type"] == "integer", (path, schema)
            assert (schema["minimum"], schema["maximum"]) == (metadata[name]["min"], metadata[name]["max"]), path
    layers = [entry["value"] for entry in metadata["layer"]["values"]]
    for path in routes["layer"]:
        assert schemas[path]["layer"]["enum"] == layers, path
        assert schemas[path]["layer"]["default"] == metadata["layer"]["default"], path
    # and the routes take exactly those values: each end, and one past it
    tile = f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy"
    for name in ("hour", "month"):
        low, high = metadata[name]["min"], metadata[name]["max"]
        for value in (low, high):
            assert client.get(tile, params={"q": "birdsong", name: value}).status_code == 200, (name, value)
        for value in (low - 1, high + 1):
            assert refused(client.get(tile, params={"q": "birdsong", name: value})).startswith(f"{name} must be")
    for entry in metadata["layer"]["values"]:
        without_query = client.get(tile, params={"layer": entry["value"]})
        assert (without_query.status_code == 422) == entry["needs_query"], entry
    sources = [entry["value"] for entry in metadata["source"]["values"]]
    for source in sources:
        assert client.get(tile, params={"q": "birdsong", "source": source}).status_code == 200, source
    listed = refused(client.get(tile, params={"q": "birdsong", "source": "nobody"}))
    assert listed.startswith(f"source must be one of {', '.join(sources)} (GET /metadata"), listed


def test_the_openapi_document_states_the_tile_sizes_taken(client):
    """tilesize was published as any integer, so a schema-driven client (schemathesis) sent 300 and
    met a 422 the document did not foretell; the document now lists the sizes, and the 422 stays."""
    schemas = parameter_schemas(client)
    routes = [path for path, params in schemas.items() if "tilesize" in params]
    assert len(routes) >= 7, routes  # the tile routes, TileJSON and WMTS
    for path in routes:
        schema = schemas[path]["tilesize"]
        assert (schema["type"], schema["enum"], schema["default"]) == ("integer", [256, 512], 256), (path, schema)
    for size in schemas[routes[0]]["tilesize"]["enum"]:
        tile = client.get(f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy", params={"q": "birdsong", "tilesize": size})
        assert tile.status_code == 200 and tile.headers["content-length"] == str(128 + 4 * size * size)
    assert refused(client.get(f"/tiles/{Z}/{X}/{Y}.png", params={"q": "birdsong", "tilesize": 300})) == (
        "tilesize must be 256 or 512, not 300"
    )

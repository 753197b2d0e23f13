"""What the OpenAPI document states of a parameter's values is what the server takes: the lists it
checks against (colormaps, in a tile's query or the legend's path, the bundle's sources, the
store's levels, the tile matrix sets, the collections, the CRS spellings) as enums, and the forms
of rescale, bbox, texts and query ids as patterns. A schema-driven client that keeps to them is not
refused for the form of a value (docs/api.md, "OpenAPI")."""

import re
from urllib.parse import quote

import pytest

from store.reader import Store
from tests.server_support import LAND_TILE, localhost_client

Z, X, Y = LAND_TILE
TILE = f"/tiles/{Z}/{X}/{Y}.png"
LON, LAT = 10.5, 47.2  # inside the fixture store


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return localhost_client(bundle_path, store_path)


@pytest.fixture(scope="module")
def document(client):
    return client.get("/openapi.json").json()


def parameters(document: dict, name: str, where: str = "query") -> list[tuple[str, dict]]:
    """(path, parameter) of every parameter `name` in `where` (query or path) in the document."""
    return [
        (path, parameter)
        for path, operations in document["paths"].items()
        for operation in operations.values()
        for parameter in operation.get("parameters", [])
        if parameter["name"] == name and parameter["in"] == where
    ]


def schema_of(document: dict, parameter: dict) -> dict:
    """A parameter's schema, its $ref followed."""
    schema = parameter["schema"]
    if "$ref" in schema:
        return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def pattern_of(document: dict, name: str) -> re.Pattern:
    """The one pattern every query parameter `name` states."""
    found = {schema_of(document, parameter).get("pattern") for _, parameter in parameters(document, name)}
    assert len(found) == 1 and None not in found, f"{name}: {found}"
    return re.compile(found.pop())


@pytest.mark.parametrize(("name", "listed"), [("colormap_name", "/colormaps"), ("source", "/metadata")])
def test_the_lists_the_server_checks_against_are_the_schemas_enums(client, document, name, listed):
    answer = client.get(listed).json()
    values = answer["colormaps"] if name == "colormap_name" else [v["value"] for v in answer["source"]["values"]]
    found = parameters(document, name)
    assert len(found) > 10  # every tile, document and collection route
    for path, parameter in found:
        assert parameter["schema"] == found[0][1]["schema"], f"{name} of {path}: one schema, stated once"
        assert schema_of(document, parameter)["enum"] == values
    for value in values:
        assert client.get(TILE, params={"q": "birdsong", name: value}).status_code == 200, value
    refused = client.get(TILE, params={"q": "birdsong", name: values[0] + "x"})
    assert refused.status_code == 422 and name in refused.json()["detail"]


@pytest.mark.parametrize(
    ("name", "listed", "url"),
    [
        ("tms", "/tileMatrixSets", "/tiles/{}/3/4/2.png"),
        ("collectionId", "/collections", "/collections/{}"),
    ],
)
def test_the_path_parameters_a_list_names_are_its_enums(client, document, name, listed, url):
    answer = client.get(listed, params={"q": "birdsong"}).json()
    values = [entry["id"] for entry in answer["tileMatrixSets" if name == "tms" else "collections"]]
    found = parameters(document, name, "path")
    assert len(found) >= 4
    for path, parameter in found:
        assert schema_of(document, parameter)["enum"] == values, path
    for value in values:
        assert client.get(url.format(value), params={"q": "birdsong"}).status_code == 200, value
    assert client.get(url.format("Other"), params={"q": "birdsong"}).status_code == 404


def test_the_legend_route_names_its_colormap_by_the_same_enum(client, document):
    names = client.get("/colormaps").json()["colormaps"]
    (path, parameter), *others = parameters(document, "colormap_name", "path")
    assert path == "/colormaps/{colormap_name}" and not others
    assert parameter["schema"] == parameters(document, "colormap_name")[0][1]["schema"]  # ColormapName, once
    assert schema_of(document, parameter)["enum"] == names
    for name in names[:: max(1, len(names) // 20)]:
        answer = client.get(f"/colormaps/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", name
    assert client.get(f"/colormaps/{names[0]}x").status_code == 404


def test_the_store_levels_are_the_level_enum(client, document, store_path):
    levels = sorted(Store(store_path).levels)
    found = parameters(document, "level")
    assert {path for path, _ in found} == {"/search", "/point/{lon},{lat}", "/statistics"}
    for _, parameter in found:
        assert schema_of(document, parameter) == {"type": "integer", "enum": levels, "title": "Level"}
    for level in levels:
        assert client.get(f"/point/{LON},{LAT}", params={"q": "birdsong", "level": level}).status_code == 200
    assert client.get(f"/point/{LON},{LAT}", params={"q": "birdsong", "level": levels[-1] + 1}).status_code == 422


def test_collection_routes_do_not_list_the_layer_they_refuse(client, document):
    collection_paths = [path for path in document["paths"] if path.startswith("/collections")]
    assert len(collection_paths) >= 5
    listed = [path for path, _ in parameters(document, "layer")]
    assert listed and not set(listed) & set(collection_paths)
    for path in ("/collections", "/collections/contrast/tiles"):
        answer = client.get(path, params={"q": "birdsong", "layer": "heatmap"})
        assert answer.status_code == 422 and "layer is not a parameter of the collections" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("path", "name", "params"),
    [
        ("/search", "coord_crs", {"q": "birdsong"}),
        (f"/point/{LON},{LAT}", "coord_crs", {"q": "birdsong"}),
        ("/collections/contrast/map", "crs", {"q": "birdsong", "width": 64, "height": 64}),
        ("/collections/contrast/map", "bbox-crs", {"q": "birdsong", "width": 64, "height": 64}),
    ],
)
def test_every_crs_spelling_the_schema_lists_is_taken(client, document, path, name, params):
    (template, parameter), *_ = [
        (p, q) for p, q in parameters(document, name) if re.fullmatch(re.sub(r"{\w+}", "[^/]+", p), path)
    ]
    spellings = schema_of(document, parameter)["enum"]
    assert spellings
    for spelling in spellings:
        extra = {"bbox": "-2e6,-2e6,2e6,2e6"} if name == "bbox-crs" and "3857" in spelling else {}
        answer = client.get(path, params={**params, **extra, name: spelling})
        assert answer.status_code == 200, (template, spelling, answer.text)
    assert client.get(path, params={**params, name: "EPSG:32632"}).status_code == 422


@pytest.mark.parametrize(
    ("name", "path", "taken", "refused"),
    [
        (
            "rescale",
            TILE,
            ["0,1", "-0.5,2.5e1", ".25,+1.", "1E-2,3"],
            # float() reads the last five (underscores, spaces, other scripts' digits): the pattern does not
            ["0;1", "a,b", "0,1,2", "0", "0x1,2", "1_0,2_0", " 0,1", "0,1\t", "\u0661,2", "0,1e1_0"],
        ),
        (
            "bbox",
            "/search",
            ["5,45,15,50", "-180,-90.0,180,90", "170,-10,-170,10"],
            ["5 45 15 50", "5,45,15", "w,s,e,n", "1_0,45,15,50", "5, 45,15,50", "nan,45,15,50"],
        ),
        ("bbox", "/collections/contrast/map", ["5,45,15,50"], ["1_0,45,15,50", "5,45,15,50 "]),
    ],
)
def test_numbers_matching_the_pattern_are_read_and_other_forms_refused(client, document, name, path, taken, refused):
    pattern = pattern_of(document, name)
    for value in taken:
        assert pattern.search(value), value
        assert client.get(path, params={"q": "birdsong", name: value}).status_code == 200, value
    for value in refused:
        assert not pattern.search(value), value
        answer = client.get(path, params={"q": "birdsong", name: value})
        assert answer.status_code == 422 and name in answer.json()["detail"], value


@pytest.mark.parametrize(
    ("value", "read"), [("10.5", 10.5), ("+10.5", 10.5), ("1.05e1", 10.5), ("10.", 10.0), ("1E1", 10.0)]
)
def test_point_coordinates_written_as_the_decimal_pattern_states_are_read(client, document, value, read):
    """/point's lon and lat are read by the rule of rescale's and bbox's numbers (one pattern)."""
    number = pattern_of(document, "rescale").pattern.removeprefix("^").split(",")[0]
    assert re.fullmatch(number, value)
    answer = client.get(f"/point/{value},{LAT}", params={"q": "birdsong"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["coordinates"] == [read, LAT]


@pytest.mark.parametrize("value", ["1_0.5", " 10.5", "10.5\t", "\u0661\u0660", "1_0e0"])
def test_point_coordinates_in_another_spelling_are_refused_naming_them(client, document, value):
    """float() reads each (1_0.5 as 10.5): /point answered for a place nobody wrote, or under
    another URL of the same one."""
    number = pattern_of(document, "rescale").pattern.removeprefix("^").split(",")[0]
    assert not re.fullmatch(number, value)
    for path, name in ((f"/point/{quote(value)},{LAT}", "lon"), (f"/point/{LON},{quote(value)}", "lat")):
        answer = client.get(path, params={"q": "birdsong"})
        assert answer.status_code == 422, (path, answer.text)
        assert answer.json()["detail"].startswith(f"{name} must be a number in "), answer.text


TEXTS_TAKEN = ["birdsong", "  rain on a tin roof ", "Vögel im Wald", "\r\nrain\ton a\r\nroof\u3000"]
TEXTS_REFUSED = ["", "   ", "\t\n", "bird\x00song", "rain\x1b[31m", "rain\x0b", "\rrain", "rain\x85", "\u2028rain"]


def test_the_text_pattern_is_the_rule_texts_are_held_to(client, document):
    in_query = pattern_of(document, "q")
    body = document["paths"]["/queries"]["post"]["requestBody"]["content"]
    in_bodies = {
        re.compile(body[kind]["schema"]["properties"]["text"]["pattern"])
        for kind in ("application/json", "multipart/form-data")
    }
    assert {p.pattern for p in in_bodies} == {in_query.pattern}
    for text in TEXTS_TAKEN:
        assert in_query.search(text), text
        assert client.post("/queries", json={"text": text}).status_code == 201, text
        assert client.get(TILE, params={"q": text}).status_code == 200, text
    for text in TEXTS_REFUSED:
        assert not in_query.search(text), text
        assert client.post("/queries", json={"text": text}).status_code == 422, text
        assert client.get(TILE, params={"q": text}).status_code == 422, text


def test_query_ids_match_the_pattern_the_schema_states(client, document):
    pattern = pattern_of(document, "query")
    (path_parameter,) = document["paths"]["/queries/{query_id}"]["get"]["parameters"]
    assert path_parameter["schema"]["pattern"] == pattern.pattern
    made = client.post("/queries", json={"text": "birdsong"}).json()["id"]
    assert pattern.search(made)
    assert client.get(TILE, params={"query": made}).status_code == 200
    for other in (made.upper(), made[:-1], made + "0", "g" * len(made)):
        assert not pattern.search(other)
        # a malformed parameter is a 422 naming it; a path naming no query a 404 (docs/api.md, Queries)
        answer = client.get(TILE, params={"query": other})
        assert answer.status_code == 422 and answer.json()["detail"].startswith("query must be a 16-hex-digit id"), (
            other
        )
        answer = client.get(f"/queries/{other}")
        assert answer.status_code == 404 and answer.json()["detail"] == (
            f"{other!r} is not a query id (16 hex digits from POST /queries)"
        ), other

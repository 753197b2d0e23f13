"""One 422 names every bad parameter of a request (docs/api.md, Errors): FastAPI's own validation
(types, ranges), the server's rules (server/params.py: known sources, rescale, bbox, level, ...)
and the refusal of a parameter given twice all answer together, so a client fixing its URL does
not meet the problems one round at a time. And the answer stays small whatever the client sends."""

import asyncio
import json
import time

import pytest

from server.http import MAX_DETAIL_CHARS, MAX_SENTENCE_CHARS
from server.pack import get
from tests.server_support import LAND_TILE, localhost_client, refused

Z, X, Y = LAND_TILE
TILE = f"/tiles/{Z}/{X}/{Y}.png"
HOUR = "hour must be an integer in 0..23, not '25'"
MONTH = "month must be an integer in 1..12, not '13'"
SOURCE = "source must be one of"
RESCALE = "rescale needs finite min < max"
COLORMAP = "unknown colormap_name 'nope'"
TILESIZE = "tilesize must be 256 or 512, not 300"
BAD_TILE_PARAMS = {
    "q": "birdsong",
    "hour": "25",
    "month": "13",
    "source": "youtube",
    "rescale": "1,0",
    "colormap_name": "nope",
    "tilesize": "300",
}
TILE_SENTENCES = [HOUR, MONTH, SOURCE, RESCALE, COLORMAP, TILESIZE]


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return localhost_client(bundle_path, store_path)


def raw_get(app, path: str, query_string: bytes) -> tuple[int, bytes]:
    """GET through the ASGI app with a query string of any length (an HTTP client caps a URL's;
    the server's own cap, 16 KiB of request head, holds a few thousand parameters)."""
    return asyncio.run(get(app, path, query_string))


def assert_names_each(detail: str, sentences: list[str]) -> None:
    for sentence in sentences:
        assert detail.count(sentence) == 1, (sentence, detail)
    assert detail.count("; ") == len(sentences) - 1, detail


@pytest.mark.parametrize(
    "path",
    [
        TILE,
        f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}",
        f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy",
        "/tilejson.json",
        "/WebMercatorQuad/tilejson.json",
        "/WMTSCapabilities.xml",
        "/WebMercatorQuad/WMTSCapabilities.xml",
    ],
)
def test_a_tile_route_names_every_bad_parameter_at_once(client, path):
    assert_names_each(refused(client.get(path, params=BAD_TILE_PARAMS)), TILE_SENTENCES)


def test_path_parameters_and_unsupported_ones_are_named_with_the_rest(client):
    params = {**BAD_TILE_PARAMS, "colormap": "{}", "layer": "noise"}
    detail = refused(client.get(f"/tiles/WebMercatorQuad/a/{X}/{Y}.jpg", params=params))
    layer = "layer must be one of heatmap, contrast, uncertainty, not 'noise'"
    # layer is refused: the colormap_name's sentence does not depend on it, nor does that of the unknown name
    assert_names_each(
        detail,
        [
            "z must be an integer, not 'a'",
            "fmt must be one of png, webp, npy, tif, not 'jpg'",
            layer,
            "colormap is not supported",
            *TILE_SENTENCES,
        ],
    )


def test_search_and_point_name_every_bad_parameter_at_once(client):
    search = {"q": "birdsong", "hour": "25", "source": "youtube", "k": "5000", "bbox": "1,2,3", "level": "23"}
    assert_names_each(
        refused(client.get("/search", params=search)),
        [
            HOUR,
            SOURCE,
            "k must be an integer in 1..1000, not '5000'",
            "bbox must be four numbers west,south,east,north",
            "level must be one of the store's levels",
        ],
    )
    point = {"q": "birdsong", "month": "13", "source": "youtube", "level": "23"}
    assert_names_each(
        refused(client.get("/point/ten,10", params=point)),
        ["lon must be a number in -180..180, not 'ten'", MONTH, SOURCE, "level must be one of the store's levels"],
    )


@pytest.mark.parametrize("value", ["-1", "abc", "", "1e1", "25"])
def test_a_level_refused_by_its_type_or_range_states_the_store_levels(client, value):
    """level=-1 answered `level must be a valid value`: the rule is the store's levels, as the
    OpenAPI document's Level enum and level=8's sentence state them."""
    levels = ", ".join(str(level) for level in sorted(client.app.state.service.store.levels))
    for path in ("/search", "/point/10.5,47.2"):
        detail = refused(client.get(path, params={"q": "birdsong", "level": value}))
        assert detail.startswith(f"level must be one of {levels}"), detail


def test_a_parameter_given_twice_is_named_with_the_other_bad_ones(client):
    params = [("q", "birdsong"), ("hour", "6"), ("hour", "99"), ("month", "0"), ("month", "1"), ("source", "youtube")]
    detail = refused(client.get(TILE, params=params))
    # the value of a repeated parameter is not judged: neither is the one the client meant
    assert_names_each(detail, ["hour is given 2 times", "month is given 2 times", SOURCE])
    garbled = refused(client.get(f"{TILE}?q=caf%E9&hour=25&source=youtube"))
    assert_names_each(garbled, ["q is not UTF-8 text", HOUR, SOURCE])


@pytest.mark.parametrize(
    ("literal", "escaped"), [("rain%", "rain%25"), ("rain%zz", "rain%25zz"), ("rain%2", "rain%252")]
)
def test_a_percent_sign_that_is_no_escape_stands_for_itself(client, literal, escaped):
    """docs/api.md: a % not followed by two hex digits is read as itself, as the URL standard
    reads it: the same query as the % escaped, not a 422 (only escapes of bytes that are not UTF-8 are)."""
    tile = f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy"
    read = client.get(f"{tile}?q={literal}")
    assert read.status_code == 200 and read.headers["etag"] == client.get(f"{tile}?q={escaped}").headers["etag"]
    assert read.headers["etag"] != client.get(f"{tile}?q=rain").headers["etag"]


def test_a_query_refused_by_its_type_is_not_also_called_missing(client):
    detail = refused(client.get(TILE, params={"q": "x" * 8193, "hour": "25"}))
    assert_names_each(detail, ["q must be a text of at most 8192 characters", HOUR])
    assert "is required" not in detail


def test_a_text_of_no_known_word_is_named_with_the_rest(client):
    detail = refused(client.get(TILE, params={"q": " ?!", "hour": "25"}))
    assert_names_each(detail, [HOUR, "holds no word the text model knows"])
    missing = refused(client.get("/search", params={"hour": "25"}))
    assert_names_each(missing, [HOUR, "q (a text query, e.g. q=birdsong) or query"])


def test_every_bad_parameter_of_a_huge_query_string_costs_little_and_answers_small(client):
    # 10,000 values of the parameters the route takes, every one bad, and 10,000 names it does not take
    taken = ["q", "query", "hour", "month", "source", "layer", "colormap_name", "rescale", "tilesize"]
    pairs = [f"{taken[i % len(taken)]}=%FF{'x' * 50}" for i in range(10_000)]
    pairs += [f"unknown{i}=%FF" for i in range(10_000)]
    began = time.perf_counter()
    status, body = raw_get(client.app, TILE, "&".join(pairs).encode())
    took = time.perf_counter() - began
    assert status == 422
    detail = json.loads(body)["detail"]
    assert len(detail) <= MAX_DETAIL_CHARS
    assert all(len(sentence) <= MAX_SENTENCE_CHARS for sentence in detail.split("; "))
    for name in taken:
        assert f"{name} is given " in detail, (name, detail)
    assert "unknown" not in detail
    assert took < 2.0, took


def test_q_is_held_to_the_rule_of_a_registered_text(client):
    """q= and POST /queries judge a text alike, by its normalised form (case-folded, single-spaced):
    q= was refused for 501 characters as sent, so a text POST /queries took was refused as q=."""
    spaced = "Birdsong" + " " * 600
    registered = client.post("/queries", json={"text": spaced})
    assert registered.status_code == 201, registered.text
    for path in (TILE, "/search", "/tilejson.json"):
        r = client.get(path, params={"q": spaced})
        assert r.status_code == 200, (path, r.text)
    assert client.get("/search", params={"q": spaced}).json()["properties"]["query"] == registered.json()["id"]
    long = "x" * 501
    sentence = "text must be at most 500 characters once case-folded and single-spaced, not 501"
    assert client.post("/queries", json={"text": long}).json()["detail"] == sentence
    assert refused(client.get(TILE, params={"q": long})) == f"q: {sentence}"
    # As sent, a form's text is held to q='s 8192 characters, the bound the document states for both.
    form = client.post("/queries", files={"text": (None, "Birdsong" + " " * 9000)})
    assert (
        form.status_code == 422 and form.json()["detail"] == "text must be a text of at most 8192 characters, not 9008"
    )
    assert client.post("/queries", files={"text": (None, spaced)}).json()["id"] == registered.json()["id"]
    paths = client.get("/openapi.json").json()["paths"]
    body = paths["/queries"]["post"]["requestBody"]["content"]
    (q,) = [p for p in paths["/tiles/{z}/{x}/{y}.png"]["get"]["parameters"] if p["name"] == "q"]
    for kind in ("application/json", "multipart/form-data"):
        text = body[kind]["schema"]["properties"]["text"]
        q_max = next(kind["maxLength"] for kind in q["schema"].get("anyOf", [q["schema"]]) if "maxLength" in kind)
        assert text["maxLength"] == q_max == 8192 and "500 characters" in text["description"]


def test_a_number_of_bbox_or_rescale_is_read_as_a_number_parameter_is(client):
    """Python's float() reads other scripts' digits, which /point's lon and lat refuse: a bbox or
    rescale of them was taken as the number. So are underscores and spaces around it, which
    the published decimal pattern does not state."""
    ten, zero, one = "\u0661\u0660", "\u0660", "\u0661"  # Arabic-Indic digits: float() reads them
    assert refused(client.get(f"/point/{ten},47", params={"q": "birdsong"})).startswith("lon must be a number")
    box = refused(client.get("/search", params={"q": "birdsong", "bbox": f"{ten},40,20,50"}))
    assert box.startswith("bbox must be four numbers west,south,east,north in degrees")
    rescale = refused(client.get(TILE, params={"q": "birdsong", "rescale": f"{zero},{one}"}))
    assert rescale.startswith("rescale must be two numbers")
    assert client.get("/point/1e1,47", params={"q": "birdsong"}).status_code == 200
    assert client.get("/search", params={"q": "birdsong", "bbox": "1e1,40,20,50"}).status_code == 200
    for number in ("1_0", " 10"):  # float() reads both as 10; the published pattern states neither
        assert refused(client.get(f"/point/{number},47", params={"q": "birdsong"})).startswith("lon must be a number")
        box = refused(client.get("/search", params={"q": "birdsong", "bbox": f"{number},40,20,50"}))
        assert box.startswith("bbox must be four numbers west,south,east,north in degrees")


def test_a_bad_parameter_is_a_422_wherever_the_tile_or_matrix_set_is(client):
    """A bad parameter answers its 422 before a tile outside the grid or an unknown tile matrix set
    answers 404, whichever stage refuses it: hour=25 (FastAPI's) was a 422 there and source=youtube
    (the server's rule) a 404."""
    for path in ("/tiles/30/0/0.png", "/tiles/NoSuchTMS/1/0/0.png", "/NoSuchTMS/tilejson.json"):
        for params, sentence in (({"hour": "25"}, HOUR), ({"source": "youtube"}, SOURCE)):
            assert sentence in refused(client.get(path, params={"q": "birdsong", **params})), (path, params)
        assert client.get(path, params={"q": "birdsong"}).status_code == 404
    for params, sentence in (({"hour": "25"}, HOUR), ({"rescale": "1,0"}, RESCALE)):
        assert sentence in refused(client.get("/NoSuchTMS/WMTSCapabilities.xml", params={"q": "birdsong", **params}))
    assert client.get("/NoSuchTMS/WMTSCapabilities.xml", params={"q": "birdsong"}).status_code == 404

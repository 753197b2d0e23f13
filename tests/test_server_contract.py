"""The HTTP contract (docs/api.md): HEAD on every GET route, one error shape
(`{"detail": "<one sentence>"}`) for every 4xx and in the OpenAPI document, /metrics labelled by
route template, canonical rescale keys, `If-None-Match: *`, well-formed WMTS and refused TiTiler
parameters this server cannot honour."""

import io
import re
import socket
import time
import xml.etree.ElementTree as ET

import httpx
import numpy as np
import pytest
import soundfile
from prometheus_client import REGISTRY

from tests.server_support import LAND_TILE, live_server, localhost_client, make_client

Z, X, Y = LAND_TILE
LON, LAT = 10.5, 47.2  # the Alps: inside the fixture store


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return localhost_client(bundle_path, store_path)


@pytest.fixture(scope="module")
def query_id(client):
    return client.post("/queries", json={"text": "birdsong"}).json()["id"]


def get_operations(client) -> list[tuple[str, dict]]:
    """(path, operation) of every GET in the OpenAPI document."""
    paths = client.get("/openapi.json").json()["paths"]
    return [(path, ops["get"]) for path, ops in paths.items() if "get" in ops]


def valid_request(path: str, operation: dict, query_id: str) -> tuple[str, dict]:
    """The URL with valid path parameters and the query parameters the operation needs."""
    values = {
        "z": Z,
        "x": X,
        "y": Y,
        "tms": "WebMercatorQuad",
        "fmt": "png",
        "colormap_name": "viridis",
        "query_id": query_id,
        "lon": LON,
        "lat": LAT,
        "scale": 2,
        "collectionId": "contrast",
    }
    names = re.findall(r"{(\w+)}", path)
    assert set(names) <= set(values), f"no valid value for a path parameter of {path}"
    url = re.sub(r"{(\w+)}", lambda m: str(values[m.group(1)]), path)
    params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
    return url, ({"query": query_id} if "query" in params else {})


def test_head_answers_like_get_on_every_get_route(client, query_id):
    operations = get_operations(client)
    assert len(operations) >= 15
    urls = [valid_request(path, op, query_id) for path, op in operations]
    urls += [(path, {}) for path in ("/", "/docs", "/redoc", "/static/viewer.js")]  # not in the document
    for url, params in urls:
        get = client.get(url, params=params)
        head = client.head(url, params=params)
        assert get.status_code == 200, (url, get.status_code, get.text[:200])
        assert head.status_code == 200 and head.content == b"", url
        for name in ("content-type", "cache-control", "etag"):
            assert head.headers.get(name) == get.headers.get(name), (url, name)
        if url != "/metrics":  # the only body that changes between two requests
            assert head.headers.get("content-length") == get.headers.get("content-length"), url


def test_head_keeps_error_statuses_and_the_allow_header(client):
    assert client.head("/no/such/route").status_code == 404
    head = client.head(f"/tiles/{Z}/{X}/{Y}.png", params={"query": "0" * 16})
    assert head.status_code == 404 and head.content == b""
    post_only = client.head("/queries")
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"


def one_sentence(response) -> str:
    """The detail of an error answer, checked to be the one documented shape."""
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    detail = body["detail"]
    assert detail and "\n" not in detail and len(detail) <= 300, detail
    assert not re.search(r"object at 0x|Traceback|\[\{|\{'type'", detail), detail
    return detail


def wav(rate: int = 16000, seconds: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(int(rate * seconds), np.float32), rate, format="WAV")
    return buffer.getvalue()


TILE = f"/tiles/{Z}/{X}/{Y}.png"
ERRORS = [
    # (method, path, query parameters, extra request arguments, status, the sentence or a part of it)
    ("GET", TILE, {"q": "x", "hour": "25"}, {}, 422, "hour must be an integer in 0..23, not '25'"),
    ("GET", TILE, {"q": "x", "hour": "six"}, {}, 422, "hour must be an integer in 0..23, not 'six'"),
    ("GET", TILE, {"q": "x", "month": "13"}, {}, 422, "month must be an integer in 1..12, not '13'"),
    (
        "GET",
        TILE,
        {"q": "x", "layer": "noise"},
        {},
        422,
        "layer must be one of heatmap, contrast, uncertainty, not 'noise'",
    ),
    ("GET", TILE, {"q": "x", "tilesize": "big"}, {}, 422, "tilesize must be one of 256, 512, not 'big'"),
    (
        "GET",
        TILE,
        {"q": "x" * 600},
        {},
        422,
        "q: text must be at most 500 characters once case-folded and single-spaced, not 600",
    ),
    ("GET", TILE, {"q": "x" * 9000}, {}, 422, "q must be a text of at most 8192 characters, not 'xxxx"),
    ("GET", "/search", {"q": "x", "k": "5000"}, {}, 422, "k must be an integer in 1..1000, not '5000'"),
    ("GET", "/search", {"q": "x", "exact": "maybe"}, {}, 422, "exact must be true or false, not 'maybe'"),
    ("GET", "/search", {"q": "x", "k": "1", "hour": "99"}, {}, 422, "hour must be an integer in 0..23, not '99'"),
    (
        "GET",
        f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.jpg",
        {"q": "x"},
        {},
        422,
        "fmt must be one of png, webp, npy, tif, not 'jpg'",
    ),
    ("GET", f"/tiles/a/{X}/{Y}.png", {"q": "x"}, {}, 422, "z must be an integer, not 'a'"),
    ("GET", "/point/ten,10", {"q": "x"}, {}, 422, "lon must be a number in -180..180, not 'ten'"),
    ("GET", "/point/10,nan", {"q": "x"}, {}, 422, "lat must be a finite number in -90..90, not 'nan'"),
    ("GET", "/colormaps/viridis", {"width": "0"}, {}, 422, "width must be an integer in 1..2048, not '0'"),
    (
        "GET",
        TILE,
        {"q": "x", "colormap": '{"0": "#000000", "255": "#ffffff"}'},
        {},
        422,
        "colormap is not supported: pick a named colormap with colormap_name",
    ),
    (
        "GET",
        "/tilejson.json",
        {"q": "x", "colormap": "[[[0, 1], [0, 0, 0, 255]]]"},
        {},
        422,
        "colormap is not supported",
    ),
    ("GET", TILE, {"q": "x", "expression": "b1*2"}, {}, 422, "expression is not supported"),
    ("GET", TILE, {"q": "x", "rescale": "0,1e9"}, {}, 422, "within -1000..1000"),
    ("GET", TILE, {"q": "x", "rescale": "0.5,0.5000001"}, {}, 422, "at least 1e-06"),
    ("GET", TILE, {"q": "x", "rescale": "inf,1"}, {}, 422, "finite"),
    ("GET", TILE, {"query": "0" * 16}, {}, 404, "unknown query id"),
    ("GET", TILE, {"query": "f" * 5000}, {}, 422, "query must be a 16-hex-digit id from POST /queries, not 'ffff"),
    ("GET", "/queries/ffffffffffffffff", {}, {}, 404, "unknown query id"),
    ("GET", "/no/such/route", {}, {}, 404, "nothing at /no/such/route: GET /openapi.json lists the routes"),
    ("GET", "/static/no-such-file.js", {}, {}, 404, "nothing at /static/no-such-file.js"),
    ("POST", TILE, {}, {}, 405, f"{TILE} answers GET and HEAD only"),
    ("DELETE", "/queries", {}, {}, 405, "/queries answers POST only"),
    (
        "POST",
        "/queries",
        {},
        {"content": b"not audio at all " * 8, "headers": {"Content-Type": "audio/wav"}},
        415,
        "cannot read the upload as audio",
    ),
    ("POST", "/queries", {}, {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "not 'text/plain'"),
    ("POST", "/queries", {}, {"content": b"{", "headers": {"Content-Type": "application/json"}}, 422, "not valid JSON"),
]


@pytest.mark.parametrize(
    "method,path,params,extra,status,sentence", ERRORS, ids=[f"{m} {p} {sorted(q)} {s}" for m, p, q, _, s, _ in ERRORS]
)
def test_every_error_is_one_sentence_in_detail(client, method, path, params, extra, status, sentence):
    r = client.request(method, path, params=params, **extra)
    assert r.status_code == status, (r.status_code, r.text)
    assert sentence in one_sentence(r)
    if status == 405:
        assert "HEAD" in r.headers["allow"] or r.headers["allow"] == "POST"


def test_openapi_documents_the_error_model_and_media_types(client):
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["ErrorBody"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schemas, "FastAPI's list-shaped 422 must not be documented"
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    codes = set()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    codes.add(int(code))
                    assert response["content"] == {"application/json": {"schema": error_ref}}, (method, path, code)
            params = [p for p in operation.get("parameters", []) if p["in"] in ("query", "path")]
            if params:
                assert "422" in operation["responses"], (method, path)
            # the connection answers these to any request (server.protocol)
            assert {"408", "414", "431"} <= set(operation["responses"]), (method, path)
    assert {400, 404, 413, 415, 422, 429, 503} <= codes
    paths = document["paths"]
    assert list(paths["/search"]["get"]["responses"]["200"]["content"]) == ["application/geo+json"]
    assert set(paths["/tiles/{tms}/{z}/{x}/{y}.{fmt}"]["get"]["responses"]["200"]["content"]) == {
        "image/png",
        "image/webp",
        "application/x-npy",
        "image/tiff; application=geotiff",
    }
    assert list(paths["/WMTSCapabilities.xml"]["get"]["responses"]["200"]["content"]) == ["application/xml"]
    search = client.get("/search", params={"q": "birdsong", "k": 2})
    assert search.headers["content-type"] == "application/geo+json"


def requests_counted(route: str, method: str, status: int) -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return REGISTRY.get_sample_value("soundscape_requests_total", labels) or 0.0


def test_metrics_label_requests_by_route_template(client):
    before = {
        key: requests_counted(*key)
        for key in [
            ("/static", "GET", 200),
            ("/static", "GET", 404),
            ("unmatched", "GET", 404),
            ("/search", "HEAD", 200),
            ("/tiles/{z}/{x}/{y}.png", "GET", 422),
        ]
    }
    client.get("/static/viewer.css")
    client.get("/static/missing.css")
    client.get("/not/a/route")
    client.head("/search", params={"q": "birdsong"})
    client.get(TILE, params={"q": "x", "hour": 30})
    for key, count in before.items():
        assert requests_counted(*key) == count + 1, key
    text = client.get("/metrics").text
    assert 'soundscape_requests_total{method="GET",route="/static",status="200"}' in text
    other = requests_counted("/", "other", 405)
    assert client.request("FOOBAR", "/").status_code == 405
    assert requests_counted("/", "other", 405) == other + 1, "a method outside HTTP's set makes no new label"


def test_an_error_that_is_not_json_yet_takes_the_one_shape(client):
    """Starlette's StaticFiles refuses an inverted range in plain text; the client sees the shape."""
    refused = client.get("/static/viewer.js", headers={"Range": "bytes=9-0"})
    assert refused.status_code == 400 and "start must be less than end" in one_sentence(refused)


def test_a_refused_cors_preflight_says_what_is_not_allowed_and_how_it_would_be(client, bundle_path, store_path):
    """Starlette refused a preflight with "Disallowed CORS origin" (or "method"): the page's
    developer was told neither which nor how the server's operator allows it."""
    listed = make_client(bundle_path, store_path, cors_origins=("https://maps.example.org",))
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"}
    refused = listed.options(TILE, headers=preflight)
    assert refused.status_code == 400 and one_sentence(refused) == (
        "the origin 'https://elsewhere.example' is not one of this server's CORS origins: its operator allows it "
        "by adding it to SOUNDSCAPE_CORS_ORIGINS (serve --cors-origins)"
    )
    method = "the method 'DELETE' is not one this server answers a page on another origin: GET, HEAD, POST only"
    deleting = {**preflight, "Access-Control-Request-Method": "DELETE"}
    assert one_sentence(client.options(TILE, headers=deleting)) == method, "any origin (*), not that method"
    both = one_sentence(listed.options(TILE, headers=deleting))
    assert both.startswith("the origin 'https://elsewhere.example' is not one") and both.endswith(f"; {method}")
    allowed = listed.options(TILE, headers={**preflight, "Origin": "https://maps.example.org"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://maps.example.org"


def test_a_client_that_hangs_up_is_counted_as_499_not_500(bundle_path, store_path):
    """Uploads whose clients hang up half-way, on a real uvicorn: nobody is left to answer, and
    /metrics counts them as 499, not as a server error (or the 400 the app answered nobody)."""
    with live_server(bundle_path, store_path) as base:
        host, port = base.removeprefix("http://").split(":")
        for _ in range(3):
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(
                    b"POST /queries HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\n"
                    b"Content-Length: 100000\r\n\r\n" + wav()[:400]
                )
                time.sleep(0.1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = httpx.get(f"{base}/metrics").text
            if 'soundscape_requests_total{method="POST",route="/queries",status="499"} 3.0' in text:
                break
            time.sleep(0.2)
        assert 'soundscape_requests_total{method="POST",route="/queries",status="499"} 3.0' in text
        assert 'route="/queries",status="500"' not in text and 'route="/queries",status="400"' not in text


def test_rescale_is_canonical_before_it_keys_or_colours_a_tile(client):
    def tile(rescale):
        r = client.get(TILE, params={"q": "birdsong", "rescale": rescale})
        assert r.status_code == 200, r.text
        return r

    base = tile("0,0.3")
    for same in ("0,0.30001", "0.00001,0.3", "-0.0,0.29999", "0e0,3e-1"):
        r = tile(same)
        assert r.headers["etag"] == base.headers["etag"] and r.content == base.content, same
    assert tile("0,0.301").headers["etag"] != base.headers["etag"], "a visible change is a new tile"
    tilejson = client.get("/tilejson.json", params={"q": "birdsong", "rescale": "0.1234567,0.5"}).json()
    assert tilejson["rescale"] == [0.1235, 0.5], "what is drawn is what TileJSON reports"
    narrow = client.get("/tilejson.json", params={"layer": "uncertainty", "rescale": "0.5623693,0.5673390"}).json()
    assert narrow["rescale"] == [0.562369, 0.567339], "4 significant digits of the span, not of the values"


def test_unknown_parameters_such_as_cache_busters_are_still_accepted(client):
    r = client.get(TILE, params={"q": "birdsong", "_": "1733040000", "v": "2"})
    assert r.status_code == 200


def test_if_none_match_star_matches_only_a_tile_that_exists(client, query_id):
    star = {"If-None-Match": "*"}
    unknown = client.get(TILE, params={"query": "0123456789abcdef"}, headers=star)
    assert unknown.status_code == 404 and "unknown query id" in one_sentence(unknown)
    known = client.get(TILE, params={"query": query_id}, headers=star)
    assert known.status_code == 304 and known.content == b""
    assert client.get(TILE, params={"q": "birdsong"}, headers=star).status_code == 304


def test_wmts_is_well_formed_xml_for_any_query_text(client):
    text = "birdsong [31m <&>\"' \ufffe\U0001f426"
    r = client.get("/WMTSCapabilities.xml", params={"q": text})
    assert r.status_code == 200
    assert client.get("/WMTSCapabilities.xml", params={"q": "bird\x00song\x01"}).status_code == 422
    root = ET.fromstring(r.content)  # raises on a character XML cannot hold
    ns = {"ows": "http://www.opengis.net/ows/1.1", "wmts": "http://www.opengis.net/wmts/1.0"}
    titles = [t.text for t in root.iterfind(".//wmts:Layer/ows:Title", ns)]
    assert "soundscape heatmap: birdsong [31m <&>\"' \U0001f426" in titles

"""HTTP behaviour: ETag and 304 without rendering, HEAD, Cache-Control on successes only, CORS,
gzip for JSON, a 4xx with a message for every bad request, metrics and OpenAPI."""

import gzip
import inspect
import io
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime

import deflate
import numpy as np
import pytest
from PIL import Image

from server import render
from server.routes import meta, queries, rest, tiles, viewer
from tests.server_support import make_client

ROUTERS = (tiles.router, queries.router, rest.router, meta.router, viewer.router)

TILE = "/tiles/4/8/6.png"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path, cache_control="public, max-age=60")


def test_etag_answers_304_without_rendering_even_in_a_fresh_process(client, bundle_path, store_path):
    first = client.get(TILE, params={"q": "birdsong", "hour": 6})
    etag = first.headers["etag"]
    assert etag.startswith('"') and first.headers["cache-control"] == "public, max-age=60"
    fresh = make_client(bundle_path, store_path, cache_control="public, max-age=60")
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        r = fresh.get(TILE, params={"hour": 6, "q": "  BIRDSONG"}, headers={"If-None-Match": header})
        assert r.status_code == 304 and r.content == b""
        assert r.headers["etag"] == etag and r.headers["cache-control"] == "public, max-age=60"
    stats = fresh.app.state.service.stats
    assert stats["renders"] == stats["fusions"] == stats["text_encodings"] == 0
    assert fresh.get(TILE, params={"q": "birdsong"}, headers={"If-None-Match": etag}).status_code == 200


def test_an_upgraded_encoder_names_its_tiles_and_maps_anew(client, bundle_path, store_path, monkeypatch):
    """A strong ETag names bytes: once libdeflate (or another encoder) is upgraded, a server's
    tiles may differ in their bytes, so its tags and cache keys differ from the older server's."""
    paths = (TILE, "/collections/contrast/map?width=64&height=64&f=tif")
    old = {path: client.get(path, params={"q": "birdsong"}).headers["etag"] for path in paths}
    assert f"deflate {deflate.__version__}" in render.ENCODERS
    monkeypatch.setattr(render, "ENCODERS", render.ENCODERS.replace(deflate.__version__, deflate.__version__ + ".1"))
    upgraded = make_client(bundle_path, store_path, cache_control="public, max-age=60")
    for path in paths:
        r = upgraded.get(path, params={"q": "birdsong"}, headers={"If-None-Match": old[path]})
        assert r.status_code == 200 and r.headers["etag"] not in (old[path], None), path


def test_etag_names_the_content(client):
    def etag(path=TILE, **params):
        return client.get(path, params={"q": "birdsong", **params}).headers["etag"]

    base = etag()
    assert etag(colormap_name="viridis") != base
    assert etag(hour=3) != base
    assert etag("/tiles/4/8/7.png") != base
    assert etag("/tiles/WebMercatorQuad/4/8/6.png") == base, "the alias is the same resource"
    assert etag("/tiles/WebMercatorQuad/4/8/6.webp") != base


def test_the_basemap_at_a_pixel_ratio_is_the_same_picture_at_512_px(client):
    """The viewer's basemap was 256 px on every screen, blurred on a high-DPI one: `@2x` (MapLibre's
    `{ratio}` there) draws the same tile at 512 px."""
    plain, double = (client.get(f"/basemap/3/4/2{ratio}.webp") for ratio in ("", "@2x"))
    assert plain.status_code == double.status_code == 200 and double.headers["content-type"] == "image/webp"
    assert plain.headers["etag"] != double.headers["etag"]
    small, large = (Image.open(io.BytesIO(r.content)).convert("RGB") for r in (plain, double))
    assert (small.size, large.size) == ((256, 256), (512, 512))
    shrunk = np.asarray(large.resize((256, 256), Image.Resampling.BOX), np.float32)
    assert np.abs(shrunk - np.asarray(small, np.float32)).mean() < 8, "the same place, twice as sharp"
    assert client.get("/basemap/3/4/2@1x.webp").content == plain.content


def test_head_matches_get_without_a_body(client):
    get = client.get(TILE, params={"q": "birdsong"})
    head = client.head(TILE, params={"q": "birdsong"})
    assert head.status_code == 200 and head.content == b""
    for name in ("etag", "content-type", "content-length", "cache-control"):
        assert head.headers[name] == get.headers[name]
    assert client.head("/tiles/2/9/0.png", params={"q": "birdsong"}).status_code == 404


# Every kind of answer with a body, and what its caching policy (server/http.CACHE_POLICIES) gives it.
CACHED_ANSWERS = [
    ("/tilejson.json", {"q": "birdsong"}, "public, max-age=60", "W/"),
    ("/WMTSCapabilities.xml", {"layer": "uncertainty"}, "public, max-age=60", "W/"),
    ("/search", {"q": "birdsong", "k": 2}, "public, max-age=60", "W/"),
    ("/point/10.5,47.2", {"q": "birdsong"}, "public, max-age=60", "W/"),
    ("/tileMatrixSets", {}, "public, max-age=60", "W/"),
    ("/tiles", {"q": "birdsong"}, "public, max-age=60", "W/"),
    ("/tiles/WebMercatorQuad", {"q": "birdsong"}, "public, max-age=60", "W/"),
    ("/colormaps", {}, "public, max-age=60", "W/"),
    ("/colormaps/magma", {"width": 8}, "public, max-age=60", '"'),
    ("/basemap/3/4/2.webp", {}, "public, max-age=60", '"'),
    ("/basemap/3/4/2@2x.webp", {}, "public, max-age=60", '"'),
    ("/", {}, "no-cache", "W/"),
    ("/docs", {}, "no-cache", "W/"),
    ("/static/viewer.js", {}, "no-cache", "W/"),
]


@pytest.mark.parametrize(("path", "params", "cache_control", "tag_kind"), CACHED_ANSWERS)
def test_every_answer_with_a_body_is_conditional(client, path, params, cache_control, tag_kind):
    first = client.get(path, params=params)
    etag = first.headers["etag"]
    assert first.status_code == 200 and first.headers["cache-control"] == cache_control
    assert etag.startswith(tag_kind), "weak where GZip may re-encode the bytes, strong for images"
    assert client.get(path, params=params).headers["etag"] == etag, "the tag names the content"
    for held in (etag, etag.removeprefix("W/"), f'"other", {etag}'):
        again = client.get(path, params=params, headers={"If-None-Match": held})
        assert again.status_code == 304 and again.content == b""
        assert (again.headers["etag"], again.headers["cache-control"]) == (etag, cache_control)
    head = client.head(path, params=params, headers={"If-None-Match": etag})
    assert head.status_code == 304 and head.headers["etag"] == etag
    assert client.get(path, params=params, headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize("path", [f"{TILE}?q=birdsong", "/tilejson.json?q=birdsong", "/static/viewer.js"])
def test_a_condition_over_several_header_lines_is_one_list(client, path):
    """RFC 9110 5.3: lines of one header name are one comma-separated list. The first line alone
    was read: `If-Match: "x"` then the current tag on a second line answered 412, and a second
    line of If-None-Match naming the tag 200 instead of 304. Twice: the route, then the replay."""
    etag = client.get(path).headers["etag"]
    for _ in range(2):
        held = client.get(path, headers=[("If-None-Match", '"x"'), ("If-None-Match", etag)])
        assert held.status_code == 304
        if not etag.startswith("W/"):  # If-Match compares strongly: a weak tag never matches
            assert client.get(path, headers=[("If-Match", '"x"'), ("If-Match", etag)]).status_code == 200
        assert client.get(path, headers=[("If-Match", '"x"'), ("If-Match", '"y"')]).status_code == 412


def http_dates(moment: datetime) -> list[str]:
    """`moment` in the three forms of an HTTP-date (RFC 9110 5.6.7): IMF-fixdate, RFC 850, asctime."""
    return [
        moment.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        moment.strftime("%A, %d-%b-%y %H:%M:%S GMT"),
        moment.strftime("%a %b ") + f"{moment.day:2d}" + moment.strftime(" %H:%M:%S %Y"),
    ]


def test_every_form_of_an_http_date_is_read(client):
    """RFC 9110 5.6.7: a recipient must accept all three forms. asctime's, which names no zone
    (it is GMT), was ignored: If-Modified-Since of the file's own date answered 200, and
    If-Unmodified-Since of the day before 200."""
    modified = parsedate_to_datetime(client.get("/static/viewer.js").headers["last-modified"])
    for since in http_dates(modified):
        assert client.get("/static/viewer.js", headers={"If-Modified-Since": since}).status_code == 304, since
    for before in http_dates(modified - timedelta(days=1)):
        assert client.get("/static/viewer.js", headers={"If-Unmodified-Since": before}).status_code == 412, before


def test_live_answers_are_never_stored_nor_tagged(client):
    for path in ("/healthz", "/readyz", "/metrics"):
        r = client.get(path, headers={"If-None-Match": "*"})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store" and "etag" not in r.headers


def test_errors_are_never_cached(client):
    for path, params in ((TILE, {}), ("/tiles/1/5/0.png", {"q": "x"}), ("/queries/ffffffffffffffff", {})):
        r = client.get(path, params=params)
        assert r.status_code >= 400
        assert r.headers["cache-control"] == "no-store"


def test_cors(client, bundle_path, store_path):
    r = client.get(TILE, params={"q": "birdsong"}, headers={"Origin": "https://example.org"})
    assert r.headers["access-control-allow-origin"] == "*"
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "etag" in exposed and "content-range" in exposed, "geotiff.js reads a range's Content-Range"
    closed = make_client(bundle_path, store_path, cors_origins=())
    r = closed.get(TILE, params={"q": "birdsong"}, headers={"Origin": "https://example.org"})
    assert "access-control-allow-origin" not in r.headers


# Response headers every cross-origin page reads (the Fetch standard's CORS-safelisted ones), and
# those the browser itself reads (CORS, content coding, caching keys, the page's policy).
SAFELISTED = {"cache-control", "content-language", "content-length", "content-type", "expires", "last-modified"}
FOR_THE_BROWSER = {"vary", "content-encoding", "content-security-policy", "date", "server"}


def test_a_page_on_another_origin_reads_every_header_the_api_sets_for_clients(bundle_path, store_path):
    """A map's Content-Bbox and Content-Crs (docs/api.md: `f=npy` gives its box and CRS there) and
    a 429's Retry-After were not exposed: a web page on another origin never saw them."""
    origin = {"Origin": "https://maps.example.org"}
    with make_client(
        bundle_path, store_path, rate_limit="1/min burst 20", cors_origins=("https://maps.example.org",)
    ) as limited:
        answers = {
            "map": limited.get("/collections/contrast/map?q=birdsong&bbox=-12,34,32,60&width=64&f=npy", headers=origin),
            "range": limited.get(TILE, params={"q": "birdsong"}, headers={**origin, "Range": "bytes=0-9"}),
            "registered": limited.post("/queries", json={"text": "birdsong"}, headers=origin),
            "method": limited.post(TILE, headers=origin),
        }
        answers["limited"] = next(
            r
            for r in (limited.get(TILE, params={"q": "rain"}, headers=origin) for _ in range(30))
            if r.status_code == 429
        )
    statuses = {what: answer.status_code for what, answer in answers.items()}
    assert statuses == {"map": 200, "range": 206, "registered": 201, "method": 405, "limited": 429}
    seen = set()
    for what, answer in answers.items():
        assert answer.headers["access-control-allow-origin"] == origin["Origin"], what
        exposed = {name.strip().lower() for name in answer.headers["access-control-expose-headers"].split(",")}
        for name in answer.headers:
            if name not in SAFELISTED | FOR_THE_BROWSER and not name.startswith("access-control-"):
                assert name in exposed, f"{what}: {name} is not exposed"
                seen.add(name)
    assert {"content-bbox", "content-crs", "content-range", "location", "allow", "retry-after"} <= seen


def test_gzip_for_json_not_for_images(client):
    r = client.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and r.json()["openapi"].startswith("3.")
    raw = client.get("/openapi.json", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers
    tile = client.get(TILE, params={"q": "birdsong"}, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in tile.headers
    assert len(gzip.compress(raw.content)) < len(raw.content)


BAD_REQUESTS = [
    # tiles: outside the grid -> 404
    ("GET", "/tiles/2/4/0.png", {"q": "x"}, 404, "outside"),
    ("GET", "/tiles/2/0/4.png", {"q": "x"}, 404, "outside"),
    ("GET", "/tiles/2/-1/0.png", {"q": "x"}, 404, "outside"),
    ("GET", "/tiles/25/0/0.png", {"q": "x"}, 404, "outside"),
    ("GET", "/tiles/UTM31WGS84Quad/1/0/0.png", {"q": "x"}, 404, "unknown tile matrix set"),
    ("GET", "/tiles/WorldCRS84Quad/1/4/0.png", {"q": "x"}, 404, "outside the WorldCRS84Quad grid"),
    ("GET", "/tiles/WorldCRS84Quad/24/0/0.png", {"q": "x"}, 404, "zoom 0-23"),
    # tiles: malformed -> 422
    ("GET", "/tiles/a/0/0.png", {"q": "x"}, 422, "integer"),
    ("GET", "/tiles/WebMercatorQuad/1/0/0.jpg", {"q": "x"}, 422, "png"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "hour": 25}, 422, "hour must be an integer in 0..23, not '25'"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "month": 0}, 422, "month must be an integer in 1..12"),
    ("GET", "/tiles/3/4/3.png", {}, 422, "q (a text query"),
    ("GET", "/tiles/3/4/3.png", {"q": "   "}, 422, "must not be empty"),
    ("GET", "/tiles/3/4/3.png", {"q": "x" * 501}, 422, "500"),
    ("GET", "/tiles/3/4/3.png", {"q": " ?!"}, 422, "holds no word the text model knows"),
    ("GET", "/tiles/3/4/3.png", {"q": "\x00 ?!"}, 422, "holds a control character (U+0000)"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "layer": "noise"}, 422, "heatmap"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "source": "youtube"}, 422, "not 'youtube'"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "rescale": "1"}, 422, "rescale"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "rescale": "1,0"}, 422, "min < max"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "rescale": "nan,1"}, 422, "finite"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "colormap_name": "nope"}, 422, "colormap"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "tilesize": 300}, 422, "256"),
    ("GET", "/tiles/3/4/3.png", {"q": "x", "query": "0" * 16}, 422, "not both"),
    ("GET", "/tiles/3/4/3.png", {"query": "xyz"}, 422, "16-hex-digit"),
    ("GET", "/tiles/3/4/3.png", {"query": "0" * 16}, 404, "unknown query id"),
    ("POST", "/tiles/3/4/3.png", {"q": "x"}, 405, "answers GET and HEAD only"),
    # a parameter the route takes, given twice: neither is drawn silently
    ("GET", "/tiles/3/4/3.png", [("q", "rain"), ("q", "birdsong")], 422, "q is given 2 times"),
    ("GET", "/tiles/3/4/3.png", [("q", "x"), ("hour", "6"), ("hour", "6")], 422, "hour is given 2 times"),
    ("GET", "/tilejson.json", [("q", "x"), ("layer", "heatmap"), ("layer", "uncertainty")], 422, "layer is given 2"),
    # metadata endpoints
    ("GET", "/tilejson.json", {"q": "x", "hour": 24}, 422, "0..23"),
    ("GET", "/tilejson.json", {}, 422, "q (a text query"),
    ("GET", "/Nope/tilejson.json", {"q": "x"}, 404, "unknown tile matrix set"),
    ("GET", "/WMTSCapabilities.xml", {"q": "x", "source": "nope"}, 422, "source must be one of"),
    ("GET", "/Nope/WMTSCapabilities.xml", {}, 404, "unknown tile matrix set"),
    ("GET", "/colormaps/nope", {}, 404, "unknown colormap"),
    ("GET", "/colormaps/viridis", {"width": 0}, 422, "width must be an integer in 1..2048"),
    ("GET", "/basemap/1/2/0.webp", {}, 404, "outside"),
    ("GET", "/basemap/1/2/0@2x.webp", {}, 404, "outside"),
    ("GET", "/basemap/3/4/2@3x.webp", {}, 422, "scale must be an integer in 1..2, not '3'"),
    # queries
    ("GET", "/queries/ffffffffffffffff", {}, 404, "unknown query id"),
    ("GET", "/queries/not-an-id", {}, 404, "not a query id"),
    # REST
    ("GET", "/search", {}, 422, "q (a text query"),
    ("GET", "/search", {"q": "x", "k": 0}, 422, "k must be an integer in 1..1000"),
    ("GET", "/search", {"q": "x", "k": 1001}, 422, "k must be an integer in 1..1000"),
    ("GET", "/search", {"q": "x", "level": 2}, 422, "store's levels"),
    ("GET", "/search", [("q", "x"), ("k", "5"), ("k", "50")], 422, "k is given 2 times"),
    ("GET", "/search", {"q": "x", "bbox": "1,2,3"}, 422, "bbox must be four numbers west,south,east,north"),
    ("GET", "/search", {"q": "x", "bbox": "0,0,200,1"}, 422, "west and east in -180..180"),
    ("GET", "/search", {"q": "x", "bbox": "10,0,10,5"}, 422, "and apart"),
    ("GET", "/search", {"q": "x", "bbox": "0,5,10,5"}, 422, "south < north"),
    ("GET", "/search", {"q": "x", "bbox": "nan,0,1,1"}, 422, "west and east in -180..180"),
    ("GET", "/search", {"q": "x", "bbox": "0," * 101}, 422, "at most 200"),
    ("GET", "/point/200,10", {"q": "x"}, 422, "-180..180"),
    ("GET", "/point/10,nan", {"q": "x"}, 422, "finite"),
    ("GET", "/point/ten,10", {"q": "x"}, 422, "number"),
    ("GET", "/point/-120,40", {"q": "x"}, 404, "no cell"),
    ("GET", "/point/0,90", {"q": "x"}, 404, "no cell"),
    ("GET", "/point/-180,-90", {"q": "x"}, 404, "no cell"),
    ("GET", "/no/such/route", {}, 404, "nothing at /no/such/route"),
]


@pytest.mark.parametrize(
    "method,path,params,status,needle", BAD_REQUESTS, ids=[f"{m} {p} {s}" for m, p, _, s, _ in BAD_REQUESTS]
)
def test_bad_requests_get_a_4xx_with_a_message(client, method, path, params, status, needle):
    r = client.request(method, path, params=params)
    assert r.status_code == status
    assert needle.lower() in str(r.json()["detail"]).lower()


def test_a_repeated_parameter_no_route_takes_is_ignored(client):
    once = client.get("/tiles/4/8/6.png", params={"q": "birdsong"})
    busted = client.get("/tiles/4/8/6.png", params=[("q", "birdsong"), ("_", "1"), ("_", "2")])
    assert once.status_code == busted.status_code == 200 and busted.content == once.content


def test_health_readiness_and_metrics(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["cache"] == "memory"
    ready = client.get("/readyz").json()
    assert (ready["status"], ready["redis"]) == ("ready", "not configured")
    client.get(TILE, params={"q": "birdsong"})
    text = client.get("/metrics").text
    assert 'soundscape_requests_total{method="GET",route="/tiles/{z}/{x}/{y}.png",status="200"}' in text
    assert 'soundscape_cache_total{cache="tile",result="hit"}' in text


def test_openapi_documents_the_surface(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/tiles/{z}/{x}/{y}.png",
        "/tiles/{tms}/{z}/{x}/{y}.{fmt}",
        "/queries",
        "/queries/{query_id}",
        "/search",
        "/point/{lon},{lat}",
        "/tilejson.json",
        "/WMTSCapabilities.xml",
        "/colormaps/{colormap_name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths


def test_no_route_dependency_runs_in_the_thread_pool():
    """FastAPI runs a plain function or a class dependency in its thread pool, a hop of CPU on
    every request; every dependency of every route is a coroutine, run in the event loop."""

    def calls(dependant):
        for sub in dependant.dependencies:
            yield sub.call
            yield from calls(sub)

    routes = [route for router in ROUTERS for route in router.routes]
    assert len(routes) > 10
    for route in routes:
        for call in calls(route.dependant):
            assert inspect.iscoroutinefunction(call), f"{route.path}: {call} runs in the thread pool"


def test_tile_parameters_are_documented_one_by_one(client):
    operation = client.get("/openapi.json").json()["paths"]["/tiles/{z}/{x}/{y}.png"]["get"]
    names = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    assert {"q", "query", "hour", "month", "source", "layer", "colormap_name", "rescale", "tilesize"} <= names
    hour = next(p for p in operation["parameters"] if p["name"] == "hour")
    assert hour["schema"]["anyOf"][0] == {"type": "integer", "maximum": 23, "minimum": 0}
    assert client.get("/tiles/4/8/6.png", params={"q": "birdsong", "hour": 24}).status_code == 422
    assert "colormap is not supported" in client.get("/tiles/4/8/6.png", params={"q": "a", "colormap": "x"}).text

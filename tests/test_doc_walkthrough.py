"""docs/api.md read as a user reads it, through the ASGI app over the test bundle and store: the
curl examples' GET URLs answer what the text says, every example `detail` of the errors table is
the server's own sentence for the request it describes, the limits the text states are the ones
enforced (read from the text, probed at the limit and one past it), and the WMTS layers, the
uncertainty layer's scale and the full registry's 507 are as written. tests/test_doc_snippets.py
runs the same examples verbatim against a real uvicorn (slow); this is the fast set."""

from __future__ import annotations

import io
import re
import time
import xml.etree.ElementTree as ET

import anyio
import numpy as np
import pytest
import soundfile
from PIL import Image

from server.queries import QueryError
from server.service import Places
from server.settings import Settings
from tests.server_support import REPO, make_client

API = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
STORE_DOC = (REPO / "docs" / "store.md").read_text(encoding="utf-8")
RELIABILITY = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
ADDRESS = "http://127.0.0.1:8000"
WMTS = "{http://www.opengis.net/wmts/1.0}"
OWS = "{http://www.opengis.net/ows/1.1}"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def doc_text(pattern: str, text: str = API) -> re.Match:
    """The docs' sentence this test holds the server to (fails when the docs drop it)."""
    found = re.search(pattern, text, re.S)
    assert found, f"the docs no longer say {pattern!r}: update this test with them"
    return found


def wav(seconds: float, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(round(seconds * rate), np.int16), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


# The curl examples -----------------------------------------------------------------------------


def curl_gets() -> list[tuple[str, str]]:
    """(path, what the line's comment says) of each GET in the curl block, as copied."""
    block = doc_text(r"curl:\s*```bash\n(.*?)```").group(1)
    found = []
    for line in block.strip().splitlines():
        command, _, comment = line.partition("   # ")
        if " -X " in command or " -F " in command or "--data-binary" in command:
            continue
        found.append((re.search(rf"'{re.escape(ADDRESS)}(/[^']*)'", command).group(1), comment.strip()))
    return found


def test_the_curl_examples_get_what_the_text_says(client):
    gets = curl_gets()
    assert len(gets) >= 7, "tiles, npy, search (with bbox), point, metadata, the ETag pair"
    etag = None
    for path, comment in gets:
        if "<etag>" in comment or comment == "304":
            r = client.get(path, headers={"If-None-Match": etag})
            assert r.status_code == 304 and r.headers["etag"] == etag, path
            continue
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:200])
        etag = r.headers.get("etag", etag)
        if path.startswith("/search"):
            body = r.json()
            assert body["type"] == "FeatureCollection" and len(body["features"]) <= 5
            bbox = re.search(r"bbox=([-\d.,]+)", path)
            if bbox:  # "only cells centred in the box (W,S,E,N)"
                west, south, east, north = map(float, bbox.group(1).split(","))
                for feature in body["features"]:
                    lon, lat = feature["geometry"]["coordinates"]
                    assert west <= lon <= east and south <= lat <= north
        if path.startswith("/metadata"):  # "sources, hours, months, layers"
            assert set(r.json()) == {"source", "hour", "month", "layer"}


def test_the_point_example_has_the_documented_keys(client):
    example = doc_text(r"```json\n(\{\"coordinates\".*?)```").group(1)
    top_level = re.sub(r"\{[^{}]*\}", "0", example.split('"hours"')[0][1:])  # nested objects out
    documented = set(re.findall(r'"(\w+)":', top_level))
    path = next(p for p, _ in curl_gets() if p.startswith("/point/"))
    body = client.get(path).json()
    assert documented - {"hour"} <= set(body), "every top-level key of the example (hour: as asked)"
    assert set(body["cell"]) == {"level", "lon", "lat"}
    assert {"hours", "months", "by_source"} <= set(body)
    assert len(body["hours"]) == 24 and len(body["months"]) == 12
    assert body["by_source"][0]["source"] is None


# The errors table ------------------------------------------------------------------------------


def error_examples() -> dict[int, list[str]]:
    table = doc_text(r"\| status \| when \| example `detail` \|\n\|[-|]+\n(.*?)\n\n").group(1)
    rows = {}
    for row in table.splitlines():
        status = int(row.split("|")[1])
        rows.setdefault(status, []).extend(re.findall(r"`([^`]+)`", row.rsplit("|", 2)[1]))
    return rows


def test_every_error_status_is_declared_in_the_openapi_document(client):
    """The table's statuses that operations answer are declared as ErrorBody responses."""
    declared = {
        int(code)
        for operations in client.get("/openapi.json").json()["paths"].values()
        for operation in operations.values()
        for code in operation["responses"]
        if code[0] in "45"
    }
    # 405, 429 and 500 come from the method check and the rate limiter, before or beside any
    # operation (the connection's 408, 414 and 431 are declared on every operation).
    assert set(error_examples()) - {405, 429, 500} <= declared


# The request each example of the table describes.
ERROR_REQUESTS = {
    "the Host header is not one of this server's allowed hosts ...": (
        "GET",
        "/tilejson.json?q=birdsong",
        {"headers": {"host": "evil.example"}},
    ),
    "nothing at /tile/1/0/0.png: GET /openapi.json lists the routes": ("GET", "/tile/1/0/0.png", {}),
    "/tiles/1/0/0.png answers GET and HEAD only": ("POST", "/tiles/1/0/0.png", {}),
    "audio is 75.0 s long; the limit is 60 s": (
        "POST",
        "/queries",
        {"content": wav(75), "headers": {"content-type": "audio/wav"}},
    ),
    "cannot read the upload as audio (wav, flac, ogg or mp3): Error opening the upload: Format not recognised.": (
        "POST",
        "/queries",
        {"content": b"hello world" * 10, "headers": {"content-type": "audio/wav"}},
    ),
    "hour must be an integer in 0..23, not '25'": ("GET", "/tiles/3/4/2.png?q=birdsong&hour=25", {}),
    "k must be an integer in 1..1000, not '5000'": ("GET", "/search?q=birdsong&k=5000", {}),
    "fmt must be one of png, webp, npy, tif, not 'jpg'": ("GET", "/tiles/WebMercatorQuad/3/4/2.jpg?q=birdsong", {}),
}
# Examples the ASGI app cannot produce on request: the connection's (server/protocol.py, a real
# socket: tests/test_server_hardening.py), a bug's; the module that words each must still say it.
WORDED_IN = {
    "the request head did not arrive within 10 s": "server/protocol.py",
    "the request line (method, path and query) is over 16384 bytes": "server/protocol.py",
    "the request line and headers are over 16384 bytes": "server/protocol.py",
    "the server failed on this request; the error is logged": "server/http.py",
}
# Examples with a test of their own below.
OWN_TEST = {
    400: "CORS origins",
    503: "large fusions are running",
    429: "too many requests",
    507: "the query registry is full",
}


def test_every_error_example_is_the_servers_sentence(client):
    examples = {(status, example) for status, found in error_examples().items() for example in found}
    own = {(status, e) for status, e in examples if OWN_TEST.get(status, "\0") in e}
    assert {status for status, _ in own} == set(OWN_TEST)
    assert {e for _, e in examples - own} == set(ERROR_REQUESTS) | set(WORDED_IN), "a new example: map it here"
    for status, example in sorted(examples - own):
        if example in ERROR_REQUESTS:
            method, path, options = ERROR_REQUESTS[example]
            r = client.request(method, path, **options)
            assert r.status_code == status and r.headers["cache-control"] == "no-store", (example, r.text)
            said = r.json()["detail"]
            assert said == example or (example.endswith(" ...") and said.startswith(example[:-4])), (example, said)
        else:
            code = (REPO / WORDED_IN[example]).read_text(encoding="utf-8")
            assert re.sub(r"\d+ s$| \d+ bytes$", "", example) in code, (example, WORDED_IN[example])


def test_the_fusion_queue_example_is_what_a_search_past_it_gets(client):
    """The 503 of the table, from the service's own queue of large fusions: one running, the
    queue's cells all waiting, one more refused."""
    example = next(e for e in error_examples()[503] if OWN_TEST[503] in e)
    queue = client.app.state.service.large_fusions
    fresh = Places(queue.count, queue.what, queue.why, waiting=queue.waiting, unit=queue.unit)

    async def refused() -> QueryError:
        async with anyio.create_task_group() as group, fresh.place(1):

            async def waiter() -> None:
                async with fresh.place(queue.waiting):
                    pass

            group.start_soon(waiter)
            await anyio.sleep(0.05)
            with pytest.raises(QueryError) as error:
                async with fresh.place(1536):
                    pass
        return error.value

    error = anyio.run(refused)
    assert error.status == 503 and error.retry_after_s == 5
    assert str(error).startswith(example.removesuffix(" ...")), (str(error), example)


def test_the_rate_limit_example_is_what_a_client_over_it_gets(bundle_path, store_path):
    limited = make_client(bundle_path, store_path, rate_limit="20/s burst 40")
    began = time.monotonic()
    answers = [limited.get("/metadata")]
    # Until the first 429: tokens come back at 20/s while the requests run, so on a busy machine,
    # where a request took over 1/60 s, 60 requests had all been answered.
    while answers[-1].status_code != 429 and len(answers) < 2000:
        answers.append(limited.get("/metadata"))
    elapsed = time.monotonic() - began
    refused = [r for r in answers if r.status_code == 429]
    assert all(r.status_code == 200 for r in answers[:40]), "the burst"
    assert refused and len(answers) - len(refused) <= 40 + 20 * elapsed + 1
    example = next(e for e in error_examples()[429] if OWN_TEST[429] in e)
    assert refused[0].json()["detail"] == example and refused[0].headers["retry-after"] == "1"


# Limits stated in the text ---------------------------------------------------------------------


def test_the_json_body_limit_is_the_documented_one(client):
    kib = int(doc_text(r"JSON\s+bodies over (\d+) KiB").group(1))
    for size, status in ((kib * 1024, 422), (kib * 1024 + 1, 413)):
        body = b'{"text": "' + b"a" * (size - 12) + b'"}'
        assert len(body) == size
        r = client.post("/queries", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (size, r.text)  # 422 at the limit: the text is over 500 characters


def test_the_text_length_limit_is_the_documented_one(client):
    chars = int(doc_text(r"text <= (\d+) characters", RELIABILITY).group(1))
    text = ("birdsong " * chars)[:chars]
    assert client.get("/tiles/3/4/2.png", params={"q": text}).status_code == 200
    over = client.get("/tiles/3/4/2.png", params={"q": text + "s"})
    assert over.status_code == 422 and f"at most {chars} characters" in over.json()["detail"]
    json_over = client.post("/queries", json={"text": text + "s"})
    assert json_over.status_code == 422


@pytest.mark.parametrize(
    ("pattern", "path", "name"),
    [
        (r"`k` is (\d+)\.\.(\d+)", "/search?q=birdsong&k={}", "k"),
        (r"\| `hour` \| (\d+)\.\.(\d+) \|", "/tiles/3/4/2.png?q=birdsong&hour={}", "hour"),
        (r"\| `month` \| (\d+)\.\.(\d+) \|", "/tiles/3/4/2.png?q=birdsong&month={}", "month"),
        (r"x or y not in (\d+)\.\.2\^z-1, z > (\d+)", "/tiles/{}/0/0.png?q=birdsong", "z"),
    ],
)
def test_ranges_in_the_text_are_the_enforced_ones(client, pattern, path, name):
    low, high = (int(v) for v in doc_text(pattern).groups())
    if name == "z":  # "z > 24": 404 past the grid's deepest zoom, none below 0 in a path
        low, high = 0, high
    for value in (low, high):
        assert client.get(path.format(value)).status_code == 200, (name, value)
    past = [high + 1] + ([low - 1] if name != "z" else [])
    for value in past:
        assert client.get(path.format(value)).status_code == (404 if name == "z" else 422), (name, value)


def test_rescale_limits_are_the_documented_ones(client):
    limit, span = doc_text(r"finite, within -(\d+)\.\.\d+, max - min at least ([\d.e-]+)").groups()
    limit, span = float(limit), float(span)

    def status(rescale: str) -> int:
        return client.get("/tiles/3/4/2.png", params={"q": "birdsong", "rescale": rescale}).status_code

    assert status(f"{-limit:g},{limit:g}") == 200 and status(f"0,{span:g}") == 200
    assert status(f"{-limit - 1:g},0") == 422 and status(f"0,{limit + 1:g}") == 422
    assert status(f"0,{span * 0.99:g}") == 422 and status("nan,1") == 422


def test_the_upload_limits_are_the_documented_ones(client):
    seconds = int(doc_text(r"`SOUNDSCAPE_MAX_AUDIO_S` \((\d+) s\)").group(1))
    ok = client.post("/queries", content=wav(seconds), headers={"content-type": "audio/wav"})
    long = client.post("/queries", content=wav(seconds + 0.5), headers={"content-type": "audio/wav"})
    assert ok.status_code == 201 and long.status_code == 413
    megabytes = int(doc_text(r"bodies over `SOUNDSCAPE_MAX_UPLOAD_MB` \((\d+)\)").group(1))
    big = client.post("/queries", content=b"\0" * (megabytes * 2**20 + 1), headers={"content-type": "audio/wav"})
    assert big.status_code == 413 and str(megabytes * 2**20) in big.json()["detail"]


# Documents -------------------------------------------------------------------------------------


def wmts_layers(client, **params) -> list[str]:
    r = client.get("/WMTSCapabilities.xml", params=params)
    assert r.status_code == 200
    contents = ET.fromstring(r.content).find(f"{WMTS}Contents")
    return [layer.find(f"{OWS}Identifier").text for layer in contents.findall(f"{WMTS}Layer")]


def test_wmts_lists_the_layers_the_text_names(client):
    doc_text(
        r"layers `heatmap` and `contrast` \(when `q` or `query` is given; `layer=heatmap` or\s+`layer=uncertainty`"
    )
    assert wmts_layers(client, q="birdsong") == ["heatmap", "contrast", "uncertainty"]
    assert wmts_layers(client, q="birdsong", layer="contrast") == ["heatmap", "contrast", "uncertainty"]
    assert wmts_layers(client, q="birdsong", layer="heatmap") == ["heatmap", "uncertainty"]
    assert wmts_layers(client, q="birdsong", layer="uncertainty") == ["heatmap", "uncertainty"]
    assert wmts_layers(client) == ["uncertainty"]
    # The QGIS instructions name every layer a query's capabilities offer.
    pick = doc_text(r"then pick (`\w+`(?:, `\w+`)* or `\w+`)").group(1)
    assert set(re.findall(r"`(\w+)`", pick)) == set(wmts_layers(client, q="birdsong"))


def test_the_uncertainty_scale_is_the_percentiles_the_docs_name(client, store_path):
    low, high = (int(v) for v in doc_text(r"`uncertainty_range` \((\d)\w\w to (\d+)\w\w percentile of S\)").groups())
    stored = doc_text(r"`uncertainty_range` \((\d)\w\w and (\d+)\w\w percentile of S over all cells\)", STORE_DOC)
    assert (low, high) == tuple(int(v) for v in stored.groups())
    s = np.concatenate([np.load(path) for path in sorted(store_path.glob("levels/*/s.npy"))])
    scale = client.get("/tilejson.json", params={"layer": "uncertainty"}).json()["scale"]
    # rounded as every layer's default scale is, outwards: no value of the range is clipped
    rounding = r"the uncertainty range's too, are rounded to (\d) significant digits of their span, outwards"
    digits = int(doc_text(rounding).group(1))
    lo, hi = float(np.percentile(s, low)), float(np.percentile(s, high))
    step = 10.0 ** (np.floor(np.log10(hi - lo)) - digits + 1)
    for end in (scale["min"], scale["max"]):
        assert end / step == pytest.approx(round(end / step), abs=1e-6), (end, step)
    assert lo - step < scale["min"] <= lo and hi <= scale["max"] < hi + step
    ordinal = {1: "1st", 2: "2nd", 98: "98th", 99: "99th"}
    assert f"{ordinal[low]} to {ordinal[high]} percentile" in scale["method"], scale["method"]


def test_the_cors_example_is_what_a_preflight_from_another_origin_gets(bundle_path, store_path):
    example = next(e for e in error_examples()[400] if OWN_TEST[400] in e)
    with make_client(bundle_path, store_path, cors_origins=("https://maps.example.org",)) as client:
        refused = client.options(
            "/tiles/1/0/0.png",
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
        )
    assert refused.status_code == 400 and refused.json()["detail"] == example


def test_a_full_registry_answers_507_as_written(bundle_path, store_path):
    doc_text(r"a full registry \(`SOUNDSCAPE_MAX_QUERIES`, [\d,]+\) answers 507")
    full = make_client(bundle_path, store_path, max_queries=1)
    assert full.post("/queries", json={"text": "birdsong"}).status_code == 201
    refused = full.post("/queries", json={"text": "rain"})
    assert refused.status_code == 507 and "SOUNDSCAPE_MAX_QUERIES" in refused.json()["detail"]
    example = next(e for e in error_examples()[507] if OWN_TEST[507] in e)
    assert refused.json()["detail"] == example.replace("100000", "1")
    responses = full.get("/openapi.json").json()["paths"]["/queries"]["post"]["responses"]
    assert "507" in responses
    assert "507" in Settings.model_fields["max_queries"].description  # what `serve --help` prints


def test_a_tile_without_cells_is_a_transparent_200_as_written(client):
    doc_text(r"Inside the grid without cells: \*\*200 with a fully\s+transparent tile\*\* \(all-NaN for npy\)")
    png = client.get("/tiles/3/0/0.png", params={"q": "birdsong"})  # the Pacific: the test store is Europe
    assert png.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(png.content))).max() == 0, "palette index 0: transparent"
    npy = client.get("/tiles/WebMercatorQuad/3/0/0.npy", params={"q": "birdsong"})
    assert npy.status_code == 200 and np.isnan(np.load(io.BytesIO(npy.content))).all()


def test_a_registration_answers_the_documented_shape(client):
    example = doc_text(r"Answer \(201, `Location: \.\.\./queries/\{id\}`.*?```json\n(.*?)```").group(1)
    documented = set(re.findall(r'"(\w+)":', example))
    r = client.post("/queries", content=wav(2), headers={"content-type": "audio/wav"})
    assert r.status_code == 201
    body = r.json()
    assert documented == set(body) | set(body["links"]), "the audio example's keys, links included"
    assert r.headers["location"] == body["links"]["self"] == f"http://127.0.0.1/queries/{body['id']}"
    assert re.fullmatch(r"[0-9a-f]{16}", body["id"]) and body["duration_s"] == 2.0
    again = client.get(f"/queries/{body['id']}")
    assert again.status_code == 200 and again.json() == body


def test_the_audio_and_json_shape_limits_are_the_documented_ones(client):
    low, high = (int(v) for v in doc_text(r"a sample rate outside (\d+) to (\d+) kHz").groups())
    channels = int(doc_text(r"more than (\d+) channels").group(1))
    samples = 2 ** int(doc_text(r"holding more than 2\^(\d+)\s+samples").group(1))
    depth = int(doc_text(r"JSON nested deeper than (\d+) levels").group(1))

    def post(rate: int, frames: int, count: int = 1, fmt: str = "WAV") -> int:
        out = io.BytesIO()
        soundfile.write(out, np.zeros((frames, count), np.int16), rate, format=fmt, subtype="PCM_16")
        return client.post("/queries", content=out.getvalue(), headers={"content-type": "audio/wav"}).status_code

    assert post(low * 1000, 800) == 201 and post(low * 1000 - 1, 800) == 422
    assert post(high * 1000 + 1, 800) == 422
    assert post(16000, 1600, channels) == 201 and post(16000, 1600, channels + 1) == 422
    # One frame past the sample limit at the highest rate and most channels: 413 from the header.
    assert post(high * 1000, samples // channels + 1, channels, "FLAC") == 413

    def nested(levels: int) -> int:
        body = "[" * levels + "1" + "]" * levels
        r = client.post("/queries", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422
        return "deeper than" in r.json()["detail"]

    assert not nested(depth) and nested(depth + 1)


def request_count(client, route: str, method: str = "GET", status: int = 200) -> float:
    line = f'soundscape_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    found = [row for row in client.get("/metrics").text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_metrics_count_requests_by_their_route_template(client):
    """docs/api.md: requests by route template, `unmatched` only for paths no route knows; the
    OpenAPI document (a plain Starlette route, not an APIRoute) was counted as the viewer's `/`."""
    doc_text(
        r"requests by route template \(`/tiles/\{z\}/\{x\}/\{y\}\.png`; static files as `/static`; `unmatched` only"
    )
    before = {route: request_count(client, route) for route in ("/openapi.json", "/", "/static")}
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/static/viewer.js").status_code == 200
    after = {route: request_count(client, route) for route in before}
    assert after == {"/openapi.json": before["/openapi.json"] + 1, "/": before["/"], "/static": before["/static"] + 1}


def test_a_refused_text_names_no_parameter_the_client_did_not_use(client):
    """ "The sentence names what was wrong and how to fix it": an empty `q=` of a tile URL, a JSON
    body's and a form's empty text each get a hint that fits them (it said `text=birdsong` to all)."""
    answers = [
        client.get("/tiles/3/4/2.png", params={"q": " "}),
        client.post("/queries", json={"text": ""}),
        client.post("/queries", files={"text": (None, "")}),
    ]
    for r in answers:
        assert r.status_code == 422 and "text=" not in r.json()["detail"], r.text
    assert answers[0].json()["detail"].startswith("q: ")

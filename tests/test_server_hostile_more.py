"""More hostile and careless requests through the ASGI app, beyond tests/test_server_http.py's
BAD_REQUESTS: each answered as docs/api.md says, with one status and sentence whatever header or
optional parameter comes with it, and never with a guess at which of two queries was meant."""

from __future__ import annotations

import pytest

from benchmarks.hostile import wav
from tests.server_support import make_client

TILE = "/tiles/3/4/2.png"
UNKNOWN_WORDS = "\U0001f3b5 \u4f60\u597d"  # a note and a script outside the demo model's vocabulary


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    with make_client(bundle_path, store_path) as client:
        yield client


@pytest.mark.parametrize("path", [TILE, "/tiles/WebMercatorQuad/3/4/2.webp"])
def test_if_none_match_star_is_no_304_for_a_text_the_model_cannot_embed(client, path):
    """`If-None-Match: *` answers 304 only for a tile that exists: a text of no known word is
    the 422 it is without the header, not a 304 that a cache would keep as the tile."""
    plain = client.get(path, params={"q": UNKNOWN_WORDS})
    starred = client.get(path, params={"q": UNKNOWN_WORDS}, headers={"If-None-Match": "*"})
    assert (plain.status_code, starred.status_code) == (422, 422)
    assert starred.json()["detail"] == plain.json()["detail"]
    assert "holds no word the text model knows" in starred.json()["detail"]
    assert client.get(path, params={"q": "birdsong"}, headers={"If-None-Match": "*"}).status_code == 304


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"rescale": "bad"}, "rescale must be two numbers min,max"),
        ({"rescale": "nan,1"}, "rescale needs finite min < max"),
        ({"colormap_name": "nope"}, "unknown colormap_name 'nope'"),
        ({"layer": "uncertainty", "rescale": "1,0"}, "rescale needs finite min < max"),
    ],
)
def test_wmts_without_a_query_refuses_a_malformed_style(client, params, needle):
    """Without q or query the capabilities list the uncertainty layer only, which is drawn in its
    own scale and colours: a malformed rescale or colormap_name was ignored there (200)."""
    r = client.get("/WMTSCapabilities.xml", params=params)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert client.get("/WebMercatorQuad/WMTSCapabilities.xml", params=params).status_code == 422
    assert client.get("/WMTSCapabilities.xml", params={**params, "q": "birdsong"}).status_code == 422


@pytest.mark.parametrize("path", [TILE, "/tiles/WebMercatorQuad/3/4/2.npy", "/tilejson.json"])
@pytest.mark.parametrize(
    "params, needle",
    [
        ({"query": "zz"}, "query must be a 16-hex-digit id"),
        ({"query": "ABCDEFABCDEFABCD"}, "query must be a 16-hex-digit id"),
        ({"q": "   "}, "must not be empty"),
        ({"q": "rain", "query": "0" * 16}, "not both"),
    ],
)
def test_a_malformed_query_is_refused_on_the_uncertainty_layer_too(client, path, params, needle):
    """The uncertainty layer draws no query, yet `query=zz` was answered 200 there (and echoed
    into TileJSON's tile URLs), while WMTS refused the same parameters: now 422 on every layer."""
    r = client.get(path, params={**params, "layer": "uncertainty"})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_the_uncertainty_layer_names_one_tile_whatever_query_comes_with_it(client):
    """A well-formed query is not looked up for the uncertainty layer and does not change its tile."""
    plain = client.get(TILE, params={"layer": "uncertainty"})
    for params in ({"query": "0" * 16}, {"q": "birdsong"}):
        r = client.get(TILE, params={**params, "layer": "uncertainty"})
        assert r.status_code == 200, r.text
        assert (r.headers["etag"], r.content) == (plain.headers["etag"], plain.content)


@pytest.mark.parametrize(
    "url, name",
    [
        (f"{TILE}?q=caf%E9+birds", "q"),  # Latin-1 é
        ("/search?q=birds&source=wildlife%FF", "source"),
        ("/point/10,45?q=%C3birds", "q"),  # a lead byte without its continuation
        ("/tilejson.json?q=birds&colormap_name=vir%ADidis", "colormap_name"),
    ],
)
def test_a_parameter_whose_bytes_are_not_utf8_is_refused(client, url, name):
    """The query string's decoder replaced bytes that are not UTF-8 with U+FFFD, so
    `q=caf%E9+birds` drew and searched the text 'caf\ufffd birds', which nobody wrote."""
    r = client.get(url)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{name} is not UTF-8 text")


def test_utf8_text_and_unknown_parameters_with_other_bytes_still_pass(client):
    assert client.get(f"{TILE}?q=caf%C3%A9+birds").status_code == 200
    assert client.get(f"{TILE}?q=birds+%EF%BF%BD").status_code == 200  # U+FFFD itself, well encoded
    assert client.get(f"{TILE}?q=birds&_=%FF").status_code == 200  # a parameter no route takes


def test_the_id_of_a_text_only_drawn_with_q_is_not_a_registered_query(client):
    """/search and /point name their query's id, also for a q= that nobody registered. That id
    resolved (200, cacheable for a day) from the embedding q= had cached, so a client saved it,
    and it turned into a 404 once the entry was evicted or the server restarted. Now only the
    registry resolves an id: unknown until POST /queries, then for good."""
    text = "distant thunder rolling over the hills"
    qid = client.get("/search", params={"q": text, "k": 1}).json()["properties"]["query"]
    assert client.get(TILE, params={"q": text}).status_code == 200
    for url, params in ((f"/queries/{qid}", {}), (TILE, {"query": qid}), ("/tilejson.json", {"query": qid})):
        r = client.get(url, params=params)
        assert r.status_code == 404, (url, r.text)
        assert "register the query with POST /queries" in r.json()["detail"]
    assert client.get(TILE, params={"query": qid}, headers={"If-None-Match": "*"}).status_code == 404
    assert client.post("/queries", json={"text": text}).json()["id"] == qid
    assert client.get(f"/queries/{qid}").json()["text"] == text
    assert client.get(TILE, params={"query": qid}).content == client.get(TILE, params={"q": text}).content


def test_a_registered_id_resolves_in_another_process_from_the_registry_file(bundle_path, store_path, tmp_path):
    db = str(tmp_path / "queries.sqlite")
    with make_client(bundle_path, store_path, query_db=db) as one:
        qid = one.post("/queries", json={"text": "rain on a tin roof"}).json()["id"]
    with make_client(bundle_path, store_path, query_db=db) as two:
        assert two.get(f"/queries/{qid}").json()["text"] == "rain on a tin roof"
        assert two.get(TILE, params={"query": qid}).status_code == 200


@pytest.mark.parametrize(
    "files, needle",
    [
        ([("text", (None, b"rain")), ("text", (None, b"birdsong"))], "the form gives text 2 times"),
        ([("text", (None, b"birdsong")), ("file", ("tone.wav", wav(16000), "audio/wav"))], "both a text and a file"),
        ([("file", ("tone.wav", wav(16000), "audio/wav")), ("text", (None, b"birdsong"))], "both a text and a file"),
        ([("file", (None, b"birdsong")), ("file", ("tone.wav", wav(16000), "audio/wav"))], "'file' is a text field"),
    ],
)
def test_a_form_naming_two_queries_is_refused(client, files, needle):
    """`-F text=rain -F text=birdsong` registered 'birdsong', and a form with a text and a file
    registered the file, dropping the text: the server picked one query for the client."""
    r = client.post("/queries", files=files)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert client.post("/queries", files=[("text", (None, b"birdsong"))]).status_code == 201
    assert client.post("/queries", files=[("file", ("tone.wav", wav(16000), "audio/wav"))]).status_code == 201


@pytest.mark.parametrize(
    "body, needle",
    [
        (b'{"text": "rain", "text": "birdsong"}', "gives 'text' more than once"),
        (b'{"text": "rain", "x": {"a": 1, "a": 2}}', "gives 'a' more than once"),
    ],
)
def test_a_json_body_naming_a_key_twice_is_refused(client, body, needle):
    """json.loads keeps the last of two equal keys: '{"text": "rain", "text": "birdsong"}'
    registered 'birdsong' without a word."""
    r = client.post("/queries", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize(
    "accept, gzipped",
    [
        ("gzip;q=0", False),  # the client says it cannot read gzip
        ("br;q=1, gzip;q=0", False),
        ("gzip; q=0.000, identity", False),
        ("nogzip", False),
        ("gzip;q=abc", False),
        ("*", False),
        ("identity", False),
        ("gzip", True),
        ("deflate, GZIP;q=0.5", True),
        ("x-gzip", True),
    ],
)
def test_gzip_only_for_a_client_that_accepts_it(client, accept, gzipped):
    """Starlette's GZip looked for the substring "gzip": `Accept-Encoding: gzip;q=0` (RFC 9110:
    not acceptable) got a gzipped TileJSON anyway."""
    r = client.get("/tilejson.json", params={"q": "birdsong"}, headers={"Accept-Encoding": accept})
    assert r.status_code == 200
    assert (r.headers.get("content-encoding") == "gzip") == gzipped, r.headers
    assert r.json()["tilejson"] == "3.0.0"
    assert "accept-encoding" in r.headers["vary"].lower()

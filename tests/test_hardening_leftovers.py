"""Leftovers of the hardening audit, through the ASGI app: a form's text follows the rules of a
query string's (UTF-8 or a 422 naming the field), never read as Latin-1."""

from __future__ import annotations

import pytest

from tests.server_support import make_client

FIELD = b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\n%s\r\n--b--\r\n'


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    with make_client(bundle_path, store_path) as client:
        yield client


def post_form(client, text: bytes, content_type: str = "multipart/form-data; boundary=b"):
    return client.post("/queries", content=FIELD % text, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    "text",
    [
        "caf\xe9 birds".encode("latin-1"),  # Latin-1 é: starlette read it as Latin-1 and registered 'café birds'
        "caf\udc80".encode("utf-8", "surrogatepass"),  # a UTF-8-encoded lone surrogate: registered 'cafí²\x80'
        b"\x83\x65\x83\x58\x83\x67",  # Shift JIS: registered mojibake
    ],
)
def test_a_form_text_whose_bytes_are_not_utf8_is_refused(client, text):
    """`q=caf%E9` answered 422 while `-F text=caf$'\\xe9'` registered the bytes read as Latin-1,
    a query nobody wrote, under an id saved links then named for good."""
    r = post_form(client, text)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("the form's 'text' is not UTF-8 text")
    # The same characters in UTF-8 are read; those holding a C1 control character are refused for it.
    again = post_form(client, text.decode("latin-1").encode())
    assert again.status_code == 201 or "control character" in again.json()["detail"], again.text


@pytest.mark.parametrize("charset", ["iso-8859-1", "bogus", "utf-16", ""])
def test_a_form_naming_a_charset_other_than_utf8_is_refused(client, charset):
    """An unknown charset was read as Latin-1 whatever the bytes; fields are UTF-8, as browsers and curl send them."""
    r = post_form(client, b"caf\xe9", f"multipart/form-data; charset={charset}; boundary=b")
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == f"the form's charset must be UTF-8 (or left out), not {charset!r}"
    json_id = client.post("/queries", json={"text": "caf\xe9"}).json()["id"]
    for utf8 in ('"UTF-8"', "utf8"):
        assert (
            post_form(client, "caf\xe9".encode(), f"multipart/form-data; charset={utf8}; boundary=b").json()["id"]
            == json_id
        )


@pytest.mark.parametrize(
    "path",
    ["/tilejson.json?q=birdsong", "/conformance", "/docs", "/static/viewer.js", "/static/swagger-ui/favicon-32x32.png"],
)
def test_a_304_varies_on_accept_encoding_as_its_200_does(client, path):
    """A 304 must carry the Vary its 200 would (RFC 9110 15.4.5), and a cache replaces the stored
    answer's Vary with the 304's (RFC 9111 4.3.4). A document's 304 left out Accept-Encoding, so
    a shared cache revalidating its gzipped copy went on to serve it to clients without gzip.
    Every answer GZip may encode (weak ETag) now varies on Accept-Encoding, small ones included."""
    for encoding in ("gzip", "identity"):
        fresh = client.get(path, headers={"Accept-Encoding": encoding})
        assert fresh.status_code == 200 and fresh.headers["etag"].startswith("W/")
        held = client.get(path, headers={"Accept-Encoding": encoding, "If-None-Match": fresh.headers["etag"]})
        assert held.status_code == 304
        vary = sorted(v.strip().lower() for v in fresh.headers["vary"].split(","))
        assert vary.count("accept-encoding") == 1
        assert sorted(v.strip().lower() for v in held.headers["vary"].split(",")) == vary


def test_a_static_file_not_modified_since_answers_304(client):
    """/static sends Last-Modified but answered every If-Modified-Since with the whole file; a
    cache or client that revalidates by date alone (no ETag kept) fetched it again each time."""
    first = client.get("/static/viewer.js")
    modified = first.headers["last-modified"]
    again = client.get("/static/viewer.js", headers={"If-Modified-Since": modified})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == first.headers["etag"] and again.headers["last-modified"] == modified
    for since in ("Thu, 01 Jan 1970 00:00:00 GMT", "yesterday", "Thu, 01 Jan 1970 00:00:00"):  # before; malformed
        assert client.get("/static/viewer.js", headers={"If-Modified-Since": since}).status_code == 200, since
    # If-None-Match decides where both are sent (RFC 9110 13.1.3): a tag the file no longer has gets it whole.
    both = {"If-Modified-Since": modified, "If-None-Match": '"stale"'}
    assert client.get("/static/viewer.js", headers=both).status_code == 200


def test_if_match_answers_412_unless_it_names_the_tile(client):
    """If-Match was ignored on GET: a client checking that the tile it holds is still the one served
    got 200 and a different tile's bytes. RFC 9110 13.1.1: strong comparison, `*` matches any tile
    that exists, and it is evaluated before If-None-Match; the same answers on the first request
    (the route) and the next (the recorded replay)."""
    path = "/tiles/2/2/1.png?q=birdsong&month=4"
    etag = client.get(path).headers["etag"]
    for _ in range(2):
        for tags, status in ((etag, 200), (f'"x", {etag}', 200), ("*", 200), ('"other"', 412), (f"W/{etag}", 412)):
            r = client.get(path, headers={"If-Match": tags})
            assert r.status_code == status, tags
        failed = client.get(path, headers={"If-Match": '"other"', "If-None-Match": etag})
        assert failed.status_code == 412 and failed.json()["detail"] == f"If-Match: the current ETag is {etag}"
        assert failed.headers["cache-control"] == "no-store"
        client.app.state.service.tiles.local.drop()
    # A text of no known word is still a 422 (no tile exists for `*` to match).
    unknown = {"q": "\U0001f3b5 \u4f60\u597d"}  # a note and a script outside the demo model's vocabulary
    assert client.get("/tiles/2/2/1.png", params=unknown, headers={"If-Match": "*"}).status_code == 422


def test_if_match_on_a_document_uses_strong_comparison(client):
    """A document's ETag is weak (gzip may re-encode it), and a weak tag never matches If-Match."""
    fresh = client.get("/tilejson.json?q=birdsong")
    assert client.get("/tilejson.json?q=birdsong", headers={"If-Match": fresh.headers["etag"]}).status_code == 412
    assert client.get("/tilejson.json?q=birdsong", headers={"If-Match": "*"}).json() == fresh.json()


def test_if_unmodified_since_answers_412_for_a_static_file_changed_after_it(client):
    modified = client.get("/static/viewer.js").headers["last-modified"]
    before = "Thu, 01 Jan 1970 00:00:00 GMT"
    failed = client.get("/static/viewer.js", headers={"If-Unmodified-Since": before})
    assert (
        failed.status_code == 412 and failed.json()["detail"] == f"If-Unmodified-Since: modified since, at {modified}"
    )
    for since in (modified, "yesterday"):  # not modified since; a date that does not parse is ignored
        assert client.get("/static/viewer.js", headers={"If-Unmodified-Since": since}).status_code == 200, since
    # If-Match decides where both are sent (RFC 9110 13.2.2).
    both = {"If-Match": "*", "If-Unmodified-Since": before}
    assert client.get("/static/viewer.js", headers=both).status_code == 200


@pytest.mark.parametrize(
    ("content_type", "size", "limit"),
    [("audio/wav", 11 * 1024 * 1024, "10 MB (10485760 bytes)"), ("application/json", 100_000, "97 KiB (99328 bytes)")],
)
def test_an_upload_over_the_limit_is_told_the_limit_as_the_docs_state_it(client, content_type, size, limit):
    """The 413 named the limit in bytes alone ("the limit is 10485760"), which the viewer showed a
    person who had read "10 MB" in the docs."""
    r = client.post("/queries", content=b"x" * size, headers={"Content-Type": content_type})
    assert r.status_code == 413 and r.json()["detail"] == f"the upload is {size} bytes; the limit is {limit}"

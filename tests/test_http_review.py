"""What the internet-facing review of the HTTP surface found (docs/reliability.md, "Reviewed as
the open internet sees it"): each test failed before its fix."""

from __future__ import annotations

import unicodedata

import pytest

from tests.server_support import LAND_TILE, make_client, refused

Z, X, Y = LAND_TILE
TILE = f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def test_canonically_equivalent_texts_are_one_query(client):
    """NFC and NFD spell the same text (é as one code point, or e and a combining accent): one
    query id, one ETag, one cache entry and one embedding, on q= and POST /queries alike."""
    composed, decomposed = (unicodedata.normalize(form, "café terrace") for form in ("NFC", "NFD"))
    assert composed != decomposed
    tags = {client.get(TILE, params={"q": text}).headers["etag"] for text in (composed, decomposed)}
    assert len(tags) == 1, tags
    ids = {client.post("/queries", json={"text": text}).json()["id"] for text in (composed, decomposed)}
    assert len(ids) == 1, ids
    assert client.get(f"/queries/{ids.pop()}").json()["text"] == composed


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x9b"])
def test_a_control_character_in_a_text_is_refused(client, char):
    """A NUL or another control character is no part of a text anyone writes; taken, it named
    a query of its own for the same map (the tokenizer drops it), a cache entry per byte."""
    detail = refused(client.get(TILE, params={"q": f"rain{char}"}))
    assert detail == f"q: text holds a control character (U+{ord(char):04X}); send the text alone"
    answer = client.post("/queries", json={"text": f"rain{char}"})
    assert answer.status_code == 422
    assert answer.json()["detail"] == f"text holds a control character (U+{ord(char):04X}); send the text alone"


def test_tabs_and_newlines_are_still_spaces(client):
    plain = client.get(TILE, params={"q": "rain on a roof"}).headers["etag"]
    assert client.get(TILE, params={"q": "rain\ton a\r\nroof"}).headers["etag"] == plain


@pytest.mark.parametrize("value", ["1", "0", "yes", "no", "on", "off", "t", "f", "y", "n", "TRUE", "False", " true"])
def test_a_boolean_is_written_true_or_false(client, value):
    """OpenAPI publishes /search's exact as a boolean, which a client serialises true or false;
    pydantic alone also took 1, yes, on, t, y and their capitals (and 0, no, off, f, n): a dozen
    URLs of one search."""
    assert refused(client.get("/search", params={"q": "rain", "exact": value})) == (
        f"exact must be true or false, not {value!r}"
    )


def test_every_boolean_parameter_is_exact(client):
    """exact is the only boolean parameter (a new one needs the rule too)."""
    booleans = {
        (path, parameter["name"])
        for path, operations in client.get("/openapi.json").json()["paths"].items()
        for parameter in operations.get("get", {}).get("parameters", [])
        if parameter["schema"].get("type") == "boolean"
    }
    assert booleans == {("/search", "exact")}
    for value in ("true", "false"):
        assert client.get("/search", params={"q": "rain", "exact": value}).status_code == 200

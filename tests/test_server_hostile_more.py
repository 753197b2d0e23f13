"""More hostile and careless requests through the ASGI app: each answered as docs/api.md says,
with the same status and sentence whatever conditional or optional parameter comes with it."""

from __future__ import annotations

import pytest

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

"""Byte ranges (server/ranges.py): a GET with one `Range` gets 206 and that part of a tile's or
map's bytes, whichever path answers it (the route, the recorded replay, the front door); what it
cannot serve as a part gets the whole answer or a 416; and GDAL's /vsicurl/, which reads a GeoTIFF
in ranges, reads a 512 px tile and a large map that it gave up on when the server sent the whole
body to its first range."""

import math

import httpx
import numpy as np
import pytest
import rasterio

from server.ranges import requested
from tests.server_support import decode_npy, live_server, make_client

TILE = "/tiles/WebMercatorQuad/4/8/5.tif"  # over the fixture's cells (Europe)
QUERY = {"q": "birdsong", "hour": 6}
MAP = "/collections/contrast/map"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


@pytest.fixture(scope="module")
def limited(bundle_path, store_path):
    """A server with a rate limit: no front door, every hit through the recorded replay."""
    return make_client(bundle_path, store_path, rate_limit="1000/s burst 1000")


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=10-", 1000, (10, 999)),
        ("bytes=990-5000", 1000, (990, 999)),
        ("bytes=-10", 1000, (990, 999)),
        ("bytes=-5000", 1000, (0, 999)),
        ("bytes=999-999", 1000, (999, 999)),
        (" bytes=0-0 ", 1000, (0, 0)),
        ("bytes=1000-", 1000, (1000, 1000)),
        ("bytes=-0", 1000, (1000, 1000)),
        ("bytes=-3", 0, (0, 0)),
        ("bytes=5-1", 1000, None),
        ("bytes=0-1,5-9", 1000, None),
        ("bytes=-", 1000, None),
        ("bytes=a-b", 1000, None),
        ("items=0-9", 1000, None),
        ("bytes=0-99999999999999999999", 1000, None),
    ],
)
def test_a_single_range_is_read_and_clipped_to_the_answer(header, length, expected):
    assert requested(header, length) == expected


def whole(client, path: str = TILE) -> httpx.Response:
    answer = client.get(path, params=QUERY)
    assert answer.status_code == 200 and answer.headers["etag"].startswith('"')
    return answer


@pytest.mark.parametrize("which", ["client", "limited"])
def test_a_range_of_a_tile_is_that_part_of_its_bytes_on_every_path(request, which):
    """The first answer comes from the route, the next ones from the recorded replay (and, with
    no rate limit, the front door): each answers the range alike."""
    client = request.getfixturevalue(which)
    for _ in range(3):
        full = whole(client)
        size = len(full.content)
        assert size > 2000
        for header, first, last in (
            ("bytes=0-999", 0, 999),
            ("bytes=1000-", 1000, size - 1),
            ("bytes=-7", size - 7, size - 1),
        ):
            part = client.get(TILE, params=QUERY, headers={"range": header})
            assert part.status_code == 206, (header, part.status_code)
            assert part.content == full.content[first : last + 1]
            assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert int(part.headers["content-length"]) == last - first + 1
            assert part.headers["etag"] == full.headers["etag"] and part.headers["accept-ranges"] == "bytes"
            assert part.headers["content-type"] == full.headers["content-type"]


@pytest.mark.parametrize("which", ["client", "limited"])
def test_a_map_read_in_ranges_is_drawn_once(request, which):
    """The first range records the whole map (server/fastpath.py); the others are cut from it, as
    GDAL reads a large map's GeoTIFF, so a 2048 px map is not drawn again for each of its ranges."""
    client = request.getfixturevalue(which)
    service = client.app.state.service
    params = {"q": "birdsong", "bbox": "-12,34,32,60", "width": 600, "hour": 9 if which == "client" else 10, "f": "tif"}
    renders = service.stats["renders"]
    first = client.get(MAP, params=params, headers={"range": "bytes=0-4095"})
    assert first.status_code == 206 and service.stats["renders"] > renders, "the first range draws the map"
    length = int(first.headers["content-range"].rsplit("/", 1)[1])
    service.tiles.local.drop()  # drawing it again would render its tiles again
    renders = service.stats["renders"]
    parts = [first.content]
    for start in range(4096, length, 4096):
        part = client.get(MAP, params=params, headers={"range": f"bytes={start}-{start + 4095}"})
        assert part.status_code == 206, part.text
        parts.append(part.content)
    assert len(parts) > 2 and service.stats["renders"] == renders, "no range after the first drew anything"
    assert b"".join(parts) == client.get(MAP, params=params).content


def test_a_recorded_maps_ranges_spend_a_token_a_mib_sent(bundle_path, store_path):
    """Drawing a map spends one token per 256 x 256 pixels; its replay, which draws nothing, one
    per MiB sent: a byte range of a few bytes one, the whole map as many as its MiB, a HEAD one."""
    params = {"q": "birdsong", "bbox": "-12,34,32,60", "width": 2048, "f": "npy"}  # 2048 x 1210: 32 tokens
    with make_client(bundle_path, store_path, rate_limit="0.001/s burst 40") as client:

        def status(headers: dict, **more) -> int:
            return client.get(MAP, params={**params, **more}, headers=headers).status_code

        first = client.get(MAP, params=params, headers={"range": "bytes=0-99"})
        assert first.status_code == 206
        assert math.ceil(int(first.headers["content-range"].rsplit("/", 1)[1]) / 2**20) == 10
        assert [status({"range": f"bytes={i << 20}-{(i << 20) + 99}"}) for i in (1, 2, 3)] == [206] * 3, "5 left"
        assert status({}) == 429, "the whole map: 10 MiB, 10 tokens"
        assert status({"range": "bytes=0-1", "if-range": '"another"'}) == 429, "the whole map again"
        assert status({"range": f"bytes=-{3 << 20}"}) == 206, "3 MiB: 3 tokens, 2 left"
        assert client.head(MAP, params=params).status_code == 200, "a HEAD sends no byte: 1 token, 1 left"
        assert status({"range": f"bytes=0-{(3 << 20) - 1}"}) == 429
        assert status({"range": "bytes=0-99"}, hour=3) == 429, "a new map is drawn: 32 tokens"
        assert status({"range": "bytes=0-99"}) == 206


def test_a_range_past_the_end_answers_416_with_the_length(client):
    size = len(whole(client).content)
    answer = client.get(TILE, params=QUERY, headers={"range": f"bytes={size}-"})
    assert answer.status_code == 416
    assert answer.headers["content-range"] == f"bytes */{size}"
    assert answer.headers["cache-control"] == "no-store"
    assert "starts past the end of this answer's" in answer.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"range": "bytes=0-9,20-29"},  # several ranges: the RFC lets a server send the whole
        {"range": "bytes=9-0"},
        {"range": "pages=1-2"},
        {"range": "bytes=0-9", "if-range": '"another tag"'},
        {"range": "bytes=0-9", "if-range": "Sun, 06 Dec 2026 06:00:00 GMT"},
        {"range": "bytes=0-9" + " " * 300},
    ],
)
def test_what_is_not_one_range_of_this_answer_gets_the_whole_answer(client, headers):
    full = whole(client)
    answer = client.get(TILE, params=QUERY, headers=headers)
    assert answer.status_code == 200 and answer.content == full.content


@pytest.mark.parametrize("path", [f"{TILE}?q=birdsong&hour=6", "/static/viewer.js"])
def test_a_range_of_another_unit_is_ignored(client, path):
    """RFC 9110 14.2: a server ignores a Range of a unit it does not understand. The tiles did;
    /static (Starlette's StaticFiles) answered `items=0-5` 400 "Only support bytes range"."""
    full = client.get(path)
    for header in ("items=0-5", "pages=1-2", "0-5"):
        answer = client.get(path, headers={"range": header})
        assert answer.status_code == 200 and answer.content == full.content, header
    assert client.get(path, headers={"range": "bytes=0-5"}).content == full.content[:6], "bytes are still cut"


def test_if_range_naming_the_tiles_etag_gets_the_range(client):
    full = whole(client)
    answer = client.get(TILE, params=QUERY, headers={"range": "bytes=0-9", "if-range": full.headers["etag"]})
    assert answer.status_code == 206 and answer.content == full.content[:10]


def test_documents_and_errors_are_never_ranged(client):
    """A weak ETag may stand for other bytes (gzip): a document is sent whole; so is an error."""
    document = client.get("/tilejson.json", params=QUERY, headers={"range": "bytes=0-9"})
    assert document.status_code == 200 and document.json()["tilejson"] == "3.0.0"
    refused = client.get(TILE, params={"q": ""}, headers={"range": "bytes=0-9"})
    assert refused.status_code == 422 and "q: text must not be empty" in refused.json()["detail"]


@pytest.mark.parametrize("path", [f"{TILE}?q=birdsong&hour=6", "/colormaps/magma", "/static/viewer.js"])
def test_a_head_with_a_range_answers_as_the_head_of_the_whole(client, path):
    """RFC 9110 14.2: range handling is defined for GET only, and a server ignores a Range on any
    other method. A HEAD with a Range answered 206 and the part's length, so a client asking a
    file's length with a leftover Range header was told 10 bytes."""
    full = client.get(path)
    for headers in ({"range": "bytes=0-9"}, {"range": "bytes=0-9", "if-range": full.headers["etag"]}):
        head = client.head(path, headers=headers)
        assert head.status_code == 200 and head.content == b"", headers
        assert head.headers["content-length"] == full.headers["content-length"] and "content-range" not in head.headers
    assert client.get(path, headers={"range": "bytes=0-9"}).status_code == 206, "a GET still gets its part"


def test_gdal_reads_a_512_pixel_tile_and_a_large_map_in_ranges(bundle_path, store_path):
    """Both hold several 256 px blocks, which GDAL reads at their offsets: before ranges, GDAL
    stopped at 'Range downloading not supported by this server!' (a one-block GeoTIFF it read from
    the start). Under docs/api.md's rate limit: the map's drawing costs 32 tokens of a burst of
    100, and GDAL's later ranges, replayed, a token a MiB (each had cost 32, and the last a 429)."""
    with live_server(bundle_path, store_path, args=("--rate-limit", "20/s burst 100")) as base:
        tile = f"{base}/tiles/WebMercatorQuad/4/8/5@2x.tif?q=birdsong"
        box = "bbox=-12,34,32,60&width=2048"
        large = f"{base}/collections/contrast/map?q=birdsong&{box}&f=tif"
        read = {}
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            for url in (tile, large):
                with rasterio.open(f"/vsicurl/{url}") as tiff:
                    assert len(list(tiff.block_windows(1))) >= 4
                    read[url] = tiff.read(1)
        expected = {
            tile: httpx.get(tile.replace(".tif", ".npy"), timeout=60).content,
            large: httpx.get(large.replace("f=tif", "f=npy"), timeout=60).content,
        }
    for url, values in read.items():
        npy = decode_npy(expected[url])
        assert np.isfinite(values).mean() > 0.3 and np.array_equal(values, npy, equal_nan=True), url

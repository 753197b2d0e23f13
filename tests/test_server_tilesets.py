"""OGC API - Tiles tilesets (`/tiles`, `/tiles/{tms}`): what an OGC client reads from them (the
tile template, the tile matrix set, the limits per zoom) leads to the tiles the XYZ route serves,
and they refuse what TileJSON refuses. OpenLayers reading one in Chromium: tests/test_doc_snippets.py."""

import io

import mercantile
import pytest
from PIL import Image

from tests.server_support import make_client

TMS_REL = "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def link(document: dict, rel: str) -> dict:
    [found] = [item for item in document["links"] if item["rel"] == rel]
    return found


def test_the_list_points_to_the_tileset_of_the_query_asked(client):
    listed = client.get("/tiles", params={"q": "birdsong", "hour": 6})
    assert listed.status_code == 200
    entry, crs84 = listed.json()["tilesets"]
    assert entry["dataType"] == "map" and entry["crs"] == "http://www.opengis.net/def/crs/EPSG/0/3857"
    assert crs84["dataType"] == "map" and crs84["crs"] == "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    own = client.get(link(entry, "self")["href"])
    assert own.status_code == 200 and own.json()["title"] == entry["title"] == "soundscape contrast: birdsong"
    assert link(own.json(), "item")["href"].endswith("?q=birdsong&hour=6&layer=contrast")


def test_the_item_template_leads_to_the_xyz_tile(client):
    tileset = client.get("/tiles/WebMercatorQuad", params={"q": "birdsong", "hour": 6}).json()
    assert client.get(link(tileset, TMS_REL)["href"]).json()["id"] == "WebMercatorQuad"
    item = link(tileset, "item")
    assert item["templated"] and item["type"] == "image/png"
    z, x, y = 4, 8, 5  # over the fixture's cells (Europe), x != y: a swapped row and column would show
    url = item["href"].replace("{tileMatrix}", str(z)).replace("{tileCol}", str(x)).replace("{tileRow}", str(y))
    tile = client.get(url)
    plain = client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "birdsong", "hour": 6})
    assert tile.status_code == plain.status_code == 200 and tile.content == plain.content


def test_the_limits_are_the_tiles_over_the_stores_bounds_at_the_zooms_asked(client):
    west, south, east, north = client.get("/tilejson.json", params={"q": "birdsong"}).json()["bounds"]
    tileset = client.get("/tiles/WebMercatorQuad", params={"q": "birdsong", "minzoom": 2, "maxzoom": 5}).json()
    limits = tileset["tileMatrixSetLimits"]
    assert [limit["tileMatrix"] for limit in limits] == ["2", "3", "4", "5"]
    for limit in limits:
        z = int(limit["tileMatrix"])
        tiles = list(mercantile.tiles(west, south, east, north, z))
        assert (limit["minTileCol"], limit["maxTileCol"]) == (min(t.x for t in tiles), max(t.x for t in tiles))
        assert (limit["minTileRow"], limit["maxTileRow"]) == (min(t.y for t in tiles), max(t.y for t in tiles))
    assert limits[-1]["maxTileCol"] - limits[-1]["minTileCol"] < 2**5 - 1, "the fixture covers part of the world"
    box = tileset["boundingBox"]
    assert box["lowerLeft"] == [west, south] and box["upperRight"] == [east, north]


def test_the_format_asked_names_the_tiles_and_what_they_hold(client):
    webp = link(client.get("/tiles/WebMercatorQuad", params={"q": "birdsong", "tile_format": "webp"}).json(), "item")
    assert webp["type"] == "image/webp" and "/{tileRow}.webp?" in webp["href"] and "tile_format" not in webp["href"]
    values = client.get("/tiles/WebMercatorQuad", params={"q": "birdsong", "tile_format": "npy"}).json()
    assert values["description"].startswith("float32 values") and link(values, "item")["type"] == "application/x-npy"
    colours = client.get("/tiles/WebMercatorQuad", params={"q": "birdsong"}).json()
    assert colours["description"] == client.get("/tilejson.json", params={"q": "birdsong"}).json()["description"]


def test_the_uncertainty_layer_needs_no_query(client):
    tileset = client.get("/tiles/WebMercatorQuad", params={"layer": "uncertainty"})
    assert tileset.status_code == 200 and "q=" not in link(tileset.json(), "item")["href"]
    unknown = {"layer": "uncertainty", "query": "0123456789abcdef"}  # not looked up, as by its tiles
    assert (
        client.get("/tiles", params=unknown).status_code
        == client.get("/tiles/WebMercatorQuad", params=unknown).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("path", "params", "status", "said"),
    [
        ("/tiles/Nope", {"q": "birdsong"}, 404, "unknown tile matrix set 'Nope'"),
        ("/tiles/Nope", {"q": "birdsong", "hour": 25}, 422, "hour must be an integer in 0..23"),
        ("/tiles/WebMercatorQuad", {"hour": 6}, 422, "q (a text query, e.g. q=birdsong) or query"),
        ("/tiles/WebMercatorQuad", {"q": "birdsong", "minzoom": 5, "maxzoom": 2}, 422, "minzoom 5 is above maxzoom 2"),
        ("/tiles", {"q": "birdsong", "tile_format": "gif"}, 422, "tile_format must be one of png, webp, npy, tif"),
        ("/tiles/WebMercatorQuad", {"query": "0123456789abcdef"}, 404, "unknown query id"),
        ("/tiles", {"query": "0123456789abcdef"}, 404, "unknown query id"),
    ],
)
def test_a_bad_request_is_refused_as_tilejson_refuses_it(client, path, params, status, said):
    answer = client.get(path, params=params)
    assert answer.status_code == status and said in answer.json()["detail"]


def test_a_tileset_is_never_replayed_to_another_host(client):
    """The tile routes' fast path (server/fastpath.py) replays answers under /tiles/ by URL alone:
    a tileset's links come from the Host header, so it must not replay one. Not gzipped: the fast
    path records no compressed answer."""
    for host in ("127.0.0.1", "localhost", "127.0.0.1"):
        headers = {"host": host, "accept-encoding": "identity"}
        tileset = client.get("/tiles/WebMercatorQuad", params={"q": "birdsong"}, headers=headers)
        assert "Host" in tileset.headers["vary"]
        assert link(tileset.json(), "self")["href"].startswith(f"http://{host}/tiles/WebMercatorQuad?")


def test_with_a_public_url_the_links_start_with_it(bundle_path, store_path):
    client = make_client(bundle_path, store_path, public_url="https://maps.example.org/sound")
    for host in ("localhost", "127.0.0.1"):  # the second answer may be a replay: the same links
        headers = {"host": host, "accept-encoding": "identity"}
        tileset = client.get("/tiles/WebMercatorQuad", params={"q": "birdsong"}, headers=headers).json()
        assert all(item["href"].startswith("https://maps.example.org/sound/") for item in tileset["links"])


@pytest.mark.parametrize("tms", ["WebMercatorQuad", "WorldCRS84Quad"])
def test_a_tileset_of_512_pixel_tiles_links_512_pixel_matrices(client, tms):
    """The tiles of tilesize=512 cover the 256-pixel tiles' boxes in twice the pixels: the tileset
    names and links matrices of such tiles (a set of this server's, not the registered one)."""
    plain = client.get(f"/tiles/{tms}", params={"q": "birdsong"}).json()
    large = client.get(f"/tiles/{tms}", params={"q": "birdsong", "tilesize": 512}).json()
    assert plain["tileMatrixSetURI"] == f"http://www.opengis.net/def/tilematrixset/OGC/1.0/{tms}"
    assert link(plain, TMS_REL)["href"] == f"http://127.0.0.1/tileMatrixSets/{tms}"
    scheme = link(large, TMS_REL)["href"]
    assert large["tileMatrixSetURI"] == scheme == f"http://127.0.0.1/tileMatrixSets/{tms}?tilesize=512"
    assert large["tileMatrixSetLimits"] == plain["tileMatrixSetLimits"]
    listed = client.get("/tiles", params={"q": "birdsong", "tilesize": 512}).json()["tilesets"]
    assert [entry["tileMatrixSetURI"] for entry in listed if tms in entry["tileMatrixSetURI"]] == [scheme]
    small, matrices = client.get(link(plain, TMS_REL)["href"]).json(), client.get(scheme).json()
    assert "uri" not in matrices and "wellKnownScaleSet" not in matrices
    for a, b in zip(small["tileMatrices"], matrices["tileMatrices"], strict=True):
        assert (b["tileWidth"], b["tileHeight"], b["matrixWidth"], b["matrixHeight"]) == (
            512,
            512,
            a["matrixWidth"],
            a["matrixHeight"],
        )
        assert b["cellSize"] * 2 == a["cellSize"] and b["pointOfOrigin"] == a["pointOfOrigin"]
    template = link(large, "item")["href"]
    tile = client.get(template.format(tileMatrix=1, tileCol=1, tileRow=0))
    assert Image.open(io.BytesIO(tile.content)).size == (512, 512)


def test_a_tile_matrix_set_of_another_size_is_refused_as_a_tile_is(client):
    """The tiles' sentence, and a 422 before the 404 of an unknown set."""
    tile = client.get("/tiles/WebMercatorQuad/1/1/0.png", params={"layer": "uncertainty", "tilesize": 300}).json()[
        "detail"
    ]
    for tms in ("WebMercatorQuad", "Nope"):
        answer = client.get(f"/tileMatrixSets/{tms}", params={"tilesize": 300})
        assert (answer.status_code, answer.json()["detail"]) == (422, tile), tms

"""The OGC API landing page (`/` asked for JSON) and collections (`/collections`, one per map
layer, each with its tilesets): every link resolves, a collection's tileset leads to the tiles
the XYZ route serves for its layer, they refuse what `/tiles/{tms}` refuses, and GDAL 3.6's OGCAPI
driver, against a real uvicorn, reads from a collection's URL the pixels of the XYZ tiles."""

import io
import re
import shutil
import subprocess

import httpx
import mercantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import from_bounds

from server.routes.viewer import STATIC
from store.reader import Store
from tests.server_support import REPO, live_server, make_client
from tests.test_server_tilesets import TMS_REL, link

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
GDAL_ACCEPT = "application/geo+json, application/json"  # what GDAL's OGCAPI driver sends
TILESETS_REL = "http://www.opengis.net/def/rel/ogc/1.0/tilesets-map"
QUERY = {"q": "birdsong", "hour": 6}
LAYERS = ("heatmap", "contrast", "uncertainty")


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("path", "accept", "json"),
    [
        ("/", BROWSER, False),
        ("/", None, False),
        ("/", "*/*", False),
        ("/", GDAL_ACCEPT, True),
        ("/", "application/json", True),
        ("/", "application/json;q=0.5, text/html", False),
        ("/", "text/html;q=0.5, application/*", True),
        ("/?f=json", BROWSER, True),
        ("/?f=html", GDAL_ACCEPT, False),
    ],
)
def test_the_landing_page_answers_json_to_a_client_that_asks_for_it(client, path, accept, json):
    headers = {"accept": accept} if accept else {}
    answer = client.get(path, headers=headers)
    assert answer.status_code == 200 and "Accept" in answer.headers["vary"]
    if json:
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["title"] == "Soundscape tiles"
    else:
        assert answer.content == (STATIC / "index.html").read_bytes(), "the viewer, as before"
        assert "content-security-policy" in answer.headers


def test_a_304_of_the_landing_page_still_varies_on_accept(client):
    first = client.get("/", headers={"accept": GDAL_ACCEPT})
    again = client.get("/", headers={"accept": GDAL_ACCEPT, "if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and "Accept" in again.headers["vary"]
    assert client.get("/?f=xml").status_code == 422


def test_every_link_of_the_landing_page_resolves(client):
    page = client.get("/?f=json").json()
    rels = {item["rel"] for item in page["links"]}
    assert {"self", "service-desc", "service-doc", "data", TILESETS_REL} <= rels
    assert {
        "http://www.opengis.net/def/rel/ogc/1.0/conformance",
        "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes",
    } <= rels
    for item in page["links"]:
        answer = client.get(item["href"])
        assert answer.status_code == 200, (item, answer.text[:200])
        assert answer.headers["content-type"].split(";")[0] == item["type"], item
    assert link(page, "service-desc")["href"] == "http://127.0.0.1/openapi.json"
    conforms = client.get("/conformance").json()["conformsTo"]
    assert not [c for c in conforms if "ogcapi-common" in c or c.endswith("ogcapi-tiles-1/1.0/conf/core")]


def test_the_collections_are_the_layers_the_parameters_allow(client):
    alone = client.get("/collections").json()["collections"]
    assert [c["id"] for c in alone] == ["uncertainty"], "no query: the layer that needs none"
    listed = client.get("/collections", params=QUERY).json()
    assert [c["id"] for c in listed["collections"]] == list(LAYERS)
    assert link(listed, "self")["href"] == "http://127.0.0.1/collections?q=birdsong&hour=6"
    for entry in listed["collections"]:
        own = client.get(link(entry, "self")["href"])
        assert own.status_code == 200 and own.json() == entry
        for item in entry["links"]:
            # the map's values add their format, which GDAL's map API (PNG or JPEG) never follows
            query = "?q=birdsong&hour=6&f=tif" if item["type"].startswith("image/tiff") else "?q=birdsong&hour=6"
            assert item["href"].endswith(query), "GDAL 3.6 follows links with no query of its own"
    contrast = listed["collections"][1]
    assert contrast["title"] == "soundscape contrast: birdsong"
    tileset = client.get("/tiles/WebMercatorQuad", params={**QUERY, "layer": "contrast"}).json()
    assert contrast["description"] == tileset["description"], "the legend in words"


def test_a_listed_collection_is_described_as_its_links_draw_it(client):
    """With rescale and colormap_name, which every collection's links carry, each listed
    collection is the one its own URL gives, the uncertainty layer's too: its tileset's tiles draw
    that scale and colormap."""
    styled = {**QUERY, "rescale": "-3,0.5", "colormap_name": "greys"}
    for params in (styled, {"rescale": "-3,0.5", "colormap_name": "greys"}):
        listed = client.get("/collections", params=params).json()["collections"]
        for entry in listed:
            assert client.get(link(entry, "self")["href"]).json() == entry
            assert entry["description"].startswith("greys colours from -3 (left of the legend) to 0.5 ("), entry["id"]
        uncertainty = listed[-1]
        tileset = client.get(link(uncertainty, TILESETS_REL)["href"]).json()["tilesets"][0]
        item = link(client.get(link(tileset, "self")["href"]).json(), "item")["href"]
        assert "rescale=-3%2C0.5" in item and "colormap_name=greys" in item


def test_a_collections_bbox_is_the_stores_bounds(client, store_path):
    collection = client.get("/collections/uncertainty").json()
    spatial = collection["extent"]["spatial"]
    assert spatial["bbox"] == [list(Store(store_path).bounds)]
    assert spatial["crs"] == "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


def test_a_collections_scale_is_that_of_the_tiles_that_draw_its_finest_cells_16_px_a_side(client, store_path):
    """GDAL's map API takes a collection's scaleDenominator for its full resolution: that of the
    Web Mercator zoom whose 256 px tiles draw 16 x 16 cells of the store's finest level."""
    zoom = Store(store_path).maxlevel - 4
    metres_per_pixel = 2 * 20037508.342789244 / (256 * 2**zoom)
    for layer, params in (("uncertainty", {}), ("contrast", {"q": "birdsong"})):
        scale = client.get(f"/collections/{layer}", params=params).json()["scaleDenominator"]
        assert scale == pytest.approx(metres_per_pixel / 0.28e-3, rel=1e-9)  # OGC's 0.28 mm pixel
    listed = client.get("/collections", params={"q": "birdsong"}).json()["collections"]
    assert {c["scaleDenominator"] for c in listed} == {scale}


def test_a_collections_tileset_leads_to_the_xyz_tile_of_its_layer(client):
    z, x, y = 4, 8, 5  # over the fixture's cells (Europe), x != y: a swapped row and column would show
    drawn = {}
    for layer in LAYERS:
        collection = client.get(f"/collections/{layer}", params=QUERY).json()
        tilesets = client.get(link(collection, TILESETS_REL)["href"]).json()["tilesets"]
        assert [s["tileMatrixSetURI"].rsplit("/", 1)[1] for s in tilesets] == ["WebMercatorQuad", "WorldCRS84Quad"]
        tileset = client.get(link(tilesets[0], "self")["href"]).json()
        assert client.get(link(tileset, TMS_REL)["href"]).json()["id"] == "WebMercatorQuad"
        template = link(tileset, "item")["href"]
        assert template.endswith(f"/{{tileRow}}.png?q=birdsong&hour=6&layer={layer}")
        url = template.replace("{tileMatrix}", str(z)).replace("{tileCol}", str(x)).replace("{tileRow}", str(y))
        tile, plain = client.get(url), client.get(f"/tiles/{z}/{x}/{y}.png", params={**QUERY, "layer": layer})
        assert tile.status_code == plain.status_code == 200 and tile.content == plain.content
        drawn[layer] = tile.content
    assert len(set(drawn.values())) == len(LAYERS), "each collection draws its own layer"


def test_a_collections_tileset_is_the_layers_but_for_whole_matrices(client):
    """The same document as /tiles/{tms} of the layer, its own links aside; its limits are every
    tile of each zoom (GDAL 3.6 draws the tiles of other limits out of place)."""
    own = client.get("/collections/heatmap/tiles/WebMercatorQuad", params={**QUERY, "maxzoom": 5}).json()
    plain = client.get("/tiles/WebMercatorQuad", params={**QUERY, "maxzoom": 5, "layer": "heatmap"}).json()
    assert (
        link(own, "self")["href"]
        == "http://127.0.0.1/collections/heatmap/tiles/WebMercatorQuad?q=birdsong&hour=6&maxzoom=5"
    )
    assert link(own, "item") == link(plain, "item") and link(own, TMS_REL) == link(plain, TMS_REL)
    limits = own.pop("tileMatrixSetLimits")
    assert [limit["tileMatrix"] for limit in limits] == [limit["tileMatrix"] for limit in plain["tileMatrixSetLimits"]]
    for limit in limits:
        last = 2 ** int(limit["tileMatrix"]) - 1
        assert (limit["minTileCol"], limit["maxTileCol"], limit["minTileRow"], limit["maxTileRow"]) == (
            0,
            last,
            0,
            last,
        )
    unlinked = {key: value for key, value in plain.items() if key not in ("links", "tileMatrixSetLimits")}
    assert {key: value for key, value in own.items() if key != "links"} == unlinked


def test_each_listed_tile_matrix_set_links_its_definition_as_self(client):
    """OGC API - Tiles' tileMatrixSet-item asks a `self` link to the definition; the tiling-scheme
    link stays for the clients that followed it."""
    listed = client.get("/tileMatrixSets").json()["tileMatrixSets"]
    assert [entry["id"] for entry in listed] == ["WebMercatorQuad", "WorldCRS84Quad"]
    for entry in listed:
        own, scheme = link(entry, "self"), link(entry, TMS_REL)
        assert own["href"] == scheme["href"] and own["type"] == "application/json"
        assert client.get(own["href"]).json()["id"] == entry["id"]


def test_the_tile_matrix_set_keeps_tms_1_names_beside_its_own(client):
    matrix_set = client.get("/tileMatrixSets/WebMercatorQuad").json()
    assert (matrix_set["identifier"], matrix_set["supportedCRS"]) == (matrix_set["id"], matrix_set["crs"])
    for matrix in matrix_set["tileMatrices"]:
        assert (matrix["identifier"], matrix["topLeftCorner"]) == (matrix["id"], matrix["pointOfOrigin"])
        assert matrix["cornerOfOrigin"] == "topLeft"


@pytest.mark.parametrize(
    ("path", "params", "status", "said"),
    [
        ("/collections/nope", QUERY, 404, "unknown collection 'nope'"),
        ("/collections/nope/tiles", QUERY, 404, "unknown collection 'nope'"),
        ("/collections/Contrast/tiles/WebMercatorQuad", QUERY, 404, "unknown collection 'Contrast'"),
        ("/collections/contrast", {"hour": 6}, 422, "q (a text query, e.g. q=birdsong) or query"),
        ("/collections/heatmap/tiles/WebMercatorQuad", {}, 422, "q (a text query, e.g. q=birdsong) or query"),
        ("/collections/contrast/tiles/Nope", QUERY, 404, "unknown tile matrix set 'Nope'"),
        ("/collections/contrast/tiles/Nope", {"q": "birdsong", "hour": 25}, 422, "hour must be an integer in 0..23"),
        ("/collections", {"q": "birdsong", "month": 13}, 422, "month must be an integer in 1..12"),
        ("/collections/uncertainty", {"hour": "dawn"}, 422, "hour must be an integer"),
        ("/collections/contrast/tiles", {"q": "birdsong", "tile_format": "gif"}, 422, "tile_format must be one of"),
        ("/collections/contrast", {"q": "birdsong", "minzoom": 5, "maxzoom": 2}, 422, "minzoom 5 is above maxzoom 2"),
        ("/collections/uncertainty", {"source": "nope"}, 422, "source must be one of"),
        ("/collections/contrast", {"q": "birdsong", "layer": "heatmap"}, 422, "layer is not a parameter"),
        ("/collections", {"q": "birdsong", "layer": "contrast"}, 422, "layer is not a parameter"),
        ("/collections", {"query": "0123456789abcdef"}, 404, "unknown query id"),
        ("/collections/heatmap", {"query": "0123456789abcdef"}, 404, "unknown query id"),
        ("/collections/contrast/tiles", {"query": "0123456789abcdef"}, 404, "unknown query id"),
        ("/collections/contrast/tiles/WebMercatorQuad", {"query": "0123456789abcdef"}, 404, "unknown query id"),
    ],
)
def test_a_bad_request_is_refused_as_the_tilesets_refuse_it(client, path, params, status, said):
    answer = client.get(path, params=params)
    assert answer.status_code == status and said in answer.json()["detail"], answer.text


def test_a_layer_that_needs_no_query_is_not_told_to_give_one(client):
    """A 422 of FastAPI's own (hour) checks the rest as WMTS does: no query, the uncertainty layer."""
    detail = client.get("/collections/uncertainty", params={"hour": "dawn", "month": 13}).json()["detail"]
    assert "hour must be an integer" in detail and "month must be an integer" in detail and "q (" not in detail


@pytest.mark.parametrize(
    "path",
    [
        "/collections",
        "/collections/contrast",
        "/collections/contrast/tiles",
        "/collections/contrast/tiles/WebMercatorQuad",
        "/collections/contrast/map",
    ],
)
@pytest.mark.parametrize("layer", ["heatmap", "bogus"])
def test_layer_is_named_in_the_same_422_as_a_parameter_fastapi_refuses(client, path, layer):
    """One 422 names every bad parameter: `layer` too when FastAPI refuses another first (hour
    is not an integer), with the collections' own sentence even for a value no layer has."""
    answer = client.get(path, params={"q": "birdsong", "hour": "dawn", "layer": layer})
    detail = answer.json()["detail"]
    assert answer.status_code == 422 and "hour must be an integer" in detail, answer.text
    assert "layer is not a parameter of the collections" in detail and "layer must be" not in detail


def test_the_links_follow_the_host_and_are_never_replayed_to_another(client):
    """Links from the Host header (server/urls.py): Vary: Host, and the tile fast path, which
    replays answers under /tiles/ by URL, never hands one host's links to another."""
    for host in ("127.0.0.1", "localhost", "127.0.0.1"):
        headers = {"host": host, "accept-encoding": "identity"}
        for path in ("/collections/contrast/tiles/WebMercatorQuad", "/collections/contrast", "/collections"):
            answer = client.get(path, params=QUERY, headers=headers)
            assert "Host" in answer.headers["vary"]
            assert link(answer.json(), "self")["href"].startswith(f"http://{host}{path}?")
        landing = client.get("/", headers={**headers, "accept": GDAL_ACCEPT})
        assert (
            "Host" in landing.headers["vary"] and link(landing.json(), "data")["href"] == f"http://{host}/collections"
        )


def test_with_a_public_url_the_links_start_with_it(bundle_path, store_path):
    client = make_client(bundle_path, store_path, public_url="https://maps.example.org/sound")
    documents = [
        client.get("/?f=json").json(),
        client.get("/collections", params=QUERY).json(),
        client.get("/collections/contrast", params=QUERY).json(),
        client.get("/collections/contrast/tiles", params=QUERY).json()["tilesets"][0],
        client.get("/collections/contrast/tiles/WebMercatorQuad", params=QUERY).json(),
    ]
    hrefs = [item["href"] for document in documents for item in document["links"]]
    assert len(hrefs) > 10 and all(href.startswith("https://maps.example.org/sound/") for href in hrefs)


# GDAL's OGCAPI driver against a real uvicorn ---------------------------------------------------

DOCS = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
GDAL_COMMAND = re.search(
    r"```bash\n(gdal_translate -oo TILEMATRIXSET=WebMercatorQuad [^\n]*'OGCAPI:[^\n]*)\n```", DOCS
).group(1)
needs_gdal = pytest.mark.skipif(shutil.which("gdal_translate") is None, reason="GDAL's gdal_translate is not installed")


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    with live_server(bundle_path, store_path) as url:
        yield url


def gdal(command: list[str] | str, cwd) -> None:
    """Run a GDAL command in `cwd` (its tile cache off: tests/conftest.py)."""
    done = subprocess.run(command, cwd=cwd, shell=isinstance(command, str), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])


def xyz_tile(server: str, z: int, x: int, y: int, layer: str) -> np.ndarray:
    answer = httpx.get(f"{server}/tiles/{z}/{x}/{y}.png", params={**QUERY, "layer": layer}, timeout=60)
    assert answer.status_code == 200
    return rgba(answer.content)


@needs_gdal
def test_gdal_translate_of_the_documented_url_is_the_xyz_tiles(server, tmp_path):
    """docs/api.md's command, verbatim but for the address: the world in 512 px, zoom 1's four
    XYZ tiles pixel for pixel."""
    gdal(GDAL_COMMAND.replace("http://127.0.0.1:8000", server), tmp_path)
    with rasterio.open(tmp_path / "contrast.tif") as src:
        assert src.crs.to_epsg() == 3857 and (src.width, src.height, src.count) == (512, 512, 4)
        world = mercantile.xy_bounds(0, 0, 0)
        assert tuple(src.bounds) == pytest.approx(tuple(world), abs=1.0)
        pixels = src.read()
    expected = np.concatenate(
        [np.concatenate([xyz_tile(server, 1, x, y, "contrast") for x in (0, 1)], axis=2) for y in (0, 1)], axis=1
    )
    assert (expected[3] > 0).mean() > 0.01, "the fixture's cells (Europe) are drawn"
    assert np.array_equal(pixels, expected)


@needs_gdal
def test_gdal_reads_each_layer_over_the_stores_bounds_as_its_tiles(server, store_path, tmp_path):
    """The finer zoom 4 of WebMercatorQuad over the store's bounds in metres (GDAL 3.6 reads a
    collection's bounds as such): the raster covers the bounds, and each tile inside it is the
    XYZ tile of the layer."""
    z = 4
    west, south, east, north = Store(store_path).bounds
    (minx, miny), (maxx, maxy) = mercantile.xy(west, south), mercantile.xy(east, north)
    pixel = mercantile.CE / (256 << z)
    drawn = {}
    for layer in ("contrast", "heatmap"):
        out = tmp_path / f"{layer}.tif"
        bounds = [f"MINX={minx}", f"MINY={miny}", f"MAXX={maxx}", f"MAXY={maxy}", f"TILEMATRIX={z}"]
        bounds.append("TILEMATRIXSET=WebMercatorQuad")
        url = f"OGCAPI:{server}/collections/{layer}?q=birdsong&hour=6"
        gdal(["gdal_translate", "-q", *(f for option in bounds for f in ("-oo", option)), url, str(out)], tmp_path)
        with rasterio.open(out) as src:
            assert src.crs.to_epsg() == 3857 and src.res == pytest.approx((pixel, pixel))
            left, bottom, right, top = src.bounds
            assert left <= minx + pixel and bottom <= miny + pixel and right >= maxx - pixel and top >= maxy - pixel
            inside = [
                tile
                for tile in mercantile.tiles(west, south, east, north, z)
                if all(a <= b + 1e-6 for a, b in zip((left, bottom), mercantile.xy_bounds(tile)[:2], strict=True))
                and all(a >= b - 1e-6 for a, b in zip((right, top), mercantile.xy_bounds(tile)[2:], strict=True))
            ]
            assert inside, "a tile lies wholly in the raster"
            for tile in inside:
                window = (
                    from_bounds(*mercantile.xy_bounds(tile), transform=src.transform).round_offsets().round_lengths()
                )
                assert np.array_equal(src.read(window=window), xyz_tile(server, z, tile.x, tile.y, layer)), tile
            drawn[layer] = src.read()
    assert (drawn["contrast"][3] > 0).mean() > 0.5
    assert not np.array_equal(drawn["contrast"], drawn["heatmap"]), "each collection is its own layer"

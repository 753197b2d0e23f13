"""WorldCRS84Quad tiles (`/tiles/WorldCRS84Quad/{z}/{x}/{y}.png`): each is the map of its box in
CRS84 at its size (server/maps.py), drawn from the WebMercatorQuad tiles the values are computed
on; its tileset leads to it, and GDAL's OGC API driver, which picks this matrix set, reads a
collection with no option (docs/api.md, "Examples")."""

import math
import re
import subprocess

import httpx
import morecantile
import numpy as np
import pytest
import rasterio

from store.reader import Store
from tests.server_support import live_server, make_client
from tests.test_server_collections import DOCS, gdal, needs_gdal, rgba
from tests.test_server_tilesets import link

CRS84_QUAD = morecantile.tms.get("WorldCRS84Quad")
QUERY = {"q": "birdsong", "hour": "6"}
PLAIN_GDAL_COMMAND = re.search(r"```bash\n(gdal_translate 'OGCAPI:[^\n]*)\n```", DOCS).group(1)


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


@pytest.mark.parametrize(("z", "x", "y", "ratio"), [(0, 0, 0, ""), (0, 1, 0, ""), (3, 8, 2, ""), (4, 17, 4, "@2x")])
def test_a_tile_is_the_map_of_its_box_at_its_size(client, z, x, y, ratio):
    box = CRS84_QUAD.bounds(morecantile.Tile(x, y, z))
    size = 512 if ratio else 256
    tile = client.get(f"/tiles/WorldCRS84Quad/{z}/{x}/{y}{ratio}.png", params=QUERY)
    drawn = client.get(
        "/collections/contrast/map",
        params={**QUERY, "bbox": f"{box.left},{box.bottom},{box.right},{box.top}", "width": size, "height": size},
    )
    assert tile.status_code == drawn.status_code == 200, tile.text
    pixels = rgba(tile.content)
    assert pixels.shape == (4, size, size) and np.array_equal(pixels, rgba(drawn.content))


def test_a_tile_over_the_cells_shows_them_and_one_beyond_is_transparent(client):
    over_europe = rgba(client.get("/tiles/WorldCRS84Quad/3/8/1.png", params=QUERY).content)  # 0..22.5 E, 45..67.5 N
    assert (over_europe[3] > 0).mean() > 0.5
    pacific = rgba(client.get("/tiles/WorldCRS84Quad/3/0/4.png", params=QUERY).content)  # the fixture holds Europe
    assert (pacific[3] == 0).all()


def test_its_tileset_leads_to_its_tiles_and_lists_every_tile_of_each_zoom(client):
    tileset = client.get("/collections/contrast/tiles/WorldCRS84Quad", params={**QUERY, "maxzoom": 3}).json()
    assert tileset["crs"] == "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    limits = {int(limit["tileMatrix"]): limit for limit in tileset["tileMatrixSetLimits"]}
    assert set(limits) == {0, 1, 2, 3}
    assert [(limits[z]["maxTileCol"], limits[z]["maxTileRow"]) for z in limits] == [(1, 0), (3, 1), (7, 3), (15, 7)]
    [item] = [link for link in tileset["links"] if link["rel"] == "item"]
    url = item["href"].replace("{tileMatrix}", "3").replace("{tileCol}", "8").replace("{tileRow}", "1")
    plain = client.get("/tiles/WorldCRS84Quad/3/8/1.png", params={**QUERY, "layer": "contrast"})
    assert client.get(url).content == plain.content


def test_values_and_wmts_stay_on_the_grid_they_are_computed_on(client):
    for path in ("/tiles/WorldCRS84Quad/1/1/0.npy", "/WorldCRS84Quad/WMTSCapabilities.xml"):
        refused = client.get(path, params=QUERY)
        assert refused.status_code == 404 and "WebMercatorQuad" in refused.json()["detail"], path


@pytest.mark.parametrize("fmt", ["npy", "tif"])
def test_no_document_leads_to_value_tiles_it_does_not_serve(client, fmt):
    """A document of WorldCRS84Quad's values would template tiles that all 404: it answers as
    they do, and the tileset lists offer the grid's tileset alone."""
    tile = client.get(f"/tiles/WorldCRS84Quad/1/1/0.{fmt}", params=QUERY)
    assert tile.status_code == 404
    asked = {**QUERY, "tile_format": fmt}
    for path in (
        "/WorldCRS84Quad/tilejson.json",
        "/tiles/WorldCRS84Quad",
        "/collections/contrast/tiles/WorldCRS84Quad",
    ):
        refused = client.get(path, params=asked)
        assert (refused.status_code, refused.json()) == (404, tile.json()), path
    for path in ("/tiles", "/collections/contrast/tiles"):
        tilesets = client.get(path, params=asked).json()["tilesets"]
        assert [link(tileset, "self")["href"].split("?")[0].rsplit("/", 1)[1] for tileset in tilesets] == [
            "WebMercatorQuad"
        ], path
        for tileset in tilesets:
            assert client.get(link(tileset, "self")["href"]).status_code == 200
    assert (
        client.get("/WebMercatorQuad/tilejson.json", params=asked)
        .json()["tiles"][0]
        .split("?")[0]
        .endswith(f"/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.{fmt}")
    )


@needs_gdal
def test_gdal_reads_a_collection_with_no_option_as_these_tiles(bundle_path, store_path, tmp_path):
    """GDAL 3.6's OGC API driver prefers a WorldCRS84Quad tileset, where the collection's CRS84
    bbox is in the matrix set's own units: docs/api.md's plain command, verbatim but for the
    address, needs no -oo MINX=... (it failed with WebMercatorQuad alone, reading degrees as
    metres) and writes these tiles, cropped to the bbox, pixel for pixel."""
    with live_server(bundle_path, store_path) as server:
        gdal(PLAIN_GDAL_COMMAND.replace("http://127.0.0.1:8000", server), tmp_path)
        with rasterio.open(tmp_path / "contrast-crs84.tif") as src:
            assert src.crs.to_epsg() == 4326
            pixels, (west, south, east, north), res = src.read(), src.bounds, src.res[0]
        assert (west, south, east, north) == pytest.approx(Store(store_path).bounds, abs=res)
        z = round(math.log2(180 / 256 / res))
        span = 180 / 2**z  # degrees a tile
        cols = range(math.floor((west + 180) / span), math.ceil((east + 180) / span))
        rows = range(math.floor((90 - north) / span), math.ceil((90 - south) / span))
        query = {**QUERY, "layer": "contrast"}
        mosaic = np.concatenate(
            [
                np.concatenate(
                    [
                        rgba(httpx.get(f"{server}/tiles/WorldCRS84Quad/{z}/{x}/{y}.png", params=query).content)
                        for x in cols
                    ],
                    axis=2,
                )
                for y in rows
            ],
            axis=1,
        )
    left, top = round((west + 180 - cols[0] * span) / res), round((90 - north - rows[0] * span) / res)
    assert np.array_equal(pixels, mosaic[:, top : top + pixels.shape[1], left : left + pixels.shape[2]])
    assert (pixels[3] > 0).mean() > 0.5


@needs_gdal
def test_gdal_reads_a_collection_of_512_pixel_tiles_as_of_256(bundle_path, store_path, tmp_path):
    """At tilesize=512 the tilesets link 512-pixel matrices (GDAL failed "Incorrect size 512 x 512
    of downloaded block, expected 256 x 256" on the 256-pixel ones): a window read through either
    tile matrix set is placed where the 256-pixel tiles' is, and in CRS84 has their pixels."""
    window = ["-projwin", "0", "50", "20", "40"]  # over the fixture's Europe
    # GDAL 3.6 reads a collection's bounds in the set's units: the Web Mercator square, as documented
    world = [f"{side}={sign}20037508.34" for side, sign in (("MINX", "-"), ("MINY", "-"), ("MAXX", ""), ("MAXY", ""))]
    mercator = [*(f for option in ["TILEMATRIXSET=WebMercatorQuad", *world] for f in ("-oo", option))]
    mercator += ["-projwin_srs", "EPSG:4326"]
    read = {}
    with live_server(bundle_path, store_path) as server:
        for name, options in (("crs84", []), ("mercator", mercator)):
            for size in ("", "&tilesize=512"):
                out = tmp_path / f"{name}{size[-3:]}.tif"
                url = f"OGCAPI:{server}/collections/contrast?q=birdsong&hour=6{size}"
                gdal(["gdal_translate", "-q", *options, *window, url, str(out)], tmp_path)
                with rasterio.open(out) as src:
                    read[name, size] = src.crs, src.res[0], src.bounds, src.read()
    for name in ("crs84", "mercator"):
        (crs, res, bounds, _), (crs512, _, bounds512, pixels512) = read[name, ""], read[name, "&tilesize=512"]
        assert crs == crs512 and bounds512 == pytest.approx(bounds, abs=res), name
        assert (pixels512[3] > 0).mean() > 0.9, name
    # GDAL picks CRS84's zoom by the collection's scaleDenominator: one zoom coarser in twice the pixels
    assert read["crs84", ""][1] == pytest.approx(read["crs84", "&tilesize=512"][1])
    assert np.array_equal(read["crs84", ""][3], read["crs84", "&tilesize=512"][3])
    # and Web Mercator's finest zoom offered, the same zoom in twice the pixels
    assert read["mercator", ""][1] == pytest.approx(2 * read["mercator", "&tilesize=512"][1])


@needs_gdal
@pytest.mark.parametrize(("limit", "read"), [("2/s burst 5", False), ("2/s burst 5 delay 3", True)])
def test_gdal_reads_a_collection_under_a_rate_limit_that_delays(bundle_path, store_path, tmp_path, limit, read):
    """GDAL asks 4 documents, then a tileset's tiles five at a time (4 here), and gives up on the
    first 429 (GDAL_HTTP_MAX_RETRY does not retry its tile requests): over the burst a tile
    fails, unless the limit lets requests wait for their tokens (server/ratelimit.py)."""
    with live_server(bundle_path, store_path, args=("--rate-limit", limit)) as server:
        command = PLAIN_GDAL_COMMAND.replace("http://127.0.0.1:8000", server)
        done = subprocess.run(command, cwd=tmp_path, shell=True, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == read, done.stderr[-800:]
    if read:
        with rasterio.open(tmp_path / "contrast-crs84.tif") as src:
            assert (src.read(4) > 0).mean() > 0.5
    else:
        assert "HTTP status code: 429" in done.stderr, "a tile's (GDAL's WMS driver's words), not a document's"

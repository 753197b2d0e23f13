"""OGC API - Maps (`/collections/{collectionId}/map`): one image of a layer over any box, whose
pixels are the tiles' (a box of one tile is that tile), in CRS84 or Web Mercator, refusing what the
collections refuse and every bad box or size with a 422; and GDAL 3.6's OGCAPI driver, asked for
the map API against a real uvicorn, reads the server's map pixel for pixel."""

import io
import itertools
import json
import math
import re
import subprocess

import httpx
import mercantile
import numpy as np
import pytest
import rasterio
from PIL import Image

from server import maps, render
from store.reader import Store
from tests.server_support import decode_npy, live_server, make_client
from tests.test_server_collections import DOCS, gdal, needs_gdal, rgba

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
WEB_MERCATOR = "http://www.opengis.net/def/crs/EPSG/0/3857"
MAP_REL = "http://www.opengis.net/def/rel/ogc/1.0/map"
QUERY = {"q": "birdsong", "hour": 6}
TILE = (4, 8, 5)  # over the fixture's cells (Europe), x != y: a swapped row and column would show
IN_METRES = {"crs": WEB_MERCATOR, "bbox-crs": WEB_MERCATOR}
GEOTIFF = "image/tiff; application=geotiff"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def get_map(client, layer: str = "contrast", **params) -> httpx.Response:
    answer = client.get(f"/collections/{layer}/map", params={**QUERY, **params})
    assert answer.status_code == 200, answer.text[:300]
    return answer


def geotiff(body: bytes) -> tuple[rasterio.crs.CRS, tuple[float, ...], np.ndarray]:
    """A GeoTIFF's CRS, bounds and values."""
    with rasterio.MemoryFile(body) as memory, memory.open() as tiff:
        assert tiff.count == 1 and tiff.dtypes == ("float32",) and math.isnan(tiff.nodata)
        layer = tiff.descriptions[0]  # the band is named for its layer, and says what its values are
        assert (
            tiff.tags()["description"] == render.values_description(layer)
            and render.UNITS[layer] in tiff.tags()["description"]
        )
        return tiff.crs, tuple(tiff.bounds), tiff.read(1)


def metres(bounds) -> str:
    return ",".join(repr(v) for v in bounds)


@pytest.mark.parametrize(("layer", "fmt"), [("contrast", "png"), ("heatmap", "webp"), ("uncertainty", "png")])
def test_a_map_of_one_tile_is_that_tile(client, layer, fmt):
    z, x, y = TILE
    answer = get_map(
        client, layer, bbox=metres(mercantile.xy_bounds(x, y, z)), width=256, height=256, f=fmt, **IN_METRES
    )
    tile = client.get(f"/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}", params={**QUERY, "layer": layer})
    assert answer.headers["content-type"] == tile.headers["content-type"] == f"image/{fmt}"
    assert (rgba(answer.content)[3] > 0).mean() > 0.5, "cells are drawn"
    assert np.array_equal(rgba(answer.content), rgba(tile.content))
    if fmt == "png":
        assert answer.content == tile.content, "the same values, quantised and encoded alike"


def test_a_map_at_512_pixels_of_one_tile_is_its_2x_tile(client):
    z, x, y = TILE
    bbox = metres(mercantile.xy_bounds(x, y, z))
    answer = get_map(client, bbox=bbox, width=512, height=512, tilesize=512, **IN_METRES)
    assert answer.content == client.get(f"/tiles/{z}/{x}/{y}@2x.png", params=QUERY).content


def map_zoom(west: float, south: float, east: float, north: float, width: int, height: int) -> int:
    """The zoom docs/api.md says a CRS84 map is drawn from: the coarsest whose 256 px tiles'
    pixels are no larger than the map's finest (its columns, or its row nearest the equator)."""
    column = (east - west) / width * mercantile.CE / 360
    edges = [mercantile.xy(0, north - i * (north - south) / height)[1] for i in range(height + 1)]
    finest = min(column, min(a - b for a, b in itertools.pairwise(edges)))
    return math.ceil(math.log2(mercantile.CE / (256 * finest)))


def test_a_crs84_map_over_the_stores_bounds_is_its_tiles_at_each_place(client, store_path):
    bounds = Store(store_path).bounds
    answer = get_map(client)
    assert answer.headers["content-crs"] == f"<{CRS84}>"
    assert [float(v) for v in answer.headers["content-bbox"].split(",")] == list(bounds)
    drawn = rgba(answer.content)
    _, height, width = drawn.shape
    west, south, east, north = bounds
    assert width == 1024 and height == round(1024 * (north - south) / (east - west)), "1024 on the longer side"
    z = map_zoom(*bounds, width, height)
    assert z == 5
    tiles = {}
    for lon, lat in [(2.35, 48.85), (10.5, 47.2), (-3.7, 40.4), (24.0, 60.1), (31.2, 30.0), (-11.0, 33.0)]:
        i, j = int((lon - west) / (east - west) * width), int((north - lat) / (north - south) * height)
        # the map pixel's centre, in the tile of zoom z under it
        centre = (west + (i + 0.5) * (east - west) / width, north - (j + 0.5) * (north - south) / height)
        mx, my = mercantile.xy(*centre)
        column, row = (
            (mx + mercantile.CE / 2) / mercantile.CE * 256 * 2**z,
            (mercantile.CE / 2 - my) / mercantile.CE * 256 * 2**z,
        )
        key = (int(column) // 256, int(row) // 256)
        if key not in tiles:
            tiles[key] = rgba(client.get(f"/tiles/{z}/{key[0]}/{key[1]}.png", params=QUERY).content)
        assert np.array_equal(drawn[:, j, i], tiles[key][:, int(row) % 256, int(column) % 256]), (lon, lat)
    assert (drawn[3] > 0).mean() > 0.5


def test_no_cell_is_transparent(client, store_path):
    west, south, east, north = Store(store_path).bounds
    answer = get_map(client, bbox=f"{west - 20},{south - 10},{east + 20},{north + 10}", width=400)
    drawn = rgba(answer.content)
    _, height, width = drawn.shape
    assert (width, height) == (400, round(400 * (north - south + 20) / (east - west + 40)))
    assert (drawn[3, :, :20] == 0).all() and (drawn[3, :, -20:] == 0).all(), "west and east of the store"
    assert (drawn[3, height // 2, width // 2 - 50 : width // 2 + 50] > 0).all()


def test_the_polar_rows_of_a_crs84_map_are_transparent(client):
    drawn = rgba(get_map(client, layer="uncertainty", bbox="-180,-90,180,90", width=360, height=180).content)
    assert drawn.shape == (4, 180, 360)
    assert (drawn[3, :4] == 0).all() and (drawn[3, -4:] == 0).all(), "beyond Web Mercator's latitudes"


@pytest.mark.parametrize(
    ("params", "size"),
    [
        ({"width": 300}, (300, 150)),
        ({"height": 300}, (600, 300)),
        ({}, (1024, 512)),
        ({"width": 7, "height": 9}, (7, 9)),
    ],
)
def test_a_side_left_out_follows_the_boxs_aspect(client, params, size):
    answer = get_map(client, bbox="-10,30,30,50", **params)
    assert Image.open(io.BytesIO(answer.content)).size == size


def test_a_web_mercator_map_says_so(client):
    x0, y0, x1, y1 = mercantile.xy_bounds(*TILE[1:], TILE[0])
    answer = get_map(client, bbox=f"{x0},{y0},{x1},{y1}", width=100, height=50, **IN_METRES)
    assert answer.headers["content-crs"] == f"<{WEB_MERCATOR}>"
    assert [float(v) for v in answer.headers["content-bbox"].split(",")] == pytest.approx([x0, y0, x1, y1])
    in_degrees = get_map(
        client, bbox=metres(mercantile.bounds(*TILE[1:], TILE[0])), width=100, height=50, crs="EPSG:3857"
    )
    assert [float(v) for v in in_degrees.headers["content-bbox"].split(",")] == pytest.approx([x0, y0, x1, y1])
    assert in_degrees.content == answer.content, "a bbox in CRS84 drawn in Web Mercator"


def test_a_box_across_the_antimeridian_is_drawn_east_of_its_west(client):
    """West > east crosses the antimeridian: the box 0..-170 (190 degrees) is the two boxes
    0..180 (over the fixture's cells) and -180..-170 side by side."""
    across = rgba(get_map(client, layer="uncertainty", bbox="0,30,-170,60", width=190, height=30).content)
    west = rgba(get_map(client, layer="uncertainty", bbox="0,30,180,60", width=180, height=30).content)
    east = rgba(get_map(client, layer="uncertainty", bbox="-180,30,-170,60", width=10, height=30).content)
    assert (west[3] > 0).any()
    assert np.array_equal(across, np.concatenate([west, east], axis=2))


def test_the_whole_world_in_metres_is_the_whole_world_in_degrees(client):
    """Web Mercator's square in CRS84 is -180..180 whatever a float's rounding: not a box of no
    width across the antimeridian."""
    edge = mercantile.CE / 2
    answer = get_map(client, layer="uncertainty", bbox=f"{-edge},{-edge},{edge},{edge}", **{"bbox-crs": WEB_MERCATOR})
    west, south, east, north = (float(v) for v in answer.headers["content-bbox"].split(","))
    assert (west, east) == (-180.0, 180.0) and south == pytest.approx(-85.0511287798066)
    assert Image.open(io.BytesIO(answer.content)).size == (1024, round(1024 * (north - south) / 360))


def test_each_query_layer_and_format_draws_its_own(client):
    box = {"bbox": "-10,35,30,60", "width": 200}
    drawn = {
        "birdsong": get_map(client, **box).content,
        "rain": get_map(client, **box, q="rain on a roof").content,
        "heatmap": get_map(client, "heatmap", **box).content,
        "viridis": get_map(client, **box, colormap_name="viridis").content,
    }
    assert len(set(drawn.values())) == len(drawn)
    webp = get_map(client, **box, f="webp")
    assert webp.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(webp.content)).format == "WEBP"
    assert np.array_equal(rgba(webp.content), rgba(drawn["birdsong"]))


@pytest.mark.parametrize("layer", ["contrast", "uncertainty"])
def test_a_values_map_of_one_tile_is_that_tiles_values(client, layer):
    z, x, y = TILE
    box = {"bbox": metres(mercantile.xy_bounds(x, y, z)), "width": 256, "height": 256, **IN_METRES}
    answer = get_map(client, layer, f="tif", **box)
    assert answer.headers["content-type"] == GEOTIFF
    crs, placed, values = geotiff(answer.content)
    tile = client.get(f"/tiles/WebMercatorQuad/{z}/{x}/{y}.tif", params={**QUERY, "layer": layer})
    tile_crs, tile_bounds, tile_values = geotiff(tile.content)
    assert crs == tile_crs and crs.to_epsg() == 3857 and placed == pytest.approx(tile_bounds)
    assert np.isfinite(values).mean() > 0.5, "cells are drawn"
    assert np.array_equal(values, tile_values, equal_nan=True)
    as_npy = get_map(client, layer, f="npy", **box)
    assert as_npy.headers["content-type"] == "application/x-npy"
    assert np.array_equal(decode_npy(as_npy.content), values, equal_nan=True)


def test_a_maps_picture_colours_its_values(client):
    """The PNG map is its .npy map coloured as a PNG tile is coloured, at the scale asked."""
    box = {"bbox": "-10,35,30,60", "width": 200, "rescale": "-6,-2", "colormap_name": "viridis"}
    values = decode_npy(get_map(client, f="npy", **box).content)
    assert values.shape == (125, 200) and np.isfinite(values).mean() > 0.5
    assert get_map(client, **box).content == render.encode_png(values, -6.0, -2.0, "viridis")


@pytest.mark.parametrize(
    ("params", "epsg", "bounds"),
    [
        ({"bbox": "170,-50,-160,-20", "width": 300}, 4326, (170.0, -50.0, 200.0, -20.0)),
        ({"bbox": "0,40,20,50", "width": 64, "crs": "EPSG:3857"}, 3857, (0.0, *mercantile.xy(0, 40)[1:], 0.0, 0.0)),
    ],
)
def test_a_geotiff_map_is_placed_on_its_box_in_its_crs(client, params, epsg, bounds):
    """Across the antimeridian its east lies past 180 degrees, where GDAL reads it in place."""
    answer = get_map(client, f="tif", **params)
    crs, placed, values = geotiff(answer.content)
    assert crs.to_epsg() == epsg
    expected = [float(v) for v in answer.headers["content-bbox"].split(",")]
    if epsg == 4326:
        assert placed == pytest.approx(bounds) and expected == [170.0, -50.0, -160.0, -20.0]
    else:
        assert placed == pytest.approx(expected) and placed[1] == pytest.approx(bounds[1])
    assert np.array_equal(values, decode_npy(get_map(client, f="npy", **params).content), equal_nan=True)


def test_a_values_map_is_nan_where_no_cell_or_tile_is(client, store_path):
    _, _, values = geotiff(get_map(client, "uncertainty", f="tif", bbox="-180,-90,180,90", width=360).content)
    assert values.shape == (180, 360) and np.isnan(values[:4]).all() and np.isnan(values[-4:]).all()
    west, south, east, north = Store(store_path).bounds
    inside = values[round(90 - north) + 2 : round(90 - south) - 2, round(180 + west) + 2 : round(180 + east) - 2]
    assert np.isfinite(inside).all(), "the store's cells"
    assert np.isnan(values[:, : round(180 + west) - 1]).all(), "west of them"


def test_colours_neither_change_nor_name_a_values_map(client):
    box = {"bbox": "0,40,20,50", "width": 64}
    plain = get_map(client, f="tif", **box)
    styled = get_map(client, f="tif", colormap_name="viridis", rescale="0,1", **box)
    assert styled.headers["etag"] == plain.headers["etag"] and styled.content == plain.content
    assert get_map(client, f="npy", **box).headers["etag"] != plain.headers["etag"]
    assert get_map(client, **box).headers["etag"] not in (plain.headers["etag"],)


def test_a_map_is_cached_as_a_tile(client):
    first = get_map(client, bbox="0,40,20,50", width=64)
    tile = client.get("/tiles/4/8/5.png", params=QUERY)
    assert first.headers["etag"].startswith('"') and first.headers["cache-control"] == tile.headers["cache-control"]
    again = client.get(
        "/collections/contrast/map",
        params={**QUERY, "bbox": "0,40,20,50", "width": 64},
        headers={"if-none-match": first.headers["etag"]},
    )
    assert again.status_code == 304
    other = get_map(client, bbox="0,40,20,50", width=65)
    assert other.headers["etag"] != first.headers["etag"]


def map_links(collection: dict) -> dict[str, dict]:
    """A collection's map links by their type."""
    return {item["type"]: item for item in collection["links"] if item["rel"] == MAP_REL}


def test_the_collections_map_links_resolve(client):
    for layer in ("contrast", "uncertainty"):
        collection = client.get(f"/collections/{layer}", params=QUERY).json()
        links = map_links(collection)
        assert list(links) == ["image/png", GEOTIFF], "GDAL's OGCAPI driver takes the first of image/png or jpeg"
        assert links["image/png"]["href"] == f"http://127.0.0.1/collections/{layer}/map?q=birdsong&hour=6"
        assert links[GEOTIFF]["href"] == f"http://127.0.0.1/collections/{layer}/map?q=birdsong&hour=6&f=tif"
        for kind, item in links.items():
            answer = client.get(item["href"])
            assert answer.status_code == 200 and answer.headers["content-type"] == kind
        assert client.get(links["image/png"]["href"]).content == get_map(client, layer).content
        with rasterio.MemoryFile(client.get(links[GEOTIFF]["href"]).content) as memory, memory.open() as tiff:
            values = tiff.read(1)
        assert np.array_equal(values, decode_npy(get_map(client, layer, f="npy").content), equal_nan=True)


def test_a_collection_asked_as_json_links_maps_of_their_own_format(client):
    """OGC API clients ask documents with `f=json`: the map links leave the document's format out,
    which the map route would refuse as a map's."""
    collection = client.get("/collections/contrast", params={**QUERY, "f": "json"}).json()
    for kind, item in map_links(collection).items():
        assert "f=json" not in item["href"]
        assert client.get(item["href"]).headers["content-type"] == kind


@pytest.mark.parametrize(
    ("path", "params", "status", "said"),
    [
        ("/collections/nope/map", QUERY, 404, "unknown collection 'nope'"),
        ("/collections/contrast/map", {"hour": 6}, 422, "q (a text query, e.g. q=birdsong) or query"),
        ("/collections/heatmap/map", {"query": "0123456789abcdef"}, 404, "unknown query id"),
        ("/collections/contrast/map", {**QUERY, "layer": "heatmap"}, 422, "layer is not a parameter"),
        ("/collections/contrast/map", {**QUERY, "width": 4096}, 422, "width must be an integer in 1..2048"),
        ("/collections/contrast/map", {**QUERY, "height": 0}, 422, "height must be an integer in 1..2048"),
        ("/collections/contrast/map", {**QUERY, "width": "wide"}, 422, "width must be an integer"),
        ("/collections/contrast/map", {**QUERY, "bbox": "-10,30,30,50", "width": 2048, "height": None}, 200, ""),
        ("/collections/contrast/map", {**QUERY, "bbox": "-10,30,30,31", "width": 2048}, 200, ""),
        (
            "/collections/contrast/map",
            {**QUERY, "bbox": "-10,30,-9,50", "width": 2048},
            422,
            "height worked out from width 2048",
        ),
        ("/collections/contrast/map", {**QUERY, "bbox": "-10,30,30"}, 422, "bbox must be four numbers"),
        ("/collections/contrast/map", {**QUERY, "bbox": "-10,30,nan,50"}, 422, "bbox needs west and east in -180..180"),
        (
            "/collections/contrast/map",
            {**QUERY, "bbox": "-10,30,-10,50"},
            422,
            "bbox needs west and east in -180..180 and apart",
        ),
        ("/collections/contrast/map", {**QUERY, "bbox": "-10,50,30,30"}, 422, "bbox needs -90 <= south < north <= 90"),
        ("/collections/contrast/map", {**QUERY, "bbox": "-10,30,200,50"}, 422, "bbox needs west and east in -180..180"),
        ("/collections/contrast/map", {**QUERY, "bbox": "-10,30,30,95"}, 422, "bbox needs -90 <= south < north <= 90"),
        ("/collections/contrast/map", {**QUERY, "bbox": "0,0,1e8,1", **IN_METRES}, 422, "bbox needs west and east in"),
        ("/collections/contrast/map", {**QUERY, "bbox": "0,86,10,89", "crs": "EPSG:3857"}, 422, "beyond Web Mercator"),
        ("/collections/contrast/map", {**QUERY, "crs": "EPSG:4326"}, 422, "crs must be http://www.opengis.net"),
        ("/collections/contrast/map", {**QUERY, "bbox-crs": "EPSG:2154"}, 422, "bbox-crs must be"),
        ("/collections/contrast/map", {**QUERY, "bbox_crs": WEB_MERCATOR}, 422, "did you mean 'bbox-crs'"),
        ("/collections/contrast/map", {**QUERY, "f": "jpeg"}, 422, "f must be one of png, webp, npy, tif"),
        ("/collections/contrast/map", {**QUERY, "f": "json"}, 422, "f must be one of png, webp, npy, tif"),
    ],
)
def test_a_bad_map_is_refused_naming_the_parameter(client, path, params, status, said):
    answer = client.get(path, params={k: v for k, v in params.items() if v is not None})
    assert answer.status_code == status, answer.text[:300]
    if said:
        assert said in answer.json()["detail"], answer.text


def test_one_422_names_every_bad_parameter(client):
    params = {"hour": 25, "width": 0, "bbox": "1,2", "crs": "nope", "q": "birdsong"}
    detail = client.get("/collections/contrast/map", params=params).json()["detail"]
    for name in ("hour must be", "width must be", "crs must be"):
        assert name in detail, detail
    detail = client.get("/collections/contrast/map", params={"bbox": "1,2", "q": "birdsong", "source": "nope"}).json()[
        "detail"
    ]
    assert "bbox must be four numbers" in detail and "source must be one of" in detail


# GDAL's OGCAPI driver, asked for the map API, against a real uvicorn ----------------------------

GDAL_MAP_COMMAND = re.search(r"```bash\n(gdal_translate -oo API=MAP [^\n]*'OGCAPI:[^\n]*)\n```", DOCS).group(1)


@needs_gdal
def test_gdal_reads_the_map_api_as_the_servers_map(bundle_path, store_path, tmp_path):
    """GDAL 3.6's map API reads a collection's bbox as degrees (EPSG:4326) and its scaleDenominator
    as the full resolution, asks the map in blocks of 256 px (`width`, `height` and `bbox` appended
    to the link's URL) and assembles them: at a size it holds (its full size or an overview's), its
    raster is the server's one map of that size over the bbox."""
    with live_server(bundle_path, store_path) as server:
        url = f"OGCAPI:{server}/collections/contrast?q=birdsong&hour=6"
        info = subprocess.run(
            ["gdalinfo", "-json", "-oo", "API=MAP", url], capture_output=True, text=True, timeout=120, check=True
        )
        described = json.loads(info.stdout)
        sizes = [described["size"]] + [o["size"] for o in described["bands"][0].get("overviews", [])]
        width, height = next(size for size in sizes if size[0] <= 1024)
        command = GDAL_MAP_COMMAND.replace("http://127.0.0.1:8000", server)
        gdal(re.sub(r"-outsize \d+ \d+", f"-outsize {width} {height}", command), tmp_path)
        west, south, east, north = Store(store_path).bounds
        asked = {**QUERY, "bbox": f"{west},{south},{east},{north}", "width": width, "height": height}
        expected = rgba(httpx.get(f"{server}/collections/contrast/map", params=asked, timeout=60).content)
    with rasterio.open(tmp_path / "contrast-map.tif") as src:
        assert src.crs.to_epsg() == 4326 and (src.width, src.height, src.count) == (width, height, 4)
        assert tuple(src.bounds) == pytest.approx((west, south, east, north))
        pixels = src.read()
    assert (expected[3] > 0).mean() > 0.5
    assert np.array_equal(pixels, expected)
    # Its full resolution is the collection's scaleDenominator: the store's finest cells 16 px a
    # side (a tile of zoom maxlevel - 4), not GDAL's 1e-8 degrees (GDAL 3.6 adds 5 to the width).
    degrees = 360 / (256 * 2 ** (Store(store_path).maxlevel - 4))
    full_width, full_height = described["size"]
    assert abs(full_width - (east - west) / degrees) <= 6 and abs(full_height - (north - south) / degrees) <= 1


GDAL_VALUES_COMMAND = re.search(r"```bash\n(gdal_translate '/vsicurl/([^']*)' [^\n]*)\n```", DOCS)


@needs_gdal
def test_gdal_reads_a_values_map_as_docs_api_md_shows(bundle_path, store_path, tmp_path):
    """docs/api.md's line, run as written against a real uvicorn: GDAL copies the map's GeoTIFF
    over HTTP into a file holding the .npy map's numbers, placed on the box in degrees."""
    command, url = GDAL_VALUES_COMMAND.groups()
    with live_server(bundle_path, store_path) as server:
        gdal(command.replace("http://127.0.0.1:8000", server), tmp_path)
        expected = decode_npy(
            httpx.get(url.replace("http://127.0.0.1:8000", server).replace("f=tif", "f=npy"), timeout=60).content
        )
    [written] = tmp_path.glob("*.tif")
    with rasterio.open(written) as src:
        assert src.crs.to_epsg() == 4326 and src.dtypes == ("float32",) and math.isnan(src.nodata)
        assert tuple(src.bounds) == pytest.approx((-12.0, 34.0, 32.0, 60.0))
        values = src.read(1)
    assert values.shape == (520, 880) and np.isfinite(values).mean() > 0.5
    assert np.array_equal(values, expected, equal_nan=True)


def test_the_benchmarks_map_covers_exactly_the_viewport_it_is_timed_against():
    """benchmarks/map_image.py times one map against the harness's viewport tiles: its box and
    size must be those tiles', so the map is drawn from the very tiles fetched beside it."""
    from urllib.parse import parse_qs, urlsplit

    from benchmarks.map_image import map_url
    from benchmarks.run import VIEWPORT

    asked = parse_qs(urlsplit(map_url("birdsong")).query)
    bounds = [mercantile.xy_bounds(x, y, z) for z, x, y in VIEWPORT]
    box = [float(v) for v in asked["bbox"][0].split(",")]
    expected = [min(b.left for b in bounds), min(b.bottom for b in bounds), max(b.right for b in bounds)]
    expected.append(max(b.top for b in bounds))
    assert box == pytest.approx(expected, abs=1e-2)
    columns, rows = {x for _, x, _ in VIEWPORT}, {y for _, _, y in VIEWPORT}
    assert (int(asked["width"][0]), int(asked["height"][0])) == (256 * len(columns), 256 * len(rows))
    assert asked["crs"] == asked["bbox-crs"] == ["EPSG:3857"]


@pytest.mark.parametrize(
    "bbox, crs, size, zoom",
    [
        ((-180.0, -90.0, 180.0, 90.0), CRS84, 256, 3),
        ((170.0, -20.0, -170.0, 10.0), CRS84, 256, 6),  # across the antimeridian
        ((-180.0, -90.0, 180.0, 90.0), CRS84, 512, 0),
        ((0.0, 40.0, 20.0, 50.0), CRS84, 256, 9),
    ],
)
def test_a_plans_tiles_are_counted_as_they_are_listed(bbox, crs, size, zoom):
    plan = maps.Plan.at(maps.MapRequest(crs, bbox, 300, 200, "png"), zoom, size)
    assert plan.count() == len(plan.tiles()) > 0


def test_a_world_map_asked_at_the_finest_zoom_is_drawn_coarser_at_once(client):
    """minzoom=24 over the whole world: 2**48 tiles before coarsening; listing them to count them
    took the server's memory (OOM-killed at 23.8 GB)."""
    plan = maps.Plan.of(maps.MapRequest(CRS84, (-180.0, -90.0, 180.0, 90.0), 64, 64, "png"), 256, (24, 24))
    assert plan.count() <= maps.max_tiles(256) and plan.zoom < 24
    answer = get_map(client, width=64, height=64, minzoom=24, maxzoom=24, f="npy")
    assert decode_npy(answer.content).shape == (64, 64)

"""TiTiler's parameters, as a client moving from TiTiler sends them: the document parameters
(`tile_format`, `minzoom`, `maxzoom` of TileJSON and WMTS) shape the document, and the rendering
parameters this server has no use for (`color_formula`, `buffer`, `tile_scale`, ...) are refused
with what does the job here, never silently ignored (server/params.py, UNSUPPORTED)."""

import io
import xml.etree.ElementTree as ET
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest
from PIL import Image

from server.params import UNSUPPORTED
from server.render import FORMATS
from tests.server_support import LAND_TILE, localhost_client, refused

NS = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}
Z, X, Y = LAND_TILE


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return localhost_client(bundle_path, store_path)


def tile_of(template: str, z: int, x: int, y: int) -> str:
    """The path and query of one tile of a TileJSON template (absolute URL to the client's)."""
    url = urlsplit(template.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y)))
    return f"{url.path}?{url.query}"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_tilejson_points_to_tiles_of_the_format_asked(client, fmt):
    document = client.get("/tilejson.json", params={"q": "birdsong", "hour": 6, "tile_format": fmt}).json()
    [template] = document["tiles"]
    assert template.split("?")[0].endswith(f"/{{z}}/{{x}}/{{y}}.{fmt}")
    assert "tile_format" not in template, "a document's own parameters stay out of its tile URLs"
    tile = client.get(tile_of(template, Z, X, Y))
    assert tile.status_code == 200 and tile.headers["content-type"] == FORMATS[fmt]
    values = fmt in ("npy", "tif")
    assert ("colormap" in document, "legend" in document, "rescale" in document) == (not values,) * 3
    assert document["scale"]["units"].startswith("log-odds"), "the units are told whatever the format"
    if fmt == "npy":
        plain = client.get(f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy", params={"q": "birdsong", "hour": 6})
        assert np.array_equal(np.load(io.BytesIO(tile.content)), np.load(io.BytesIO(plain.content)), equal_nan=True)
    if fmt == "webp":
        assert Image.open(io.BytesIO(tile.content)).format == "WEBP"


def test_tilejson_offers_the_zooms_asked(client):
    default = client.get("/tilejson.json", params={"q": "birdsong"}).json()
    lo, hi = default["minzoom"], default["maxzoom"]
    asked = client.get("/tilejson.json", params={"q": "birdsong", "minzoom": lo + 1, "maxzoom": hi + 3}).json()
    assert (asked["minzoom"], asked["maxzoom"]) == (lo + 1, hi + 3)
    assert asked["center"][2] == min(hi + 3, lo + 3)
    query = dict(parse_qsl(urlsplit(asked["tiles"][0]).query))
    assert query == {"q": "birdsong", "layer": "contrast"}
    assert asked["tiles"] == default["tiles"], "png tiles stay on the XYZ route"
    finer = client.get(tile_of(asked["tiles"][0], hi + 3, 0, 0))
    assert finer.status_code == 200, "a zoom finer than the store's is served, its cells drawn larger"


@pytest.mark.parametrize("route", ["/tilejson.json", "/WMTSCapabilities.xml"])
@pytest.mark.parametrize(
    ("params", "sentence"),
    [
        ({"minzoom": "5", "maxzoom": "4"}, "minzoom 5 is above maxzoom 4: give minzoom <= maxzoom"),
        ({"minzoom": "20"}, "minzoom 20 is above maxzoom 6 (the store's finest level, left out)"),
        ({"maxzoom": "25"}, "maxzoom must be an integer in 0..24, not '25'"),
        ({"minzoom": "-1"}, "minzoom must be an integer in 0..24, not '-1'"),
        ({"minzoom": "02"}, "minzoom must be an integer in 0..24, written in plain decimal digits"),
        ({"tile_format": "jpg"}, "tile_format must be one of png, webp, npy, tif, not 'jpg'"),
        ({"tileformat": "webp"}, "'tileformat' is not a parameter of this route: did you mean 'tile_format'?"),
        ({"MinZoom": "3"}, "'MinZoom' is not a parameter of this route: did you mean 'minzoom'?"),
    ],
)
def test_a_bad_document_parameter_is_refused(client, route, params, sentence):
    assert sentence in refused(client.get(route, params={"q": "birdsong", "hour": "25", **params}))
    assert "hour must be an integer in 0..23" in refused(client.get(route, params={"q": "birdsong", "hour": "25"}))


def test_wmts_lists_the_zooms_and_the_format_asked(client):
    params = {"q": "birdsong", "tile_format": "tif", "minzoom": 2, "maxzoom": 4}
    root = ET.fromstring(client.get("/WMTSCapabilities.xml", params=params).content)
    matrices = root.findall("w:Contents/w:TileMatrixSet/w:TileMatrix", NS)
    assert [m.find("ows:Identifier", NS).text for m in matrices] == ["2", "3", "4"]
    for layer in root.iter(f"{{{NS['w']}}}Layer"):
        assert layer.find("w:Format", NS).text == FORMATS["tif"]
        resource = layer.find("w:ResourceURL", NS)
        assert resource.get("format") == FORMATS["tif"]
        assert resource.get("template").split("?")[0].endswith("/{TileMatrix}/{TileCol}/{TileRow}.tif")
        assert "zoom" not in resource.get("template")
        assert layer.find("w:Style/w:LegendURL", NS) is None, "tiles of values have no colour ramp"
        assert "float32 values" in layer.find("ows:Abstract", NS).text
    png = ET.fromstring(client.get("/WMTSCapabilities.xml", params={"q": "birdsong"}).content)
    assert all(layer.find("w:Style/w:LegendURL", NS) is not None for layer in png.iter(f"{{{NS['w']}}}Layer"))


DRAWN = [
    f"/tiles/{Z}/{X}/{Y}.png",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.webp",
    "/tilejson.json",
    "/WebMercatorQuad/tilejson.json",
    "/WMTSCapabilities.xml",
]


@pytest.mark.parametrize("route", DRAWN)
@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_titiler_rendering_parameters_are_refused_where_tiles_are_drawn(client, route, name):
    detail = refused(client.get(route, params={"q": "birdsong", name: "1", "month": "13"}))
    assert f"{name} is not supported: {UNSUPPORTED[name]}" in detail
    assert "month must be an integer in 1..12" in detail, "one 422 names every bad parameter"


def test_rendering_parameters_are_refused_in_the_order_given(client):
    detail = refused(client.get(DRAWN[0], params={"q": "birdsong", "tile_scale": "2", "buffer": "4"}))
    assert detail.index("tile_scale") < detail.index("buffer")
    assert "ask tilesize=512 (or the tile {y}@2x)" in detail


def test_routes_that_draw_no_tiles_leave_those_names_alone(client):
    """`buffer` means nothing to /search or /point: as any name a route does not take, it is ignored
    there (a cache buster or another tool's parameter)."""
    assert client.get("/search", params={"q": "birdsong", "buffer": "2"}).status_code == 200
    assert client.get("/point/8,46", params={"q": "birdsong", "resampling": "nearest"}).status_code == 200


@pytest.mark.parametrize(
    ("scaled", "plain"),
    [
        (f"/tiles/{Z}/{X}/{Y}@2x.png", f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.png?tilesize=512"),
        (f"/tiles/{Z}/{X}/{Y}@1x.png", f"/tiles/{Z}/{X}/{Y}.png"),
        (f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}@2x.webp", f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.webp?tilesize=512"),
        (f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}@2x.npy", f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy?tilesize=512"),
        (f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}@2x", f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}?tilesize=512"),
    ],
)
def test_a_tile_at_a_pixel_ratio_is_the_tile_of_that_size(client, scaled, plain):
    """`{y}@2x`, as TiTiler and MapLibre's `{ratio}` write it: the bytes and ETag of tilesize=512."""
    params = {"q": "birdsong", "hour": 6}
    path, _, size = plain.partition("?")
    at_ratio, sized = client.get(scaled, params=params), client.get(path, params={**params, **dict(parse_qsl(size))})
    assert at_ratio.status_code == sized.status_code == 200
    assert at_ratio.content == sized.content and at_ratio.headers["etag"] == sized.headers["etag"]


@pytest.mark.parametrize(
    ("path", "params", "sentences"),
    [
        (f"/tiles/{Z}/{X}/{Y}@3x.png", {}, ["scale must be an integer in 1..2, not '3'"]),
        (f"/tiles/{Z}/{X}/{Y}@0x.png", {"hour": "24"}, ["scale must be an integer in 1..2, not '0'", "hour must"]),
        (f"/tiles/{Z}/{X}/{Y}@02x.png", {}, ["scale must be an integer in 1..2, written in plain decimal digits"]),
        (f"/tiles/{Z}/{X}/{Y}@2x.png", {"tilesize": "512"}, ["tilesize and @2x both give the tile's size"]),
        (
            f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}@2x.png",
            {"tilesize": "300", "month": "0"},
            ["tilesize and @2x both give the tile's size", "month must be an integer in 1..12, not '0'"],
        ),
        (f"/tiles/{Z}/{X}/{Y}@x.png", {}, ["y must be an integer, not '2@x'"]),
    ],
)
def test_a_bad_pixel_ratio_is_refused(client, path, params, sentences):
    detail = refused(client.get(path, params={"q": "birdsong", **params}))
    assert all(sentence in detail for sentence in sentences), detail
    assert "tilesize must be 256 or 512" not in detail, "the size is refused once"


@pytest.mark.parametrize(("route", "params"), [("/point/8,46", {}), ("/search", {"bbox": "5,44,12,48", "k": "3"})])
def test_coordinates_are_in_degrees_and_another_crs_is_refused(client, route, params):
    """TiTiler's coord_crs: metres of EPSG:3857 read as degrees would answer for another place."""
    plain = client.get(route, params={"q": "birdsong", **params})
    assert plain.status_code == 200
    for name in ("EPSG:4326", "epsg:4326", "OGC:CRS84"):
        assert client.get(route, params={"q": "birdsong", "coord_crs": name, **params}).json() == plain.json()
    detail = refused(client.get(route, params={"q": "birdsong", "coord_crs": "EPSG:3857", "hour": "24", **params}))
    assert "coord_crs must be EPSG:4326 or OGC:CRS84 (longitude, latitude in degrees), not 'EPSG:3857'" in detail
    assert "hour must be an integer in 0..23" in detail


@pytest.mark.parametrize(
    ("route", "params", "name", "meant"),
    [
        ("/point/8,46", {}, "crs", "coord_crs"),
        ("/point/8,46", {}, "bbox-crs", "coord_crs"),
        ("/search", {"bbox": "5,44,12,48"}, "bbox-crs", "coord_crs"),
        ("/search", {"bbox": "5,44,12,48"}, "crs", "coord_crs"),
        ("/search", {"bbox": "5,44,12,48"}, "BBOX_CRS", "coord_crs"),
        ("/collections/uncertainty/map", {"bbox": "5,44,12,48"}, "coord_crs", "bbox-crs"),
    ],
)
def test_another_routes_crs_parameter_is_refused_not_ignored(client, route, params, name, meant):
    """The map's crs and bbox-crs given to /point or /search (and coord_crs to the map) were
    ignored: metres of EPSG:3857 came back 200, read as degrees."""
    detail = refused(client.get(route, params={"q": "birdsong", name: "EPSG:3857", **params}))
    assert detail.startswith(f"{name!r} is not a parameter of this route: did you mean {meant!r}?"), detail

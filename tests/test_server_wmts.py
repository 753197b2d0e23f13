"""WMTS capabilities read by GDAL's WMTS driver (through rasterio) against a live uvicorn: the
pixels GDAL assembles are the server's tiles."""

import io
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import httpx
import mercantile
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window, from_bounds

from tests.server_support import live_server

NS = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    with live_server(bundle_path, store_path) as url:
        yield url


def test_capabilities_document(server):
    params = {"q": "birdsong & rain", "hour": 6, "layer": "heatmap"}
    r = httpx.get(f"{server}/WMTSCapabilities.xml", params=params, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.content)  # `&` in URLs is escaped, or this would not parse
    layers = {layer.find("ows:Identifier", NS).text: layer for layer in root.iter(f"{{{NS['w']}}}Layer")}
    assert set(layers) == {"heatmap", "uncertainty"}
    template = layers["heatmap"].find("w:ResourceURL", NS).get("template")
    assert template.endswith(
        "/tiles/WebMercatorQuad/{TileMatrix}/{TileCol}/{TileRow}.png?q=birdsong+%26+rain&hour=6&layer=heatmap"
    )
    matrices = root.findall("w:Contents/w:TileMatrixSet/w:TileMatrix", NS)
    assert [m.find("ows:Identifier", NS).text for m in matrices] == [str(z) for z in range(7)]
    assert (
        ET.fromstring(httpx.get(f"{server}/WMTSCapabilities.xml", timeout=30).content)
        .find("w:Contents/w:Layer/ows:Identifier", NS)
        .text
        == "uncertainty"
    )


def test_every_text_and_url_is_escaped(server):
    """Markup and characters XML cannot hold in a query reach the document as text, never as XML
    (control characters are refused before: tests/test_http_review.py)."""
    text = 'a&b <c> "d" \ufffe'
    r = httpx.get(f"{server}/WMTSCapabilities.xml", params={"q": text}, timeout=30)
    assert r.status_code == 200
    root = ET.fromstring(r.content)
    heatmap = next(
        layer for layer in root.iter(f"{{{NS['w']}}}Layer") if layer.find("ows:Identifier", NS).text == "heatmap"
    )
    assert heatmap.find("ows:Title", NS).text == 'soundscape heatmap: a&b <c> "d" ', "only U+FFFE XML cannot hold"
    assert "&" not in heatmap.find("w:ResourceURL", NS).get("template").split("?")[0]
    get = root.find("ows:OperationsMetadata/ows:Operation/ows:DCP/ows:HTTP/ows:Get", NS)
    assert get.get("{http://www.w3.org/1999/xlink}href").endswith(r.request.url.raw_path.decode().split("?", 1)[1])


def test_its_operations_are_restful_and_a_kvp_gettile_is_refused(server):
    """WMTS 1.0.0's OperationsMetadata describes the KVP (procedure-oriented) operations: this
    server has none, so both operations are RESTful, GetTile under the templates' prefix, and a
    KVP GetTile at the capabilities' URL (which answered the XML with 200) is a 422 saying so."""
    url = f"{server}/WMTSCapabilities.xml"
    root = ET.fromstring(httpx.get(url, params={"q": "birdsong"}, timeout=30).content)
    operations = {op.get("name"): op for op in root.findall("ows:OperationsMetadata/ows:Operation", NS)}
    assert set(operations) == {"GetCapabilities", "GetTile"}
    assert all([v.text for v in op.iterfind(".//ows:Value", NS)] == ["RESTful"] for op in operations.values())
    prefix = operations["GetTile"].find(".//ows:Get", NS).get("{http://www.w3.org/1999/xlink}href")
    templates = [r.get("template") for r in root.iter(f"{{{NS['w']}}}ResourceURL")]
    assert prefix == f"{server}/tiles/WebMercatorQuad/" and all(t.startswith(prefix) for t in templates)
    tile = httpx.get(templates[0].format(TileMatrix=2, TileCol=2, TileRow=1), timeout=30)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    kvp = {"SERVICE": "WMTS", "VERSION": "1.0.0", "LAYER": "contrast", "STYLE": "default", "FORMAT": "image/png"}
    kvp |= {"TILEMATRIXSET": "WebMercatorQuad", "TILEMATRIX": 2, "TILEROW": 1, "TILECOL": 2}
    for request in ({"REQUEST": "GetTile"}, {"request": "gettile"}, {"REQUEST": "GetFeatureInfo"}):
        refused = httpx.get(url, params={"q": "birdsong", **kvp, **request}, timeout=30)
        assert refused.status_code == 422 and refused.headers["content-type"] == "application/json", refused.text
        [(name, value)] = request.items()
        assert refused.json()["detail"].startswith(f"{name}='{value}' is not served: this WMTS is RESTful only")
    capabilities = httpx.get(url, params={"q": "birdsong", "SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    assert capabilities.status_code == 200 and ET.fromstring(capabilities.content).tag == f"{{{NS['w']}}}Capabilities"


def test_gdal_reads_the_heatmap_through_wmts(server):
    z, x, y = 6, 33, 22  # over the Alps
    url = f"WMTS:{server}/WMTSCapabilities.xml?q=birdsong,layer=heatmap"
    with rasterio.open(url) as src:
        assert src.crs.to_epsg() == 3857
        rgba = read_tile(src, z, x, y)
    tile = httpx.get(f"{server}/tiles/{z}/{x}/{y}.png", params={"q": "birdsong", "layer": "heatmap"}, timeout=30)
    expected = np.asarray(Image.open(io.BytesIO(tile.content)).convert("RGBA")).transpose(2, 0, 1)
    assert rgba.shape == (4, 256, 256)
    assert (expected[3] > 0).mean() > 0.9
    assert np.array_equal(rgba, expected)


def read_tile(src, z: int, x: int, y: int, size: int = 256) -> np.ndarray:
    """The pixels GDAL assembles over tile z/x/y of a WMTS raster whose finest zoom is z."""
    assert src.transform.a == pytest.approx(2 * 20037508.3427892 / (size * 2**z)), f"zoom {z} is the finest"
    window = from_bounds(*mercantile.xy_bounds(x, y, z), transform=src.transform)
    assert window.col_off == pytest.approx(round(window.col_off), abs=1e-6), "aligned on the tile grid"
    return src.read(window=Window(round(window.col_off), round(window.row_off), size, size))


def test_gdal_reads_the_values_through_wmts_of_geotiff_tiles(server, tmp_path):
    """tile_format=tif, read by GDAL's WMTS driver told the tiles' data type (a GDAL_WMTS file,
    as docs/api.md shows): the float values of the .tif tile, at the finest zoom asked for."""
    z, x, y = 5, 16, 11  # over the Alps
    caps = f"{server}/WMTSCapabilities.xml?q=birdsong&hour=6&tile_format=tif&maxzoom={z}"
    description = tmp_path / "contrast.xml"
    description.write_text(
        f"<GDAL_WMTS><GetCapabilitiesUrl>{escape(caps)}</GetCapabilitiesUrl><Layer>contrast</Layer>"
        "<DataType>Float32</DataType><BandsCount>1</BandsCount></GDAL_WMTS>",
        encoding="utf-8",
    )
    with rasterio.open(description) as src:
        assert src.count == 1 and src.dtypes == ("float32",)
        [values] = read_tile(src, z, x, y)
    tile = httpx.get(f"{server}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy", params={"q": "birdsong", "hour": 6}, timeout=30)
    expected = np.load(io.BytesIO(tile.content))
    assert np.isfinite(expected).mean() > 0.9
    assert np.array_equal(values, expected, equal_nan=True)

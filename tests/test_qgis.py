"""QGIS 3 (Debian's python3-qgis, headless) adds the README's XYZ and WMTS URLs as a GIS user
does, through its "wms" provider, and renders a tile's extent: the picture is the server's tile;
and it adds a map's GeoTIFF URL as a raster layer, whose values it identifies as the server's.
QGIS runs in the system's python3 (tests/qgis_client.py), against a real uvicorn."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import mercantile
import numpy as np
import pytest
from PIL import Image

from tests.server_support import REPO, decode_npy, live_server

pytestmark = pytest.mark.slow

SYSTEM_PYTHON = "/usr/bin/python3"
README = (REPO / "README.md").read_text(encoding="utf-8")
ADDRESS = "http://127.0.0.1:8000"
Z, X, Y = 5, 16, 11  # over the fixture's imagery (the Alps)


def readme_url(start: str) -> str:
    """The README's URL that starts with `start` (after the address), as written there."""
    return re.search(rf"    {re.escape(ADDRESS)}({re.escape(start)}\S*)", README).group(1)


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    done = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail("QGIS's Python bindings are not installed: apt-get install -y python3-qgis")
    with live_server(bundle_path, store_path) as url:
        yield url


def xyz(url: str, pixel_ratio: int = 1) -> str:
    """QGIS's data source of an XYZ connection (Layer > Add Layer > XYZ), as its dialog writes it."""
    return f"type=xyz&url={quote(url, safe='')}&zmin=0&zmax=6" + (f"&tilePixelRatio={pixel_ratio}" * (pixel_ratio > 1))


def wmts(capabilities: str, layer: str) -> str:
    """QGIS's data source of a WMTS layer picked from a capabilities URL (Add WMS/WMTS Layer)."""
    return (
        f"crs=EPSG:3857&dpiMode=7&format=image/png&layers={layer}&styles=default&tileMatrixSet=WebMercatorQuad"
        f"&url={quote(capabilities, safe='')}"
    )


def qgis_renders(layers: list[dict], tmp_path: Path) -> dict:
    spec = tmp_path / "layers.json"
    spec.write_text(json.dumps(layers), encoding="utf-8")
    done = subprocess.run(
        [SYSTEM_PYTHON, str(REPO / "tests" / "qgis_client.py"), str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def rgba(data: bytes | Path) -> np.ndarray:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    return np.asarray(Image.open(source).convert("RGBA")).astype(int)


def test_qgis_draws_the_readme_urls_as_the_server_draws_the_tile(server, tmp_path):
    extent = list(mercantile.xy_bounds(X, Y, Z))
    xyz_url = readme_url("/tiles/{z}/{x}/{y}.png?")  # q=birdsong&hour=6
    retina_url = readme_url("/tiles/{z}/{x}/{y}@2x.png?")  # q=birdsong
    capabilities = readme_url("/WMTSCapabilities.xml?")  # q=birdsong
    cases = {
        "xyz": (xyz(server + xyz_url), 256),
        "xyz@2x": (xyz(server + retina_url, pixel_ratio=2), 512),
        "wmts": (wmts(server + capabilities, "contrast"), 256),
        "wmts 512, zooms 1-5": (wmts(f"{server}{capabilities}&tilesize=512&minzoom=1&maxzoom=5", "contrast"), 512),
    }
    layers = [
        {"name": name, "uri": uri, "extent": extent, "size": size, "out": str(tmp_path / f"{i}.png")}
        for i, (name, (uri, size)) in enumerate(cases.items())
    ]
    answers = qgis_renders(layers, tmp_path)
    assert all(answer["valid"] for answer in answers.values()), answers
    query = dict(q="birdsong")
    references = {
        "xyz": httpx.get(f"{server}/tiles/{Z}/{X}/{Y}.png", params={**query, "hour": 6}, timeout=60),
        "xyz@2x": httpx.get(f"{server}/tiles/{Z}/{X}/{Y}@2x.png", params=query, timeout=60),
        "wmts": httpx.get(f"{server}/tiles/{Z}/{X}/{Y}.png", params={**query, "layer": "contrast"}, timeout=60),
        "wmts 512, zooms 1-5": httpx.get(
            f"{server}/tiles/{Z}/{X}/{Y}.png", params={**query, "layer": "contrast", "tilesize": 512}, timeout=60
        ),
    }
    for layer in layers:
        drawn, tile = rgba(Path(layer["out"])), rgba(references[layer["name"]].content)
        assert drawn.shape == tile.shape, layer["name"]
        opaque = tile[..., 3] == 255
        assert opaque.mean() > 0.5, "the tile lies over the fixture's imagery"
        close = np.abs(drawn[..., :3] - tile[..., :3]).max(axis=2) <= 8
        assert close[opaque].mean() > 0.99, (layer["name"], close[opaque].mean())
        assert (drawn[..., 3][~opaque] < 255).all(), "transparent where the tile has no cells"


def test_qgis_draws_another_hour_of_an_instant_through_its_time_dimension(server, tmp_path):
    """WMTS capabilities at an instant list it as the layers' Time dimension, beside every whole hour
    of its day (UTC): QGIS's "Select dimensions" (a layer's `tileDimensions`) draws the default it
    offers, or the hour a user picks, each the server's tile of that instant. (The capabilities
    URL holds the instant at +02:00: QGIS asks for it with the "+" unescaped.) The fixture model
    hardly changes with the hour, so the colours span the default tile's own values: the hours'
    tiles then differ in colour."""
    extent = list(mercantile.xy_bounds(X, Y, Z))
    instants = {"default": "2024-07-01T10:30:00Z", "picked": "2024-07-01T00:00:00Z"}
    query = {"q": "birdsong", "layer": "heatmap"}
    tile_url = f"{server}/tiles/{Z}/{X}/{Y}"
    at_default = {**query, "datetime": instants["default"]}
    values = decode_npy(httpx.get(f"{server}/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy", params=at_default).content)
    query["rescale"] = f"{np.nanmin(values):.6g},{np.nanmax(values):.6g}"
    capabilities = f"{server}/WMTSCapabilities.xml?{urlencode(query)}&datetime=2024-07-01T12:30:00%2B02:00"
    cases = {
        name: wmts(capabilities, "heatmap") + "&tileDimensions=" + quote(f"Time={instant}", safe="")
        for name, instant in instants.items()
    }
    layers = [
        {"name": name, "uri": uri, "extent": extent, "size": 256, "out": str(tmp_path / f"{name}.png")}
        for name, uri in cases.items()
    ]
    answers = qgis_renders(layers, tmp_path)
    assert all(answer["valid"] for answer in answers.values()), answers
    drawn = {name: rgba(Path(layer["out"])) for name, layer in zip(cases, layers, strict=True)}
    for name, instant in instants.items():
        tile = rgba(httpx.get(f"{tile_url}.png", params={**query, "datetime": instant}, timeout=60).content)
        opaque = tile[..., 3] == 255
        assert opaque.mean() > 0.5, "the tile lies over the fixture's imagery"
        close = np.abs(drawn[name][..., :3] - tile[..., :3]).max(axis=2) <= 8
        assert close[opaque].mean() > 0.99, (name, close[opaque].mean())
    assert np.abs(drawn["default"] - drawn["picked"]).max() > 24, "another hour is another map"


def test_qgis_reads_the_values_of_a_geotiff_map_by_its_url(server, tmp_path):
    """Add Raster Layer with a map's GeoTIFF URL (QGIS's gdal provider over /vsicurl/): the
    Identify tool reads, at a pixel's centre, the map's value there (GDAL's reading of a GeoTIFF
    in byte ranges: tests/test_server_ranges.py)."""
    west, south, east, north, width, height = -12.0, 34.0, 32.0, 60.0, 440, 260
    url = f"{server}/collections/contrast/map?q=birdsong&hour=6&bbox={west},{south},{east},{north}&width={width}"
    values = decode_npy(httpx.get(f"{url}&f=npy", timeout=60).content)
    assert values.shape == (height, width)
    pixels = [(row, column) for row in range(13, height, 47) for column in range(29, width, 83)]
    probes = [
        (west + (column + 0.5) * (east - west) / width, north - (row + 0.5) * (north - south) / height)
        for row, column in pixels
    ]
    layer = {"name": "values", "provider": "gdal", "uri": f"/vsicurl/{url}&f=tif", "probes": probes}
    answer = qgis_renders([layer], tmp_path)["values"]
    assert answer["valid"], answer
    expected = [float(values[row, column]) for row, column in pixels]
    read = [math.nan if value is None else value for value in answer["values"]]
    assert np.isfinite(expected).sum() >= 10, "most probes lie over the store's cells"
    assert np.array_equal(np.float32(read), np.float32(expected), equal_nan=True), (read, expected)

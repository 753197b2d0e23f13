"""The README's URLs and docs/api.md's examples, run verbatim against a real uvicorn (only the
address `http://127.0.0.1:8000` is replaced by the test server's): the curl lines in bash, the
GDAL `WMTS:` connection strings through GDAL (rasterio), and the Leaflet, MapLibre and OpenLayers
snippets in headless Chromium, each drawing the heatmap."""

from __future__ import annotations

import io
import re
import subprocess

import httpx
import mercantile
import numpy as np
import pytest
import rasterio
import soundfile
from PIL import Image

from tests.server_support import REPO, decode_npy, live_server
from tests.test_server_wmts import read_tile
from tests.test_viewer import ARGS, CHROMIUM

DOCS = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")
ADDRESS = "http://127.0.0.1:8000"
LEAFLET = REPO / "tests" / "assets" / "leaflet"
OPENLAYERS = REPO / "tests" / "assets" / "openlayers"
GEOTIFF = REPO / "tests" / "assets" / "geotiff"

pytestmark = pytest.mark.slow


def code_block(after: str, language: str) -> str:
    """The first fenced block of `language` after the line `after` in docs/api.md."""
    return re.search(rf"{re.escape(after)}\s*```{language}\n(.*?)```", DOCS, re.S).group(1)


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    with live_server(bundle_path, store_path) as url:
        yield url


def test_readme_urls_answer(server):
    urls = re.findall(rf"    {re.escape(ADDRESS)}(/\S*)", README)
    assert len(urls) >= 5, "the README lists the viewer, tiles, TileJSON and WMTS"
    for path in urls:
        r = httpx.get(server + path.replace("{z}/{x}/{y}", "2/2/1"), timeout=60)
        assert r.status_code == 200, (path, r.text[:200])


def test_curl_examples_run_verbatim(server, tmp_path):
    wave = (0.2 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    soundfile.write(tmp_path / "dawn.flac", wave, 16000)
    soundfile.write(tmp_path / "dawn.wav", wave, 16000)
    (tmp_path / ".curlrc").write_text("fail-with-body\n", encoding="utf-8")  # an HTTP error fails the line
    etag = None
    for line in code_block("curl:", "bash").strip().splitlines():
        command = line.split("   # ")[0].replace(ADDRESS, server)
        if "<etag>" in command:
            command = command.replace('"<etag>"', etag)
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "CURL_HOME": str(tmp_path)},
        )
        assert done.returncode == 0, (line, done.stdout[-300:], done.stderr[-300:])
        if "grep -i etag" in command:
            etag = done.stdout.split(":", 1)[1].strip()
        if line.endswith("# 304"):
            assert done.stdout.strip() == "304"
    assert Image.open(tmp_path / "tile.png").format == "PNG"
    assert np.load(tmp_path / "values.npy").shape == (256, 256)


def test_gdal_connection_strings_run(server):
    for string in re.findall(r"'(WMTS:[^']+)'", DOCS):
        with rasterio.open(string.replace(ADDRESS, server)) as src:
            rgba = src.read(out_shape=(src.count, round(src.height * 1024 / src.width), 1024))
        assert rgba.shape[0] == 4 and (rgba[3] > 0).any(), string


def test_gdal_reads_values_through_the_documented_wmts_description(server, tmp_path):
    description = tmp_path / "contrast.xml"
    xml = code_block("`&amp;` inside it), e.g. `contrast.xml`:", "xml").replace(ADDRESS, server)
    description.write_text(xml, encoding="utf-8")
    z, x, y = 5, 16, 11  # over the fixture's imagery
    with rasterio.open(description) as src:
        assert (src.count, src.dtypes) == (1, ("float32",))
        [values] = read_tile(src, z, x, y)
    tile = httpx.get(f"{server}/tiles/WebMercatorQuad/{z}/{x}/{y}.npy", params={"q": "birdsong", "hour": 6}, timeout=30)
    assert np.isfinite(values).mean() > 0.9
    assert np.array_equal(values, np.load(io.BytesIO(tile.content)), equal_nan=True)


def _page(pw, server, pixel_ratio: float = 1):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    page = browser.new_page(viewport={"width": 512, "height": 512}, device_scale_factor=pixel_ratio)
    tiles = []
    page.on("response", lambda r: tiles.append(r) if "/tiles/" in r.url else None)
    page.set_content(
        '<html><body style="margin:0;background:#fff">'
        '<div id="map" style="width:512px;height:512px"></div></body></html>'
    )
    return browser, page, tiles


def _drawn(page) -> float:
    """Share of the map's pixels that are not the white page (the heatmap drew there)."""
    pixels = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
    return float((np.abs(pixels - 255).sum(axis=2) > 60).mean())


@pytest.mark.parametrize("pixel_ratio", [1, 2])
def test_leaflet_example_draws_the_heatmap(server, pixel_ratio):
    """At a device pixel ratio of 2, Leaflet's `{r}` asks for the 512 px `@2x` tiles."""
    from playwright.sync_api import sync_playwright

    snippet = code_block("Leaflet (256 px tiles; `{r}` asks for the `@2x` tiles on a high-DPI screen):", "js")
    with sync_playwright() as pw:
        browser, page, tiles = _page(pw, server, pixel_ratio)
        page.add_style_tag(content=(LEAFLET / "leaflet.css").read_text(encoding="utf-8"))
        page.add_script_tag(content=(LEAFLET / "leaflet.js").read_text(encoding="utf-8"))
        page.evaluate(
            "window.map = L.map('map', {zoomControl: false}).setView([48, 12], 3);\n" + snippet.replace(ADDRESS, server)
        )
        page.wait_for_function("document.querySelectorAll('.leaflet-tile-loaded').length >= 4", timeout=60_000)
        page.wait_for_timeout(500)
        assert tiles and {r.status for r in tiles} == {200}
        size = 256 * pixel_ratio
        assert {Image.open(io.BytesIO(r.body())).size for r in tiles} == {(size, size)}
        assert all(("@2x.png?" in r.url) == (pixel_ratio == 2) for r in tiles)
        assert _drawn(page) > 0.1
        browser.close()


def run_on_a_maplibre_map(page, snippet: str) -> None:
    """Run `snippet` (JS with `map` in scope) on an empty MapLibre map over the page's #map, and
    wait until every tile it asked for is loaded."""
    page.evaluate(
        """(snippet) => new Promise((resolve) => {
        window.map = new maplibregl.Map({container: 'map', style: {version: 8, sources: {}, layers: []},
                                         center: [12, 48], zoom: 2, attributionControl: false});
        map.on('load', () => { new Function('map', snippet)(map); map.once('idle', resolve); });
    })""",
        snippet,
    )
    page.wait_for_function("window.map.areTilesLoaded()", timeout=60_000)


def _maplibre_draws(server, after: str, pixel_ratio: float = 1) -> list[tuple[str, tuple[int, int]]]:
    """Run the MapLibre snippet after the line `after` on an empty map: each tile's URL and size
    in pixels, once every tile is loaded and the heatmap is drawn."""
    from playwright.sync_api import sync_playwright

    snippet = code_block(after, "js").replace(ADDRESS, server)
    with sync_playwright() as pw:
        browser, page, tiles = _page(pw, server, pixel_ratio)
        page.add_script_tag(url=f"{server}/static/maplibre/maplibre-gl.js")
        run_on_a_maplibre_map(page, snippet)
        assert tiles and {r.status for r in tiles} == {200}
        assert _drawn(page) > 0.05
        drawn = [(r.url, Image.open(io.BytesIO(r.body())).size) for r in tiles]
        browser.close()
    return drawn


def test_maplibre_example_draws_the_heatmap(server):
    tiles = _maplibre_draws(server, "MapLibre GL JS:")
    assert all("tilesize=512" in url for url, _ in tiles)


def test_maplibre_example_draws_512_px_tiles_on_a_high_dpi_screen(server):
    after = "MapLibre GL JS, sharp on a high-DPI screen (`{ratio}` asks for the `@2x` tiles there):"
    hidpi = _maplibre_draws(server, after, pixel_ratio=2)
    assert all(re.search(r"/[0-9]+@2x\.png\?", url) and size == (512, 512) for url, size in hidpi)
    plain = _maplibre_draws(server, after)
    assert all(re.search(r"/[0-9]+\.png\?", url) and size == (256, 256) for url, size in plain)


def test_openlayers_example_reads_the_ogc_tileset_and_draws_the_heatmap(server):
    """OpenLayers' OGCMapTile takes the tile template, tile matrix set and limits from the
    tileset alone: each tile it asks for lies in its view and over the store's cells (tiles
    swapped in row and column would lie elsewhere), and the centre's tile is among them."""
    from playwright.sync_api import sync_playwright

    snippet = code_block(
        "OpenLayers (OGC API - Tiles: the tileset gives the tile template, tile matrix set and zooms):", "js"
    )
    west, south, east, north = httpx.get(f"{server}/tilejson.json?q=birdsong", timeout=60).json()["bounds"]
    with sync_playwright() as pw:
        browser, page, tiles = _page(pw, server)
        page.add_script_tag(content=(OPENLAYERS / "ol.js").read_text(encoding="utf-8"))
        view = page.evaluate(
            """(snippet) => new Promise((resolve) => {
            window.map = new ol.Map({target: 'map', controls: [],
                                     view: new ol.View({center: ol.proj.fromLonLat([12, 48]), zoom: 3})});
            new Function('map', 'ol', snippet)(map, ol);
            const source = map.getLayers().item(0).getSource();
            const extent = () => ol.proj.transformExtent(
                map.getView().calculateExtent(map.getSize()), 'EPSG:3857', 'EPSG:4326');
            // The source reads the tileset first: the map's first render has no tiles to draw.
            source.on('change', () => {
                if (source.getState() === 'ready') map.once('rendercomplete', () => resolve(extent()));
                if (source.getState() === 'error') resolve(String(source.getError()));
            });
            setTimeout(() => resolve('no tileset read and map drawn within 60 s'), 60000);
        })""",
            snippet.replace(ADDRESS, server),
        )
        assert isinstance(view, list), view  # the view's extent, or why there is none
        drawn = [r for r in tiles if re.search(r"/tiles/WebMercatorQuad/[0-9]+/[0-9]+/[0-9]+\.png\?", r.url)]
        assert drawn and {r.status for r in drawn} == {200}
        assert all("q=birdsong&hour=6" in r.url for r in drawn)
        asked = {tuple(int(v) for v in re.search(r"/([0-9]+)/([0-9]+)/([0-9]+)\.png", r.url).groups()) for r in drawn}
        for z, x, y in asked:
            box = mercantile.bounds(x, y, z)
            assert box.west < view[2] and box.east > view[0] and box.south < view[3] and box.north > view[1]
            assert box.west < east and box.east > west and box.south < north and box.north > south
        assert tuple(mercantile.tile(12, 48, 3)) in {(x, y, z) for z, x, y in asked}
        assert _drawn(page) > 0.05
        browser.close()


def test_geotiff_js_example_reads_a_maps_values_from_another_origin(server):
    """geotiff.js, on a page of another origin (CORS), reads the map's GeoTIFF in byte ranges:
    its size, box and every value are the `.npy` map's."""
    from playwright.sync_api import sync_playwright

    snippet = code_block("byte ranges, from any origin (CORS exposes `Content-Range`):", "js").replace(ADDRESS, server)
    url = re.search(r'const url = "([^"]+)"', snippet).group(1)
    with sync_playwright() as pw:
        browser, page, _ = _page(pw, server)
        asked = []
        page.on("request", lambda r: asked.append(r.headers.get("range")) if "/map?" in r.url else None)
        page.add_script_tag(content=(GEOTIFF / "geotiff.js").read_text(encoding="utf-8"))
        read = page.evaluate(
            """async (snippet) => {
            const run = new (Object.getPrototypeOf(async () => {}).constructor)(
                snippet + "; return {size: [image.getWidth(), image.getHeight()], box: image.getBoundingBox(),"
                + " values: Array.from(values)};");
            try { return await run(); } catch (error) { return String(error); }
        }""",
            snippet,
        )
        ranged = page.evaluate(
            "async (url) => { const r = await fetch(url, {headers: {Range: 'bytes=0-9'}});"
            " return [r.status, r.headers.get('Content-Range')]; }",
            url,
        )
        browser.close()
    assert isinstance(read, dict), read  # the values, or what went wrong
    length = len(httpx.get(url, timeout=60).content)
    assert ranged == [206, f"bytes 0-9/{length}"], "a page of another origin reads where a range lies"
    assert any(header and header.startswith("bytes=") for header in asked), "read in byte ranges"
    assert read["size"] == [440, 260] and read["box"] == pytest.approx([-12, 34, 32, 60])
    expected = decode_npy(httpx.get(url.replace("f=tif", "f=npy"), timeout=60).content)
    values = np.array([np.nan if v is None else v for v in read["values"]], dtype=np.float32).reshape(260, 440)
    assert np.isfinite(expected).mean() > 0.5
    assert np.array_equal(values, expected, equal_nan=True)

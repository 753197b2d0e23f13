"""The viewer's "PNG of this view" (and "GeoTIFF of this view", its values): a link to GET
/collections/{layer}/map with the tiles' parameters, the view's box in degrees, crs=EPSG:3857 and
the canvas's size, so the image is the layer as the map shows it. It follows the state and the
view, has no href while there is no layer, and keeps to what the route takes: a box across the
antimeridian (west > east), the whole world for a view wider than it, latitudes within Web
Mercator's, sides of at most 2048 pixels."""

from __future__ import annotations

import io
import math
import re

import httpx
import numpy as np
import pytest
import rasterio
from PIL import Image

from tests.server_support import decode_npy, live_server
from tests.test_viewer import (  # noqa: F401  (fixtures and helpers)
    BACKGROUND,
    browser,
    hide_layer,
    open_page,
    server,
    wait_until,
    world_store,
)

pytestmark = pytest.mark.slow  # a live server and a browser, as tests/test_viewer.py
HEATMAP_LOADED = "document.body.dataset.heatmap === 'loaded'"
LINK = "document.getElementById('map-image').getAttribute('href')"
VALUES_LINK = "document.getElementById('map-values').getAttribute('href')"
BOUNDS = "(b => [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()])(window.soundscape.map.getBounds())"
CANVAS = "(c => [c.clientWidth, c.clientHeight])(window.soundscape.map.getCanvas())"
# mapImageUrl of a made-up view: [west, south, east, north] as MapLibre's bounds, and a canvas size.
URL_OF = """([box, width, height]) =>
  mapImageUrl(new maplibregl.LngLatBounds([box[0], box[1]], [box[2], box[3]]), width, height)"""


def link_of(url: str) -> tuple[str, dict[str, str]]:
    parsed = httpx.URL(url)
    return parsed.path, dict(parsed.params)


def bbox_of(params: dict[str, str]) -> list[float]:
    return [float(v) for v in params["bbox"].split(",")]


def tile_params_but_layer(page) -> dict[str, str]:
    return {k: v for k, v in httpx.QueryParams(page.evaluate("tileParams().toString()")).items() if k != "layer"}


def test_png_of_this_view_is_the_layer_as_the_map_shows_it(browser, server):  # noqa: F811
    page = open_page(browser, server, "/#q=birdsong&hour=6&layer=heatmap&opacity=1&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        url = page.evaluate(LINK)
        assert url.startswith(server), "a URL under the page's own (a proxy's prefix kept)"
        path, params = link_of(url)
        assert path == "/collections/heatmap/map" and "layer" not in params, "the collection names the layer"
        assert tile_params_but_layer(page).items() <= params.items() and params["hour"] == "6"
        assert params["query"] == page.evaluate("window.soundscape.state.query")
        assert params["crs"] == "EPSG:3857" and "bbox-crs" not in params, "a box in degrees, drawn in Web Mercator"
        assert bbox_of(params) == pytest.approx(page.evaluate(BOUNDS), abs=1e-6)
        width, height = page.evaluate(CANVAS)
        assert (int(params["width"]), int(params["height"])) == (width, height) == (900, 700)
        assert params["tilesize"] == "256", "the map's tiles: 256 px at a device pixel ratio of 1"

        # What a user gets: the link downloads the route's PNG.
        with page.expect_download() as download:
            page.click("#map-image")
        assert download.value.suggested_filename == "soundscape-heatmap.png"
        png = Image.open(download.value.path())
        answer = httpx.get(url, timeout=60)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        assert png.format == "PNG" and png.size == (900, 700)
        image = np.asarray(png.convert("RGBA")).astype(int)
        assert (image[..., 3] > 0).mean() > 0.2, "the layer is drawn, not a transparent image"

        # "GeoTIFF of this view": the same box and pixels, as the layer's values.
        assert page.evaluate(VALUES_LINK) == f"{url}&f=tif"
        with page.expect_download() as download:
            page.click("#map-values")
        assert download.value.suggested_filename == "soundscape-heatmap.tif"
        with rasterio.open(download.value.path()) as tiff:
            assert tiff.crs.to_epsg() == 3857 and (tiff.width, tiff.height) == (900, 700)
            values = tiff.read(1)
        npy = decode_npy(httpx.get(f"{url}&f=npy", timeout=60).content)
        assert np.array_equal(values, npy, equal_nan=True)
        assert (np.isfinite(values) == (image[..., 3] > 0)).all(), "values where the PNG is drawn, NaN elsewhere"

        # The image lies as the map's pixels do: over the map's background alone (no basemap) the
        # layer drawn at opacity 1 looks as the PNG does, pixel by pixel but at the cells' edges
        # (MapLibre blends tiles, the route takes the nearest pixel). Measured: a median of 0 and
        # 1.2% of pixels apart; the same box drawn in CRS84 (not the map's projection) is 11 and 15%.
        hide_layer(page, "imagery")
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
        alpha = image[..., 3:] / 255
        flat = np.rint(image[..., :3] * alpha + np.array(BACKGROUND) * (1 - alpha))
        difference = np.abs(flat - shot)[:, 320:].sum(axis=2)  # right of the panel
        apart = (difference > 60).mean()
        assert np.median(difference) <= 3 and apart < 0.04, (np.median(difference), apart)

        # A map the server refuses is said in the status, not saved as its JSON under the PNG's name.
        downloads = []
        page.on("download", lambda download: downloads.append(download))
        refused = url.replace("width=900", "width=4096")
        assert httpx.get(refused, timeout=60).status_code == 422
        page.evaluate("href => document.getElementById('map-image').setAttribute('href', href)", refused)
        page.click("#map-image")
        wait_until(page, "document.getElementById('status').textContent.startsWith('PNG of this view: 422')")
        assert "width" in page.text_content("#status") and page.get_attribute("#status", "class") == "error"
        assert downloads == []
        assert page.outside_requests() == []
    finally:
        page.close()


def test_png_of_this_view_follows_the_state_and_the_view(browser, server):  # noqa: F811
    page = open_page(browser, server, "/#layer=heatmap&map=3.5/45/10")
    try:
        assert page.evaluate(LINK) is None, "no query: nothing to draw, as Copy XYZ URL is disabled"
        assert page.get_attribute("#map-image", "aria-disabled") == "true" and page.is_disabled("#copy")
        assert page.get_attribute("#map-values", "aria-disabled") == "true" and page.evaluate(VALUES_LINK) is None
        page.check("input[name=layer][value=uncertainty]")  # a layer that needs no query
        wait_until(page, LINK)
        path, params = link_of(page.evaluate(LINK))
        assert path == "/collections/uncertainty/map" and "query" not in params
        assert page.get_attribute("#map-image", "aria-disabled") == "false"
        assert httpx.get(page.evaluate(LINK), timeout=60).status_code == 200

        page.fill("#text", "birdsong")
        page.click("#search")
        page.check("input[name=layer][value=contrast]")
        page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
        page.uncheck("#hour-any")
        page.fill("#hour", "18")
        page.dispatch_event("#hour", "input")
        wait_until(page, f"({LINK} || '').includes('hour=18')")
        path, params = link_of(page.evaluate(LINK))
        assert path == "/collections/contrast/map" and params.items() >= tile_params_but_layer(page).items()
        assert params["hour"] == "18" and params["query"] == page.evaluate("window.soundscape.state.query")
        assert page.get_attribute("#map-image", "download") == "soundscape-contrast.png"
        assert page.get_attribute("#map-values", "download") == "soundscape-contrast.tif"
        assert page.evaluate(VALUES_LINK) == page.evaluate(LINK) + "&f=tif"

        before = bbox_of(params)  # the view moves: the box follows
        page.evaluate("window.soundscape.map.jumpTo({center: [20, 50], zoom: 4})")
        wait_until(page, f"!{LINK}.includes('bbox={params['bbox']}')")
        after = bbox_of(link_of(page.evaluate(LINK))[1])
        assert after != before and after == pytest.approx(page.evaluate(BOUNDS), abs=1e-6)

        page.set_viewport_size({"width": 1000, "height": 600})  # the canvas is resized: the size follows
        wait_until(page, f"{LINK}.includes('width=1000&height=600')")

        # A rotated or tilted map is not the north-up, flat image: no link until it is turned back.
        for turn in ("setBearing(30)", "setPitch(40)"):
            page.evaluate(f"window.soundscape.map.{turn}")
            wait_until(page, f"{LINK} === null")
            assert "rotated or tilted" in page.get_attribute("#map-image", "title")
            page.evaluate("window.soundscape.map.jumpTo({bearing: 0, pitch: 0})")
            wait_until(page, f"{LINK} !== null")
            assert "rotated" not in page.get_attribute("#map-image", "title")

        # A query the server refuses leaves none: no link on a query's layer, as no Copy XYZ URL.
        page.route("**/queries", lambda route: route.fulfill(status=500, json={"detail": "the server failed"}))
        page.fill("#text", "waves")
        page.click("#search")
        wait_until(page, f"{LINK} === null")
        assert page.is_disabled("#copy")
        assert page.get_attribute("#map-image", "aria-disabled") == "true"
    finally:
        page.close()


def test_on_a_high_dpi_screen_the_png_has_the_screens_pixels(browser, server):  # noqa: F811
    page = open_page(browser, server, "/#layer=uncertainty&map=3.5/45/10", pixel_ratio=2)
    try:
        wait_until(page, LINK)
        width, height = page.evaluate(CANVAS)
        params = link_of(page.evaluate(LINK))[1]
        assert (int(params["width"]), int(params["height"])) == (2 * width, 2 * height) == (1800, 1400)
        assert params["tilesize"] == "512", "the map's @2x tiles"
        answer = httpx.get(page.evaluate(LINK), timeout=60)
        assert answer.status_code == 200 and Image.open(io.BytesIO(answer.content)).size == (1800, 1400)
    finally:
        page.close()


@pytest.fixture(scope="module")
def world_server(bundle_path, world_store):  # noqa: F811
    with live_server(bundle_path, world_store) as url:
        yield url


def test_on_a_high_dpi_screen_the_png_is_drawn_from_the_maps_tiles(browser, world_server):  # noqa: F811
    """At a device pixel ratio of 2 the map draws the `@2x` tiles, 512 px: for the screen's pixels
    one zoom coarser than 256 px tiles, so at low zoom of a coarser level of cells. The link had no
    `tilesize`, and the route drew the 256 px tiles of the next zoom, another picture (93% of the
    pixels apart on the demo's world at zoom 1). It asks for tilesize=512 now: the PNG is the map's
    picture. At zoom 0 the map draws tiles of zoom 1, of level 5, where 256 px tiles are of level 6
    (a tile draws the cells of level z + 4: server/engine.py); a store of every longitude draws world
    copies, so zoom 0 is a view of any window no taller than the world's 512 px."""
    page = open_page(
        browser, world_server, "/#q=birdsong&layer=heatmap&opacity=1&map=0/0/10", height=500, pixel_ratio=2
    )
    try:
        wait_until(page, HEATMAP_LOADED, timeout=60_000)
        assert page.evaluate("window.soundscape.map.getZoom()") == 0
        url = page.evaluate(LINK)
        params = link_of(url)[1]
        assert params["tilesize"] == "512"
        drawn = [asked for asked in page.requests() if "/tiles/" in asked]
        assert drawn and all(re.search(r"/tiles/1/\d+/\d+@2x\.png", asked) for asked in drawn), drawn
        answer = httpx.get(url, timeout=60)
        assert answer.status_code == 200, answer.text
        image = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGBA")).astype(int)
        hide_layer(page, "imagery")
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
        # The world once (the link's box, the view's height) and where it lies among the map's copies.
        west, _, _, north = bbox_of(params)
        x, y = page.evaluate("(box) => (p => [p.x, p.y])(window.soundscape.map.project(box))", [west, north])
        left, top = round(2 * x), round(2 * y)
        height, width = image.shape[:2]
        assert west == -180 and width == 1024 and 0 <= left <= 1800 - width and abs(top) <= 1
        shot = shot[max(top, 0) : max(top, 0) + height, left : left + width]
        assert shot.shape[:2] == (height, width)
        alpha = image[..., 3:] / 255
        flat = np.rint(image[..., :3] * alpha + np.array(BACKGROUND) * (1 - alpha))
        layer = image[..., 3] > 0  # where the layer is drawn: Europe
        difference = np.abs(flat - shot).sum(axis=2)[layer]
        apart = (difference > 60).mean()
        assert layer.sum() > 5000 and np.median(difference) <= 3 and apart < 0.05, (np.median(difference), apart)
    finally:
        page.close()


def mercator_y(lat: float) -> float:
    return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def test_the_views_box_and_size_are_what_the_map_route_takes(browser, server):  # noqa: F811
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        url_of = lambda box, width=800, height=600: link_of(page.evaluate(URL_OF, [box, width, height]))[1]  # noqa: E731

        across = url_of([170, 30, 200, 60])  # the view's east is 160 W, on the next world copy
        assert bbox_of(across) == pytest.approx([170, 30, -160, 60]), "west > east: across the antimeridian"
        assert (across["width"], across["height"]) == ("800", "600")
        also = url_of([-200, 30, -170, 60])  # the same place, from the western copy
        assert bbox_of(also) == pytest.approx([160, 30, -170, 60])

        wide = url_of([-300, -40, 300, 40], 1200, 400)  # 600 degrees in view: one world of it
        assert bbox_of(wide) == pytest.approx([-180, -40, 180, 40])
        assert (wide["width"], wide["height"]) == ("720", "400")

        polar = url_of([0, -89, 40, 89], 400, 1000)  # beyond Web Mercator's latitudes: the map part
        assert bbox_of(polar) == pytest.approx([0, -85.0511, 40, 85.0511])
        share = (mercator_y(85.0511) - mercator_y(-85.0511)) / (mercator_y(89) - mercator_y(-89))
        assert polar["width"] == "400" and int(polar["height"]) == round(1000 * share)

        big = url_of([0, 30, 40, 60], 4000, 1000)  # over 2048 pixels: both sides scaled down
        assert (big["width"], big["height"]) == ("2048", "512")
        tall = url_of([0, 30, 40, 60], 1000, 3000)
        assert (tall["width"], tall["height"]) == ("683", "2048")

        for params in across, wide, polar, big:  # each is a map the route draws, at the size asked
            answer = httpx.get(f"{server}/collections/heatmap/map", params=params, timeout=60)
            assert answer.status_code == 200, answer.text
            assert Image.open(io.BytesIO(answer.content)).size == (int(params["width"]), int(params["height"]))
    finally:
        page.close()

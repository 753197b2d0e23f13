"""The viewer and the API docs in headless Chromium (Debian package) against live servers: the
page loads its vendored MapLibre and maps a text query; a shared URL restores the state and draws
the heatmap; the source (from GET /metadata) and the contrast layer are controls kept in the URL;
the legend is the TileJSON's scale; an unknown saved query and a missing basemap say
so; the panel collapses at phone width; /docs and /redoc render offline."""

import io
import json
import math
import os
import re
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image
from playwright.sync_api import Error as PlaywrightError

from server.engine import round_scale
from tests.server_support import live_server

# Two live servers and a browser: about a minute on the shared 2-core machine.
pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]
MAP_LOADED = "window.soundscape && window.soundscape.map && window.soundscape.map.loaded()"
BACKGROUND = (0x0B, 0x1A, 0x2B)  # #map's CSS background, where nothing is drawn
HEATMAP_LOADED = "document.body.dataset.heatmap === 'loaded'"


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    with live_server(bundle_path, store_path) as url:
        yield url


def store_copy(store_path, folder, edit) -> Path:
    """A store in `folder` of the same files (linked) but its manifest, which `edit` changes in place."""
    copy = folder / "store"
    copy.mkdir()
    for item in store_path.iterdir():
        if item.name != "manifest.json":
            os.symlink(item, copy / item.name)
    manifest = json.loads((store_path / "manifest.json").read_text(encoding="utf-8"))
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return copy


def lose_imagery(manifest: dict) -> None:
    manifest["imagery"] = {**manifest["imagery"], "path": "missing.tif"}
    manifest["imagery"].pop("absolute", None)  # where it was built from: it would be found there


@pytest.fixture(scope="module")
def bare_server(bundle_path, store_path, tmp_path_factory):
    """A server over a copy of the store whose imagery is gone: every /basemap tile is a 404."""
    bare = store_copy(store_path, tmp_path_factory.mktemp("bare-store"), lose_imagery)
    with live_server(bundle_path, bare) as url:
        yield url


def around_the_world(manifest: dict) -> None:
    manifest["bounds"] = [-180.0, -85.0511287798066, 180.0, 85.0511287798066]


@pytest.fixture(scope="module")
def world_store(store_path, tmp_path_factory) -> Path:
    """A copy of the store whose bounds (and so its footprint) span every longitude, as a store of
    the whole world has (the demo's): the cells are Europe's, the viewer reads TileJSON's bounds."""
    return store_copy(store_path, tmp_path_factory.mktemp("world-store"), around_the_world)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def wait_until(page, expression: str, arg=None, timeout: float = 30_000) -> None:
    """Return once the JS `expression` (or function of `arg`) is truthy in `page`. It polls with
    page.evaluate, which the page's Content-Security-Policy lets run: Playwright's
    wait_for_function evaluates its predicate with eval, which the viewer's policy refuses."""
    deadline = time.monotonic() + timeout / 1000
    while True:
        try:
            if page.evaluate(expression, arg):
                return
        except PlaywrightError as error:  # a page that is loading: no context to evaluate in yet
            if "context was destroyed" not in str(error) and "navigat" not in str(error):
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout / 1000:g} s: {expression}")
        time.sleep(0.1)


def open_page(
    browser,
    server: str,
    path: str = "/",
    width: int = 900,
    height: int = 700,
    ready: str = MAP_LOADED,
    ready_selector: str | None = None,
    pixel_ratio: float = 1,
):
    """A page at `path` once the JS `ready` holds (or `ready_selector` shows, on pages whose
    Content-Security-Policy forbids eval); page.outside_requests() lists the requests that left
    for another host (not those the page's own policy blocked: the browser never sends them),
    page.console_errors() the errors its console logged (a policy's refusals among them),
    page.requests() every URL it asked for. `pixel_ratio`: the screen's device pixels per CSS pixel."""
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=pixel_ratio)
    asked, sent, blocked, errors = [], [], [], []
    local = (server, "data:", "blob:")
    page.on("request", lambda req: asked.append(req.url))
    page.on("request", lambda req: None if req.url.startswith(local) else sent.append(req.url))
    page.on("requestfailed", lambda req: blocked.append(req.url) if req.failure == "csp" else None)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.outside_requests = lambda: [url for url in sent if url not in blocked]
    page.console_errors = lambda: list(errors)
    page.requests = lambda: list(asked)
    # Interception on before the page loads: a fetch the page made while a later page.route() was
    # turning it on went unanswered, unseen by the route (1 run in 10 of a test that held a request).
    page.route("**/interception-on-from-the-start", lambda route: route.continue_())
    page.goto(f"{server}{path}")
    if ready_selector:
        page.wait_for_selector(ready_selector, state="attached", timeout=60_000)
    else:
        wait_until(page, ready, timeout=60_000)
    return page


@pytest.fixture(scope="module")
def page(browser, server):
    page = open_page(browser, server)
    yield page
    page.close()


def page_errors(page) -> list[str]:
    """The console's errors but the browser's own line for each response the server refused (the
    refusals these tests ask for)."""
    return [e for e in page.console_errors() if not e.startswith("Failed to load resource")]


def map_pixels(page) -> np.ndarray:
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    return np.asarray(shot)[:, 300:, :].astype(int)  # right of the panel


def pixels_at(page, points: list[tuple[float, float]]) -> np.ndarray:
    """The screenshot's RGB at each (lon, lat)."""
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
    xy = page.evaluate("(pts) => pts.map((p) => window.soundscape.map.project(p))", [list(p) for p in points])
    rows, cols = (np.array([round(p[k]) for p in xy]) for k in ("y", "x"))
    assert (rows >= 0).all() and (rows < shot.shape[0]).all() and (cols >= 0).all() and (cols < shot.shape[1]).all()
    return shot[rows, cols]


def tile_box(url: str) -> tuple[float, float, float, float]:
    """The west, south, east, north of a /tiles/ or /basemap/ URL's z/x/y."""
    z, x, y = map(int, re.search(r"/(\d+)/(\d+)/(\d+)\.\w+", url).groups())
    lat = lambda row: math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * row / 2**z))))  # noqa: E731
    return x / 2**z * 360 - 180, lat(y + 1), (x + 1) / 2**z * 360 - 180, lat(y)


def hash_params(page) -> dict:
    return dict(httpx.QueryParams(page.evaluate("window.location.hash.slice(1)")))


def fmt(value: float) -> str:
    """A legend number as the viewer writes it (3 significant digits)."""
    return f"{float(f'{value:.3g}'):g}"


def hide_layer(page, layer: str) -> None:
    """Hide a raster of the viewer ("soundscape", "imagery": a map layer per box of the store's
    cells) and return once the map has drawn without it."""
    page.evaluate(
        """(layer) => new Promise((resolve, reject) => {
        const map = window.soundscape.map;
        map.once('idle', resolve);
        window.soundscape.rasters[layer].forEach((id) => map.setLayoutProperty(id, 'visibility', 'none'));
        setTimeout(() => reject(new Error('the map did not go idle')), 30000);
    })""",
        layer,
    )


def test_viewer_shows_a_heatmap_for_a_text_query(page, server):
    page.wait_for_load_state("networkidle")
    before = map_pixels(page)
    assert before.std() > 10, "the imagery basemap is drawn"
    page.fill("#text", "waves on the open ocean")
    page.click("#search")
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    assert "query " in page.inner_text("#status")
    after = map_pixels(page)
    changed = np.abs(after - before).sum(axis=2) > 40
    assert changed.mean() > 0.2, "the heatmap covers the map"
    saturation = after.max(axis=2) - after.min(axis=2)
    assert (saturation[changed] > 40).mean() > 0.5, "the heatmap is coloured, not grey"
    assert hash_params(page)["q"] == "waves on the open ocean"
    assert "rescale" not in page.evaluate("tileUrl()"), "the server picks the colour scale"
    assert page.outside_requests() == [], "the viewer works offline"


def test_best_places_in_view_are_the_searchs_best_in_the_views_bbox(browser, page, server):
    page.fill("#text", "birdsong at dawn")
    page.click("#search")
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    page.click("#best")
    page.wait_for_selector(".best-marker", timeout=30_000)
    markers = page.evaluate("window.soundscape.best.map((m) => [m.getLngLat().lng, m.getLngLat().lat])")
    box = page.evaluate("viewBox(window.soundscape.map.getBounds())")
    asked = httpx.QueryParams(page.evaluate("bestParams(window.soundscape.map).toString()"))
    assert asked["bbox"] == box and asked["rank_by"] == "contrast" and asked["k"] == "10"  # the default layer's
    truth = httpx.get(f"{server}/search", params=asked, timeout=30).json()
    assert 0 < len(markers) <= 10 and markers == [f["geometry"]["coordinates"] for f in truth["features"]]
    west, south, east, north = map(float, box.split(","))
    assert all(west <= lon <= east and south <= lat <= north for lon, lat in markers)
    assert page.locator(".best-marker").all_inner_texts() == [str(r + 1) for r in range(len(markers))]
    assert "where it stands out most" in page.inner_text("#status")
    assert hash_params(page)["best"] == box  # a saved link keeps the marked places
    shared = open_page(browser, server, "/" + page.evaluate("window.location.hash"), ready=MAP_LOADED)
    try:
        wait_until(shared, "(window.soundscape.best || []).length > 0", timeout=30_000)
        assert shared.evaluate("window.soundscape.best.map((m) => [m.getLngLat().lng, m.getLngLat().lat])") == markers
        assert hash_params(shared)["best"] == box
    finally:
        shared.close()
    page.click("#hour-any")  # other metadata, other places: the markers go
    wait_until(page, "window.soundscape.best.length === 0", timeout=30_000)
    assert "best" not in hash_params(page)
    page.click("#hour-any")  # back to any hour, as the page was


def test_controls_follow_the_state(page, server):
    page.fill("#text", "birdsong")  # its own query: under xdist's load scheduling no earlier test may have mapped one
    page.click("#search")
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    page.uncheck("#hour-any")
    page.fill("#hour", "18")
    page.dispatch_event("#hour", "input")
    page.check("input[name=layer][value=uncertainty]")
    url = page.evaluate("tileUrl()")
    assert "hour=18" in url and "layer=uncertainty" in url and url.startswith(server)
    tile = httpx.get(url.replace("{z}/{x}/{y}", "4/8/5"), timeout=30)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    wait_until(page, "document.getElementById('legend-img').src.includes('viridis')", timeout=30_000)
    assert {"hour": "18", "layer": "uncertainty"}.items() <= hash_params(page).items(), "the URL follows"
    page.check("input[name=layer][value=heatmap]")
    params = page.evaluate("tileParams().toString()")
    assert "hour=18" in params
    scale = httpx.get(f"{server}/tilejson.json?{params}", timeout=30).json()["scale"]
    ends = [fmt(scale["min"]), fmt(scale["max"])]  # the legend follows the hour
    wait_until(
        page,
        """([lo, hi]) => document.getElementById('legend-lo').textContent.endsWith(lo)
                              && document.getElementById('legend-hi').textContent.endsWith(hi)""",
        arg=ends,
        timeout=30_000,
    )
    page.mouse.click(650, 350)  # a click on the map draws the 24-hour profile
    page.wait_for_selector(".maplibregl-popup canvas", timeout=30_000)
    assert "over the day" in page.inner_text(".maplibregl-popup")


@pytest.mark.slow  # a browser of its own
@pytest.mark.parametrize("pixel_ratio", [1, 2])
def test_a_high_dpi_screen_draws_the_512_px_tiles(browser, server, pixel_ratio):
    """The viewer drew 256 px tiles and basemap tiles, its legend's ramp and a place's chart at
    one pixel a CSS pixel on every screen, blurred on a high-DPI one: there it now asks for the
    `@2x` tiles, 512 px, and a ramp and a chart of device pixels, while "Copy XYZ URL" still
    gives the URL every client reads."""
    page = open_page(
        browser,
        server,
        "/#q=birdsong&layer=heatmap&map=3.5/45/10",
        ready="document.body.dataset.heatmap === 'loaded'",
        pixel_ratio=pixel_ratio,
    )
    try:
        tiles = [url for url in page.requests() if "/tiles/" in url]
        assert tiles and all(("@2x.png?" in url) == (pixel_ratio == 2) for url in tiles), tiles
        # The basemap's tiles as MapLibre asks for them (the viewer's own probe before is plain).
        basemap = [url for url in page.requests() if "/basemap/" in url][1:]
        assert basemap and all(url.endswith("@2x.webp") == (pixel_ratio == 2) for url in basemap), basemap
        for url in tiles[0], basemap[0]:
            image = Image.open(io.BytesIO(httpx.get(url, timeout=30).content))
            assert image.size == (256 * pixel_ratio, 256 * pixel_ratio), url
        copied = page.evaluate("tileUrl()")
        assert "/tiles/{z}/{x}/{y}.png?" in copied and "ratio" not in copied
        wait_until(page, "document.getElementById('legend-img').complete && !document.getElementById('legend').hidden")
        legend = page.evaluate(LEGEND_RAMP)  # a device pixel of the ramp for each one it covers
        assert legend["natural"] == [220 * pixel_ratio, 12 * pixel_ratio], legend
        assert legend["shown"][0] * pixel_ratio <= legend["natural"][0] and legend["shown"][1] == 12, legend
        page.mouse.click(650, 350)  # the profile's chart: 240 x 110 CSS pixels, of device pixels
        page.wait_for_selector(".maplibregl-popup canvas", timeout=30_000)
        assert page.evaluate(PROFILE_CHART) == {
            "backing": [240 * pixel_ratio, 110 * pixel_ratio],
            "shown": [240, 110],
            "line_in_right_half": True,
        }
        assert page.evaluate(MARKED_HOUR) is None, "any hour: no hour is marked"
    finally:
        page.close()


# The legend's colour ramp: the image's own pixels and the CSS pixels it is shown at.
LEGEND_RAMP = """() => {
  const image = document.getElementById('legend-img'), box = image.getBoundingClientRect();
  return {natural: [image.naturalWidth, image.naturalHeight], shown: [Math.round(box.width), Math.round(box.height)]};
}"""

# The profile chart's canvas: its device pixels, its CSS size, and whether its line (#b5367a) is
# drawn in the right half of the device pixels (a chart drawn at ratio 1 fills only the left half).
PROFILE_CHART = """() => {
  const canvas = document.querySelector('.maplibregl-popup canvas'), box = canvas.getBoundingClientRect();
  const half = Math.floor(canvas.width / 2);
  const pixels = canvas.getContext('2d').getImageData(half, 0, canvas.width - half, canvas.height).data;
  const off = (i, value) => Math.abs(pixels[i] - value);
  let line = false;
  for (let i = 0; i < pixels.length; i += 4) line ||= off(i, 0xb5) + off(i + 1, 0x36) + off(i + 2, 0x7a) < 24;
  return {backing: [canvas.width, canvas.height], shown: [Math.round(box.width), Math.round(box.height)],
          line_in_right_half: line};
}"""

# The hour marked on the profile chart: whether its dot lies at 12 of the chart's 0..23 hours (its
# width less 18 px a side), and the dot's colour at its centre; null when no hour is marked.
MARKED_HOUR = """() => {
  const canvas = document.querySelector('.maplibregl-popup canvas');
  if (!canvas.dataset.mark) return null;
  const [x, y] = canvas.dataset.mark.split(',').map(Number), ratio = canvas.width / 240;
  const [r, g, b] = canvas.getContext('2d').getImageData(Math.round(x * ratio), Math.round(y * ratio), 1, 1).data;
  return {at_noon: Math.abs(x - (18 + (12 / 23) * 204)) < 0.01, dot: [r, g, b]};
}"""


def test_audio_upload_maps_a_recording(page):
    wave = 0.2 * np.sin(np.arange(16000 * 2) * 0.05).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format="FLAC")
    page.set_input_files("#audio", files=[{"name": "dawn.flac", "mimeType": "audio/flac", "buffer": buf.getvalue()}])
    wait_until(page, "document.getElementById('status').textContent.includes('recording')", timeout=30_000)
    query = page.evaluate("window.soundscape.state.query")
    assert query in page.evaluate("tileUrl()")
    assert hash_params(page)["query"] == query and "q" not in hash_params(page), "a recording is shared by its id"


def test_a_shared_url_restores_the_view_and_draws_the_heatmap(browser, server):
    shared = "/#q=waves+on+the+open+ocean&hour=6&month=5&layer=heatmap&opacity=0.9&map=3.5/45/10"
    page = open_page(browser, server, shared, ready="document.body.dataset.heatmap === 'loaded'")
    assert page.input_value("#text") == "waves on the open ocean"
    assert page.input_value("#hour") == "6" and not page.is_checked("#hour-any")
    assert page.input_value("#month") == "5" and not page.is_checked("#month-any")
    assert page.is_checked("input[name=layer][value=heatmap]") and page.input_value("#opacity") == "0.9"
    view = page.evaluate("(m => [m.getZoom(), m.getCenter().lng, m.getCenter().lat])(window.soundscape.map)")
    assert view == pytest.approx([3.5, 10, 45], abs=1e-6)
    assert page.evaluate("window.soundscape.map.getPaintProperty('soundscape', 'raster-opacity')") == 0.9
    params = hash_params(page)
    assert params["q"] == "waves on the open ocean" and params["map"] == "3.50/45.0000/10.0000"

    # The heatmap is drawn where the store has cells (Europe), nowhere else.
    inside = [(15, 42), (2, 48), (10, 45), (20, 55), (30, 35)]  # clear of the panel on the left
    outside = [(37, 40), (37.5, 30)]  # east of the store, clear of the panel
    drawn = pixels_at(page, inside + outside)
    hide_layer(page, "soundscape")
    bare = pixels_at(page, inside + outside)
    difference = np.abs(drawn - bare).sum(axis=1)
    assert (difference[: len(inside)] > 10).all(), "the heatmap colours every place with cells"
    assert (difference[len(inside) :] == 0).all(), "nothing is drawn outside the store"

    # The legend is the TileJSON of this very state (the colour range follows hour and month).
    tilejson = httpx.get(
        f"{server}/tilejson.json?q=waves+on+the+open+ocean&hour=6&month=5&layer=heatmap", timeout=30
    ).json()
    scale = tilejson["scale"]
    assert page.inner_text("#legend-lo") == ("≤ " if scale["clipped_low"] else "") + fmt(scale["min"])
    assert page.inner_text("#legend-hi") == ("≥ " if scale["clipped_high"] else "") + fmt(scale["max"])
    assert page.locator(".end.low").is_visible() == scale["clipped_low"]
    assert page.locator(".end.high").is_visible() == scale["clipped_high"]
    assert scale["clipped_low"] or scale["clipped_high"], "this state exercises a clipped end"
    page.click("#legend-about summary")
    assert page.inner_text("#legend-desc") == tilejson["description"]
    assert tilejson["attribution"] in page.inner_text(".maplibregl-ctrl-attrib")
    assert page.outside_requests() == []
    page.close()


def test_source_and_contrast_are_controls_kept_in_the_url(browser, server):
    names = [v["value"] for v in httpx.get(f"{server}/metadata", timeout=30).json()["source"]["values"]]
    chosen = names[-1]
    shared = f"/#q=birdsong&source={chosen}&layer=contrast&map=3.5/45/10"
    page = open_page(browser, server, shared, ready="document.body.dataset.heatmap === 'loaded'")
    assert page.eval_on_selector_all("#source option", "els => els.map((e) => e.value)") == ["", *names]
    assert page.input_value("#source") == chosen and page.is_checked("input[name=layer][value=contrast]")
    url = page.evaluate("tileUrl()")
    assert f"source={chosen}" in url and "layer=contrast" in url and "query=" in url
    scale = httpx.get(f"{server}/tilejson.json?{page.evaluate('tileParams().toString()')}", timeout=30).json()["scale"]
    assert "log-odds" in scale["units"]
    wait_until(
        page,
        "([lo, title]) => document.getElementById('legend-lo').textContent.endsWith(lo)"
        " && document.getElementById('legend-title').textContent === title",
        arg=[fmt(scale["min"]), "contrast (log-odds)"],
        timeout=30_000,
    )
    tiles = {chosen: httpx.get(url.replace("{z}/{x}/{y}", "3/4/2"), timeout=30)}
    page.select_option("#source", "")  # the unknown source: no source= in the tiles or the link
    assert "source" not in hash_params(page) and "source=" not in page.evaluate("tileUrl()")
    tiles[None] = httpx.get(page.evaluate("tileUrl()").replace("{z}/{x}/{y}", "3/4/2"), timeout=30)
    assert {t.status_code for t in tiles.values()} == {200}
    assert tiles[chosen].headers["etag"] != tiles[None].headers["etag"], "the source changes the tiles"
    page.select_option("#source", names[0])
    assert {"source": names[0], "layer": "contrast"}.items() <= hash_params(page).items()
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    page.mouse.click(650, 350)  # the clicked place's values under each source
    page.wait_for_selector(".maplibregl-popup .by-source", timeout=30_000)
    popup = page.inner_text(".maplibregl-popup")
    assert "contrast = " in popup and all(f"{name} " in popup for name in ["unknown", *names])
    assert page.outside_requests() == []
    page.close()


def test_one_moment_maps_each_place_at_its_own_clock(browser, server):
    """The server maps one moment (`datetime=`: each place at the hour and month its clocks show
    then), but the viewer could not ask for it: its hour slider is every place's own hour. Now a
    link's instant, at any offset, opens the map at that moment: its tiles, legend, best places,
    PNG, profile and link carry it in UTC, and the hour and month controls rest; "now" maps this
    minute, the field maps the moment typed, -1h and +1h step it, "play" holds the day's colour
    scale and steps it an hour at a time once each hour is drawn until stopped, and unticking it
    maps any hour again."""
    page = open_page(
        browser, server, "/#q=birdsong&datetime=2024-07-01T12:00:00%2B02:00&hour=6&map=3.5/45/10", ready=HEATMAP_LOADED
    )
    try:
        utc = "2024-07-01T10:00:00Z"
        assert hash_params(page)["datetime"] == utc and "hour" not in hash_params(page)
        assert "hour=6 (datetime= gives the moment)" in page.inner_text("#notice")
        asked = [httpx.URL(u) for u in page.requests() if "/tiles/" in u or "/tilejson.json" in u]
        assert {u.params.get("datetime") for u in asked if "query" in u.params} == {utc}
        # the field shows the moment in UTC, without its :00 seconds
        assert page.is_checked("#moment-on") and page.input_value("#moment") == "2024-07-01T10:00"
        assert page.is_disabled("#hour") and page.is_disabled("#hour-any") and page.is_disabled("#month-any")
        assert httpx.URL(page.get_attribute("#map-image", "href")).params["datetime"] == utc
        at_moment = map_pixels(page)

        page.focus("canvas.maplibregl-canvas")
        page.keyboard.press("Enter")  # the profile of the map's centre, 10 E 45 N: Italy, on summer time
        page.wait_for_selector(".maplibregl-popup .local-time", timeout=30_000)
        assert page.inner_text(".maplibregl-popup .local-time") == "here then: 2024-07-01 12:00 (UTC+02:00), local time"
        assert page.evaluate(MARKED_HOUR) == {"at_noon": True, "dot": [0x1D, 0x1D, 0x1D]}, "its hour on the chart"
        page.click("#best")
        wait_until(page, "window.soundscape.best && window.soundscape.best.length > 0")
        searched = [httpx.URL(u) for u in page.requests() if "/search?" in u]
        assert searched and searched[-1].params["datetime"] == utc

        page.click("#now")
        wait_until(page, "(utc) => new URLSearchParams(location.hash.slice(1)).get('datetime') !== utc", utc)
        now = datetime.fromisoformat(hash_params(page)["datetime"])
        assert abs(now.timestamp() - time.time()) < 120 and now.second == 0 and now.utcoffset() == timedelta(0)
        page.fill("#moment", "2024-01-15T06:30:05")
        wait_until(page, "new URLSearchParams(location.hash.slice(1)).get('datetime') === '2024-01-15T06:30:05Z'")
        for button, moment in [
            ("#moment-forward", "07:30:05"),
            ("#moment-back", "06:30:05"),
            ("#moment-back", "05:30:05"),
        ]:
            page.click(button)  # an hour later or earlier
            assert hash_params(page)["datetime"] == f"2024-01-15T{moment}Z" and page.input_value("#moment").endswith(
                moment
            )
        wait_until(page, HEATMAP_LOADED)
        page.click("#moment-play")  # the day played: an hour later each time the map has shown an hour
        wait_until(page, "new URLSearchParams(location.hash.slice(1)).get('datetime') === '2024-01-15T07:30:05Z'")
        page.click("#moment-play")  # stopped
        stopped = hash_params(page)["datetime"]
        page.wait_for_timeout(2500)  # two steps' time
        assert (
            hash_params(page)["datetime"] == stopped and page.get_attribute("#moment-play", "aria-pressed") == "false"
        )
        wait_until(page, HEATMAP_LOADED)
        tiles = {httpx.URL(u).params.get("datetime") for u in page.requests() if "/tiles/" in u}
        assert tiles >= {f"2024-01-15T0{hour}:30:05Z" for hour in (5, 6, 7)}, "each hour played was drawn"
        held = hash_params(page)["rescale"]  # played on one scale, the day's: the hours compare
        on_it = {httpx.URL(u).params.get("datetime") for u in page.requests() if "/tiles/" in u and "rescale=" in u}
        assert page.is_checked("#scale-hold") and on_it >= {f"2024-01-15T0{hour}:30:05Z" for hour in (6, 7)}
        assert {httpx.URL(u).params["rescale"] for u in page.requests() if "rescale=" in u} == {held}

        page.uncheck("#moment-on")
        wait_until(page, HEATMAP_LOADED)
        assert "datetime" not in hash_params(page) and "datetime=" not in page.evaluate("tileUrl()")
        assert page.is_checked("#hour-any") and page.is_enabled("#hour-any") and page.is_disabled("#moment")
        assert all(page.is_disabled(f"#moment-{name}") for name in ("back", "forward", "play")) and page.is_enabled(
            "#now"
        )
        assert np.abs(map_pixels(page) - at_moment).max() > 0, "any hour is another map than that moment's"
        assert page_errors(page) == []
    finally:
        page.close()


@pytest.mark.parametrize(
    ("link", "shown"),
    [
        # Without an offset, every place's own clock: the hour and month the server reads it as.
        ("datetime=2024-07-01T06:30", {"hour": "6", "month": "7"}),
        # A "+" typed into a link is a space once read: the offset's sign all the same.
        ("datetime=2024-07-01T12:00:00+02:00", {"datetime": "2024-07-01T10:00:00Z"}),
        ("datetime=2024-13-01T06:00:00Z", {}),
    ],
)
def test_a_moment_in_a_link_without_an_offset_or_out_of_range(browser, server, link, shown):
    page = open_page(browser, server, f"/#q=birdsong&{link}&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        held = hash_params(page)
        assert {k: held[k] for k in ("hour", "month", "datetime") if k in held} == shown
        assert page.is_checked("#moment-on") == ("datetime" in shown)
        if "hour" in shown:
            assert page.input_value("#hour") == "6" and page.input_value("#month") == "7"
        elif not shown:
            assert "datetime=2024-13-01T06:00:00Z (it takes a date and time as RFC 3339 writes it" in page.inner_text(
                "#notice"
            )
    finally:
        page.close()


def day_scale(server: str, params: str) -> tuple[float, float]:
    """The widest of the TileJSON scales of the state `params` and of each of its day's 24 hours."""
    own = dict(httpx.QueryParams(params))
    ends = [httpx.get(f"{server}/tilejson.json", params=own, timeout=30).json()["rescale"]]
    ends += [
        httpx.get(f"{server}/tilejson.json", params={**own, "hour": h}, timeout=30).json()["rescale"] for h in range(24)
    ]
    return min(e[0] for e in ends), max(e[1] for e in ends)


def scale_held(page) -> tuple[float, float] | None:
    held = hash_params(page).get("rescale")
    return None if held is None else tuple(map(float, held.split(",")))


def test_a_held_colour_scale_lets_the_hours_compare(browser, server):
    """Each hour's map had a colour scale of its own (the 2nd to 98th percentile of its values), so
    the map of an hour when a sound is rarely heard was as bright as the map of its best hour. The
    legend can hold its scale, or the day's (the widest of its 24 hours'), for the tiles, legend,
    PNG, XYZ URL and link, while the hour changes; another layer lets it go; "this view's" holds
    the 2nd to 98th percentile of the cells in view (GET /statistics), rounded as the server rounds."""
    page = open_page(browser, server, "/#q=birdsong&hour=22&layer=heatmap&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        own = httpx.get(f"{server}/tilejson.json?{page.evaluate('tileParams().toString()')}", timeout=30).json()
        expected = day_scale(server, page.evaluate("tileParams().toString()"))
        assert expected != tuple(own["rescale"]), "the hours' scales differ"
        before = map_pixels(page)
        page.click("#scale-day")
        wait_until(page, "new URLSearchParams(location.hash.slice(1)).has('rescale')")
        assert scale_held(page) == expected and page.is_checked("#scale-hold")
        wait_until(page, HEATMAP_LOADED)
        wait_until(
            page,
            "(hi) => document.getElementById('legend-hi').textContent.endsWith(hi)",
            arg=fmt(expected[1]),
            timeout=30_000,
        )
        assert np.abs(map_pixels(page) - before).max() > 20, "the same values in other colours"
        held = page.evaluate("state => state.rescale", page.evaluate("window.soundscape.state"))
        page.fill("#hour", "6")
        page.dispatch_event("#hour", "input")
        wait_until(page, "new URLSearchParams(location.hash.slice(1)).get('hour') === '6'")
        wait_until(page, HEATMAP_LOADED)
        assert scale_held(page) == expected, "the scale is held as the hour changes"
        tiles = [httpx.URL(u).params for u in page.requests() if "/tiles/" in u and "hour=6" in u]
        assert tiles and {t["rescale"] for t in tiles} == {held}
        assert f"rescale={held.replace(',', '%2C')}" in page.evaluate("tileUrl()")
        assert httpx.URL(page.get_attribute("#map-image", "href")).params["rescale"] == held

        shared = open_page(browser, server, "/#" + page.evaluate("location.hash.slice(1)"), ready=HEATMAP_LOADED)
        try:  # the link opens on the same scale
            assert shared.is_checked("#scale-hold") and shared.evaluate("tileParams().get('rescale')") == held
            assert shared.is_hidden("#notice")
        finally:
            shared.close()

        page.uncheck("#scale-hold")  # each hour on its own scale again
        wait_until(page, "!new URLSearchParams(location.hash.slice(1)).has('rescale')")
        assert "rescale" not in page.evaluate("tileUrl()")
        page.check("#scale-hold")  # holds the scale shown: hour 6's own
        wait_until(page, "new URLSearchParams(location.hash.slice(1)).has('rescale')")
        at_six = httpx.get(
            f"{server}/tilejson.json", params={"q": "birdsong", "hour": 6, "layer": "heatmap"}, timeout=30
        ).json()
        assert scale_held(page) == tuple(at_six["rescale"])
        page.check("input[name=layer][value=contrast]")  # another quantity: the scale is let go
        wait_until(page, "!new URLSearchParams(location.hash.slice(1)).has('rescale')")
        assert not page.is_checked("#scale-hold") and "rescale" not in page.evaluate("tileUrl()")
        wait_until(page, HEATMAP_LOADED)
        page.click("#scale-view")  # the 2nd to 98th percentile of the contrast over the cells in view
        wait_until(page, "new URLSearchParams(location.hash.slice(1)).has('rescale')")
        [asked] = [u for u in page.requests() if "/statistics?" in u]
        found = httpx.get(asked, timeout=30).json()["layers"]["contrast"]
        assert scale_held(page) == round_scale(found["percentile_2"], found["percentile_98"])
        assert httpx.URL(asked).params["bbox"] == page.evaluate("viewBox(window.soundscape.map.getBounds())")
        assert page_errors(page) == []
    finally:
        page.close()


def test_a_bad_colour_scale_in_a_link_is_left_out(browser, server):
    page = open_page(browser, server, "/#q=birdsong&rescale=0.5,0.1&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        assert "rescale=0.5,0.1 (it takes min,max" in page.inner_text("#notice")
        assert "rescale" not in hash_params(page) and not page.is_checked("#scale-hold")
    finally:
        page.close()


def test_an_unknown_source_or_a_bad_box_in_a_link_is_left_out(browser, server):
    page = open_page(browser, server, "/#layer=uncertainty&source=radio-aporee&best=10,20,10,30")
    page.wait_for_selector("#notice", state="visible", timeout=30_000)
    assert 'source "radio-aporee" is unknown to this server' in page.inner_text("#notice")
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    assert page.input_value("#source") == "" and "source" not in hash_params(page)
    assert "best" not in hash_params(page), "a box /search would refuse (west = east) is left out too"
    page.close()


def test_an_unknown_saved_query_says_so(browser, server):
    page = open_page(browser, server, "/#query=0123456789abcdef&hour=7")
    page.wait_for_selector("#status.error", timeout=30_000)
    assert "this saved query is unknown to this server" in page.inner_text("#status")
    assert page.input_value("#hour") == "7", "the rest of the state is restored"
    page.close()


def test_a_refused_tile_shows_the_servers_detail(browser, server):
    page = open_page(browser, server, "/#layer=uncertainty")
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    # Every tile request from now on asks the real server for a tile size it refuses.
    page.route("**/tiles/**", lambda route: route.continue_(url=f"{route.request.url}&tilesize=300"))
    page.uncheck("#hour-any")
    page.wait_for_selector("#status.error", timeout=30_000)
    tile = page.evaluate("tileUrl()").replace("{z}/{x}/{y}", "3/4/2") + "&tilesize=300"
    detail = httpx.get(tile, timeout=30).json()["detail"]
    assert page.inner_text("#status") == f"tiles failed: 422: {detail}; the layer is hidden"
    page.unroute("**/tiles/**")
    page.check("#hour-any")  # new tiles: the old failure is cleared
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    assert page.get_attribute("#status", "class") == "" and page.inner_text("#status") == "No query yet."
    page.close()


def test_the_viewer_works_without_a_basemap(browser, bare_server):
    page = open_page(browser, bare_server, "/#hour=6&map=3/45/10")
    page.wait_for_selector("#notice", state="visible", timeout=30_000)
    notice = page.inner_text("#notice")
    assert notice.startswith("basemap unavailable: 404") and "the heatmap still works" in notice
    page.fill("#text", "birdsong")  # the panel is wired
    page.click("#search")
    page.wait_for_selector("body[data-heatmap=loaded]", timeout=60_000)
    colours = pixels_at(page, [(0, 50), (15, 40), (25, 58), (40, 45), (0, 22)])
    distance = np.abs(colours - BACKGROUND).sum(axis=1)
    assert (distance[:3] > 30).all() and (distance[3:] <= 3).all(), "the heatmap alone, where the store has cells"
    assert page.outside_requests() == []
    page.close()


def test_the_basemap_is_asked_for_only_over_the_stores_cells(browser, server):
    """The basemap source had no bounds: zoomed out, the map asked for its tiles over the whole
    world in view (17 requests, 12 of them beyond the store's bounds); now for those that meet them."""
    page = open_page(
        browser, server, "/#layer=uncertainty&map=2/45/10", ready="document.body.dataset.heatmap === 'loaded'"
    )
    wait_until(page, "window.soundscape.map.getSource('imagery') && window.soundscape.map.areTilesLoaded()")
    west, south, east, north = httpx.get(f"{server}/tilejson.json?layer=uncertainty", timeout=30).json()["bounds"]
    boxes = [tile_box(url) for url in page.requests() if "/basemap/" in url]
    assert boxes and all(w < east and e > west and s < north and n > south for w, s, e, n in boxes)
    page.close()


def test_the_panel_collapses_at_phone_width(browser, server):
    page = open_page(browser, server, width=390, height=844)
    panel = page.locator("#panel").bounding_box()
    assert panel["width"] == 390 and panel["y"] > 844 * 0.45, "a sheet along the bottom, the map above it"
    page.click("#panel-toggle")
    assert page.locator("#panel-body").is_hidden() and page.get_attribute("#panel-toggle", "aria-expanded") == "false"
    assert page.locator("#panel").bounding_box()["height"] < 120
    assert page.locator("#status").is_visible(), "messages stay in sight"
    before = hash_params(page)["map"]
    page.mouse.move(200, 400)  # drag the map where the panel was
    page.mouse.down()
    page.mouse.move(120, 300, steps=8)
    page.mouse.up()
    wait_until(page, f"!window.location.hash.includes('map={before}')", timeout=10_000)
    page.click("#panel-toggle")
    assert page.locator("#panel-body").is_visible() and page.locator("#text").is_visible()
    page.close()


@pytest.mark.parametrize("path, operation", [("/docs", ".opblock"), ("/redoc", "[data-section-id^='operation/']")])
def test_api_docs_render_offline(browser, server, path, operation):
    """Both pages render from vendored assets, and with no console error: ReDoc's sidebar logo,
    fetched from its vendor's CDN, was refused by the page's Content-Security-Policy, an error in
    every visitor's console (the vendored ReDoc now draws an empty data: image there)."""
    page = open_page(browser, server, path, ready_selector=f"{operation} >> nth=10")
    page.wait_for_load_state("networkidle")
    text = page.inner_text("body")
    assert "Soundscape tiles" in text and "/tiles/{z}/{x}/{y}.png" in text and "/queries" in text
    assert page.outside_requests() == [], "the docs' assets are vendored"
    assert page.console_errors() == []
    page.close()

"""The viewer in headless Chromium (Debian package) against a live server: the page loads its
vendored MapLibre, a text query is submitted, and the screenshot shows a coloured heatmap."""
import io
import shutil

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

from tests.server_support import live_server

CHROMIUM = shutil.which("chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    with live_server(bundle_path, store_path) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 700})
        outside = []
        local = (server, "data:", "blob:")
        page.on("request", lambda req: None if req.url.startswith(local) else outside.append(req.url))
        page.goto(f"{server}/")
        page.wait_for_function("window.soundscape && window.soundscape.map && window.soundscape.map.loaded()",
                               timeout=60_000)
        page.outside_requests = outside
        yield page
        browser.close()


def map_pixels(page) -> np.ndarray:
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    return np.asarray(shot)[:, 300:, :].astype(int)  # right of the panel


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
    assert page.outside_requests == [], "the viewer works offline"


def test_controls_follow_the_state(page, server):
    page.uncheck("#hour-any")
    page.fill("#hour", "18")
    page.dispatch_event("#hour", "input")
    page.check("input[name=layer][value=uncertainty]")
    url = page.evaluate("tileUrl()")
    assert "hour=18" in url and "layer=uncertainty" in url and url.startswith(server)
    tile = httpx.get(url.replace("{z}/{x}/{y}", "4/8/5"), timeout=30)
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    assert "viridis" in page.get_attribute("#legend-img", "src")
    page.check("input[name=layer][value=heatmap]")
    page.mouse.click(650, 350)  # a click on the map draws the 24-hour profile
    page.wait_for_selector(".maplibregl-popup canvas", timeout=30_000)
    assert "over the day" in page.inner_text(".maplibregl-popup")


def test_audio_upload_maps_a_recording(page):
    wave = 0.2 * np.sin(np.arange(16000 * 2) * 0.05).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, wave, 16000, format="FLAC")
    page.set_input_files("#audio", files=[{"name": "dawn.flac", "mimeType": "audio/flac", "buffer": buf.getvalue()}])
    page.wait_for_function("document.getElementById('status').textContent.includes('recording')", timeout=30_000)
    assert page.evaluate("window.soundscape.state.query") in page.evaluate("tileUrl()")

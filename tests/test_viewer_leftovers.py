"""The viewer's leftovers, each as a person using it met it (each test says what was wrong): small
failures of what the map asks for and of what the panel says."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from tests.test_viewer import HEATMAP_LOADED, browser, hide_layer, open_page, page_errors, pixels_at, server, wait_until  # noqa: F401  (fixtures and helpers)

# A live server and a browser, as tests/test_viewer.py.
pytestmark = pytest.mark.slow


def test_the_layer_is_drawn_past_the_servers_last_level_from_its_tiles(browser, server):  # noqa: F811
    """The layer's source asked for tiles up to level 22: zoomed in past TileJSON's maxzoom, every
    tile in view was a level the store does not have, which the server computed afresh. Now the
    source stops at maxzoom and MapLibre scales its last level up."""
    maxzoom = httpx.get(f"{server}/tilejson.json?layer=uncertainty", timeout=30).json()["maxzoom"]
    page = open_page(browser, server, f"/#layer=uncertainty&map={maxzoom + 3}/45/10", ready=HEATMAP_LOADED)
    try:
        zooms = [int(re.search(r"/tiles/(\d+)/", url).group(1)) for url in page.requests() if "/tiles/" in url]
        assert zooms and [z for z in zooms if z > maxzoom] == [], f"levels asked for: {sorted(set(zooms))}"
        places = [(10, 45), (10.4, 45.2), (10.6, 44.8)]  # right of the panel, at level maxzoom + 3
        drawn = pixels_at(page, places)
        hide_layer(page, "soundscape")
        assert (np.abs(drawn - pixels_at(page, places)).sum(axis=1) > 10).all(), "the layer is drawn"
        assert page_errors(page) == []
    finally:
        page.close()


LEGEND_SHOWN = "!document.getElementById('legend').hidden"


@pytest.mark.parametrize("link", ["layer=uncertainty&map=3.5/45/10", "q=birdsong&layer=heatmap&map=3.5/45/10"])
def test_the_viewer_asks_for_each_tilejson_once_at_startup(browser, server, link):  # noqa: F811
    """The uncertainty layer's TileJSON was asked for twice on opening: once for the store's
    extent, once for the legend of the same parameters."""
    page = open_page(browser, server, f"/#{link}", ready=HEATMAP_LOADED)
    try:
        wait_until(page, LEGEND_SHOWN)
        page.wait_for_load_state("networkidle")
        asked = [url for url in page.requests() if "/tilejson.json" in url]
        assert len(asked) == len(set(asked)), asked
        assert len(asked) == (1 if "uncertainty" in link else 2), "the extent's, and a query's legend"
    finally:
        page.close()


def settle(page, view: dict) -> None:
    """Move the map to `view` (MapLibre's jumpTo options) and return once it has drawn it, its
    tiles loaded or failed."""
    page.evaluate(
        """(view) => new Promise((resolve, reject) => {
        const map = window.soundscape.map;
        map.once('idle', resolve);
        map.jumpTo(view);
        setTimeout(() => reject(new Error('the map did not go idle')), 30000);
    })""",
        view,
    )


def test_the_best_places_are_said_to_be_in_view_only_while_they_are(browser, server):  # noqa: F811
    """After a pan, the status still said "the 10 of N places in view where it is likeliest",
    of a view the map no longer showed. It now says they are those of the view they were marked
    in, and how to mark the new one; marking again says "in view" again."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=4/45/10", ready=HEATMAP_LOADED)
    try:
        page.click("#best")
        page.wait_for_selector(".best-marker", timeout=30_000)
        marked = page.inner_text("#status")
        assert re.fullmatch(r"query \w+: birdsong: the \d+ of \d+ places in view where it is likeliest", marked)
        settle(page, {"center": [14, 47]})
        moved = page.inner_text("#status")
        assert " places in view " not in moved and moved.startswith(marked.split(" in view")[0])
        assert "Best places in view" in moved, "the status says how to mark this view's places"
        page.click("#best")
        wait_until(page, "(text) => document.getElementById('status').textContent !== text", moved)
        assert page.inner_text("#status").endswith("places in view where it is likeliest")
        assert page_errors(page) == []
    finally:
        page.close()


LEGEND_NOTE = "document.getElementById('legend-note')"


def test_a_legend_image_that_fails_says_so(browser, server):  # noqa: F811
    """The legend's colour ramp is an image of its own: when it failed (a busy server, the network),
    the panel showed a broken image and nothing else. Now the legend area says so, in text a screen
    reader reads out, and the next legend that loads takes its place."""
    page = open_page(browser, server, "/#q=birdsong&layer=uncertainty&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        wait_until(page, LEGEND_SHOWN)
        assert page.evaluate(f"{LEGEND_NOTE}.hidden")
        page.route("**/colormaps/**", lambda route: route.fulfill(status=503, json={"detail": "the server is busy"}))
        page.check("input[name=layer][value=heatmap]")  # another colour map
        wait_until(page, f"!{LEGEND_NOTE}.hidden")
        note = page.locator("#legend-note")
        assert "colour scale could not be loaded" in note.inner_text()
        assert note.get_attribute("role") == "status" and page.locator("#legend-img").is_hidden()
        assert page.inner_text("#legend-lo") and page.inner_text("#legend-hi"), "its values still show"
        page.unroute("**/colormaps/**")
        page.check("input[name=layer][value=uncertainty]")
        wait_until(page, f"{LEGEND_NOTE}.hidden")
        assert page.locator("#legend-img").is_visible()
        assert page.evaluate("document.getElementById('legend-img').naturalWidth") > 0
    finally:
        page.close()


def notice(page) -> str:
    return page.evaluate(
        "document.getElementById('notice').hidden ? '' : document.getElementById('notice').textContent"
    )


def test_the_basemap_notice_lasts_as_long_as_the_basemap_fails(browser, server):  # noqa: F811
    """One basemap tile that failed (a busy server's 503) left "basemap unavailable" in the panel
    for good, though the tiles after it loaded; a failed first probe left the map without a basemap
    for good. Now the notice stays while basemap tiles fail and goes once they load again."""
    page = open_page(browser, server, "/#layer=uncertainty&map=3/45/10", ready=HEATMAP_LOADED)
    try:
        wait_until(page, "window.soundscape.map.getSource('imagery')")
        assert notice(page) == ""
        page.route("**/basemap/**", lambda route: route.fulfill(status=503, json={"detail": "the server is busy"}))
        settle(page, {"zoom": 4, "center": [10, 45]})  # tiles of a level not asked for yet
        wait_until(page, "document.getElementById('notice').textContent.includes('basemap unavailable')")
        assert notice(page) == "basemap unavailable: 503: the server is busy; the heatmap still works"
        settle(page, {"zoom": 4, "center": [20, 52]})  # still failing: still said
        page.wait_for_timeout(300)
        assert notice(page).startswith("basemap unavailable: 503")
        page.unroute("**/basemap/**")
        settle(page, {"zoom": 5, "center": [10, 45]})
        wait_until(page, "document.getElementById('notice').hidden")
        assert page_errors(page) == []
    finally:
        page.close()

    page = browser.new_page(viewport={"width": 900, "height": 700})
    try:  # the first basemap tile, asked for before the map draws any, fails for a while
        page.route("**/basemap/**", lambda route: route.fulfill(status=503, json={"detail": "the server is busy"}))
        page.goto(f"{server}/#layer=uncertainty&map=3/45/10")
        wait_until(page, HEATMAP_LOADED, timeout=60_000)
        wait_until(page, "document.getElementById('notice').textContent.includes('basemap unavailable: 503')")
        page.unroute("**/basemap/**")
        settle(page, {"zoom": 4, "center": [10, 45]})
        wait_until(page, "document.getElementById('notice').hidden")
        assert page.evaluate("Boolean(window.soundscape.map.getSource('imagery'))"), "the basemap is drawn after all"
    finally:
        page.close()


def test_the_status_of_the_best_places_goes_with_their_markers(browser, server):  # noqa: F811
    """Another hour or layer removes the marked places (they were ranked under the state before),
    but the status still said "the 10 of N places in view where it is likeliest" over a map with
    no marker. It now says what is mapped, as before they were marked."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=4/45/10", ready=HEATMAP_LOADED)
    try:
        mapped = page.inner_text("#status")
        for change in (lambda: page.uncheck("#hour-any"), lambda: page.check("input[name=layer][value=contrast]")):
            page.click("#best")
            page.wait_for_selector(".best-marker", timeout=30_000)
            assert "places in view" in page.inner_text("#status")
            change()
            wait_until(page, "window.soundscape.best.length === 0")
            assert page.inner_text("#status") == mapped
    finally:
        page.close()


# Each two markers that overlap: their ranks, and the rank of the one drawn on top where they do.
OVERLAPS = """() => {
  const boxes = window.soundscape.best.map((marker) => marker.getElement())
    .map((element) => [Number(element.textContent), element.getBoundingClientRect()]);
  const pairs = [];
  boxes.forEach(([a, p], i) => boxes.slice(i + 1).forEach(([b, q]) => {
    const [left, right] = [Math.max(p.left, q.left), Math.min(p.right, q.right)];
    const [top, bottom] = [Math.max(p.top, q.top), Math.min(p.bottom, q.bottom)];
    if (left >= right || top >= bottom) return;
    const shown = document.elementFromPoint((left + right) / 2, (top + bottom) / 2).closest('.best-marker');
    pairs.push([a, b, shown ? Number(shown.textContent) : null]);
  }));
  return pairs;
}"""


# For each marker under the open profile: whether the profile is drawn on top where they meet.
UNDER_THE_PROFILE = """() => {
  const popup = document.querySelector('.maplibregl-popup-content').getBoundingClientRect();
  return window.soundscape.best.map((marker) => marker.getElement().getBoundingClientRect())
    .filter((box) => box.left < popup.right && popup.left < box.right)
    .filter((box) => box.top < popup.bottom && popup.top < box.bottom)
    .map((box) => {
      const x = (Math.max(box.left, popup.left) + Math.min(box.right, popup.right)) / 2;
      const y = (Math.max(box.top, popup.top) + Math.min(box.bottom, popup.bottom)) / 2;
      return Boolean(document.elementFromPoint(x, y).closest('.maplibregl-popup'));
    });
}"""


def test_the_best_place_is_drawn_over_the_places_after_it(browser, server):  # noqa: F811
    """Markers close together overlap when the map is zoomed out, and each was drawn over the ones
    ranked before it: the best place, number 1, was the one hidden under the others."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=1/45/10", ready=HEATMAP_LOADED)
    try:
        page.click("#best")
        page.wait_for_selector(".best-marker", timeout=30_000)
        overlaps = page.evaluate(OVERLAPS)
        assert overlaps, "markers overlap at this zoom"
        assert [(a, b, shown) for a, b, shown in overlaps if shown != min(a, b)] == []
        # A place's profile opened over the markers is drawn over them.
        page.evaluate("window.soundscape.map.jumpTo({center: window.soundscape.best[0].getLngLat()})")
        page.locator(".maplibregl-canvas").focus()
        page.keyboard.press("Enter")
        page.wait_for_selector(".maplibregl-popup canvas", timeout=30_000)
        covered = page.evaluate(UNDER_THE_PROFILE)
        assert covered, "the profile is over some marker"
        assert all(covered), "the profile is drawn over the markers under it"
    finally:
        page.close()

"""The viewer shows what was last asked of it, or says plainly that it shows nothing: a query the
server refuses or cannot answer, or tiles and a legend that fail, leave no earlier state's map,
legend or link behind, and an answer that comes back after the state changed is dropped."""

from __future__ import annotations

import httpx
import pytest

from tests.test_viewer import HEATMAP_LOADED, browser, hash_params, open_page, page_errors, server, wait_until  # noqa: F401  (fixtures and helpers)
from tests.test_viewer_audit import wav

# What the map draws, and what the panel and the link say of it.
SHOWN = """() => {
  const map = window.soundscape.map, $ = (id) => document.getElementById(id);
  const layers = window.soundscape.rasters.soundscape || [];
  return {visible: layers.some((id) => map.getLayoutProperty(id, 'visibility') !== 'none'),
          legend: !$('legend').hidden, copy: !$('copy').disabled, best: !$('best').disabled,
          error: $('status').classList.contains('error')};
}"""


def refuse_with_a_server_error(page) -> None:
    page.route("**/queries", lambda route: route.fulfill(status=500, json={"detail": "the server failed"}))
    page.fill("#text", "waves")
    page.click("#search")


def lose_the_network(page) -> None:
    page.route("**/queries", lambda route: route.abort("internetdisconnected"))
    page.fill("#text", "waves")
    page.click("#search")


def send_a_text_the_model_refuses(page) -> None:
    page.fill("#text", "🐦")
    page.click("#search")


def upload_too_much(page) -> None:
    big = wav(1)[:44] + bytes(11 * 2**20)  # beyond the 10 MB limit
    page.set_input_files("#audio", files=[{"name": "big.wav", "mimeType": "audio/wav", "buffer": big}])


@pytest.mark.slow  # a live server and a browser
def test_a_failed_query_leaves_no_earlier_map_behind(browser, server):  # noqa: F811
    """A text refused (422), a recording over the limit (413), a server error and a lost network
    each left the previous query's heatmap, legend and link in place under the error: a person
    could read "birdsong"'s map as the answer to the new question. Now the map and the link hold no
    query, and mapping "birdsong" again draws it again."""
    page = open_page(browser, server, "/#layer=heatmap&map=3.5/45/10")
    try:
        for fail, status in [
            (send_a_text_the_model_refuses, 'could not register "🐦": 422: '),
            (upload_too_much, "could not register big.wav: 413: "),
            (refuse_with_a_server_error, 'could not register "waves": 500: the server failed'),
            (lose_the_network, 'could not register "waves": '),
        ]:
            page.fill("#text", "birdsong")
            page.click("#search")
            wait_until(page, HEATMAP_LOADED)
            assert page.evaluate(SHOWN) == {"visible": True, "legend": True, "copy": True, "best": True, "error": False}
            assert hash_params(page)["q"] == "birdsong"
            fail(page)
            wait_until(page, "(s) => document.getElementById('status').textContent.startsWith(s)", status)
            shown = page.evaluate(SHOWN)
            assert shown == {"visible": False, "legend": False, "copy": False, "best": False, "error": True}, fail
            assert not {"q", "query"} & hash_params(page).keys(), "the link holds no query either"
            assert page.input_value("#audio") == "", "no file is shown as chosen (and the same one may be again)"
            page.unroute("**/queries")
        assert page_errors(page) == []
    finally:
        page.close()


@pytest.mark.slow
def test_tiles_or_a_legend_that_fail_leave_no_earlier_state_behind(browser, server):  # noqa: F811
    """Tiles of the new hour that failed (500) left the previous hour's tiles drawn under "tiles
    failed", and a TileJSON that failed left the previous hour's legend: now the layer, or the
    legend, is hidden until the state changes again, and the map draws the next state's tiles
    (a layer hidden while its tiles failed broke MapLibre's next setTiles). The failed legend's
    error stayed in the status line over the next state's map, which had none."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        page.route("**/tiles/**", lambda route: route.fulfill(status=500, json={"detail": "the server failed"}))
        page.uncheck("#hour-any")
        wait_until(page, "document.getElementById('status').textContent.startsWith('tiles failed')")
        shown = page.evaluate(SHOWN)
        assert not shown["visible"] and not shown["legend"] and shown["error"]
        assert shown["copy"] and shown["best"], "the query stands: other tiles may map it"
        assert page.inner_text("#status") == "tiles failed: 500: the server failed; the layer is hidden"
        page.unroute("**/tiles/**")
        page.check("#hour-any")  # new tiles, new chance
        wait_until(page, HEATMAP_LOADED)
        wait_until(page, "!document.getElementById('legend').hidden")
        assert page.evaluate(SHOWN)["visible"] and not page.evaluate(SHOWN)["error"]
        page.route("**/tiles/**", lambda route: route.fulfill(status=500, json={"detail": "the server failed"}))
        page.uncheck("#hour-any")
        wait_until(page, "document.getElementById('status').textContent.startsWith('tiles failed')")
        page.unroute("**/tiles/**")
        page.check("#hour-any")  # at once, while other tiles of the failed hour are failing
        wait_until(page, HEATMAP_LOADED)
        assert page_errors(page) == [], "MapLibre's own errors: the map was left half drawn"

        page.route("**/tilejson.json?**", lambda route: route.fulfill(status=500, json={"detail": "no scale"}))
        page.uncheck("#hour-any")
        wait_until(page, "document.getElementById('status').textContent.startsWith('cannot map this')")
        assert page.inner_text("#status") == "cannot map this: 500: no scale"
        assert not page.evaluate(SHOWN)["legend"], "no legend of the hour before"
        page.unroute("**/tilejson.json?**")
        page.check("#hour-any")  # a state that maps: the error goes with the state it was of
        wait_until(page, "!document.getElementById('legend').hidden")
        assert page.inner_text("#status").endswith(": birdsong") and not page.evaluate(SHOWN)["error"]
        assert page_errors(page) == []
    finally:
        page.close()


@pytest.mark.slow
def test_a_legend_that_comes_after_its_tiles_failed_stays_hidden(browser, server):  # noqa: F811
    """The legend of a state whose tiles failed stays hidden with its layer, even when its TileJSON
    (a colour scale to sample) answers after the tiles failed: it was shown again over no layer
    (seen as a flaky test on a loaded machine)."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        page.route("**/tiles/**", lambda route: route.fulfill(status=500, json={"detail": "the server failed"}))
        held = hold(page, "**/tilejson.json?**")
        page.uncheck("#hour-any")
        wait_until(page, "document.getElementById('status').textContent.startsWith('tiles failed')")
        answer_late(page, held, lambda: None)
        shown = page.evaluate(SHOWN)
        assert not shown["visible"] and not shown["legend"] and shown["error"], shown
    finally:
        page.close()


def hold(page, pattern: str) -> list:
    """Hold the first request of the page that matches `pattern` (let the others through): the list
    gets its route, whose continue_() lets it go on."""
    held = []
    page.route(pattern, lambda route: route.continue_() if held else held.append(route))
    return held


def answer_late(page, held: list, change) -> None:
    """Once the held request is sent, `change` the state, then let the request go on and return once
    the page has had its answer."""
    for _ in range(300):  # 15 s
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the request was never sent"
    change()
    with page.expect_response(held[0].request.url):
        held[0].continue_()
    page.wait_for_timeout(300)  # the page reads the answer


@pytest.mark.slow
def test_an_answer_to_an_earlier_state_is_dropped(browser, server):  # noqa: F811
    """Answers that came back after the state changed were shown as the new state's: a recording's
    registration answering after a text's replaced the text's map, and a place's profile or the
    best places asked under one hour were drawn over the next. A profile open when the state
    changed stayed open with the old values."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        page.mouse.click(650, 350)
        page.wait_for_selector(".maplibregl-popup", timeout=30_000)
        page.uncheck("#hour-any")
        page.wait_for_selector(".maplibregl-popup", state="detached", timeout=10_000)

        held = hold(page, "**/point/**")
        page.mouse.click(650, 350)
        answer_late(page, held, lambda: page.check("#hour-any"))
        assert page.locator(".maplibregl-popup").count() == 0

        held = hold(page, "**/search?**")
        page.click("#best")
        answer_late(page, held, lambda: page.uncheck("#hour-any"))
        assert page.locator(".best-marker").count() == 0 and "best" not in hash_params(page)

        held = hold(page, "**/queries")
        page.set_input_files("#audio", files=[{"name": "dawn.wav", "mimeType": "audio/wav", "buffer": wav(2)}])

        def map_waves():
            page.fill("#text", "waves")
            page.click("#search")
            wait_until(page, "document.getElementById('status').textContent.endsWith(': waves')")

        answer_late(page, held, map_waves)
        assert page.evaluate("window.soundscape.state.q") == "waves" and hash_params(page)["q"] == "waves"
        assert page.inner_text("#status").endswith(": waves") and page.input_value("#text") == "waves"
        assert page.input_value("#audio") == "", "the recording is not shown as the question"
        assert page_errors(page) == []
    finally:
        page.close()


@pytest.mark.slow
def test_the_hour_slider_asks_only_for_the_hour_it_rests_on(browser, server):  # noqa: F811
    """Dragging the hour slider over twelve hours asked for the tiles and the TileJSON of each hour
    it passed over, hours no one looked at (108 requests here, against 31 for the hour it rests
    on): now it asks for those of the hour it rests on."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&hour=6&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        before = len(page.requests())
        page.evaluate(
            """() => new Promise((resolve) => {
            const slider = document.getElementById('hour');
            let steps = 12;
            const step = () => {  // a step every 30 ms, as a drag at 30 frames a second
              slider.stepUp();
              slider.dispatchEvent(new Event('input'));
              if (--steps) setTimeout(step, 30); else resolve();
            };
            step();
        })"""
        )
        wait_until(page, "new URLSearchParams(location.hash.slice(1)).get('hour') === '18'")
        wait_until(page, HEATMAP_LOADED)
        asked = [httpx.URL(url) for url in page.requests()[before:] if "/tiles/" in url or "/tilejson.json" in url]
        assert {url.params["hour"] for url in asked} == {"18"}
        assert sum(url.path.endswith("/tilejson.json") for url in asked) == 1
        assert page.inner_text("#hour-out") == "18:00"
    finally:
        page.close()


@pytest.mark.slow
def test_a_layer_hidden_for_want_of_a_query_comes_back_as_it_was(browser, server):  # noqa: F811
    """With no query, the heatmap layer has nothing to map and hides the uncertainty layer; back on
    uncertainty, the layer stayed hidden (its tiles were those drawn last, so the viewer left the
    map alone). It shows again now, from the tiles it holds: no tile is asked for again."""
    page = open_page(browser, server, "/#layer=uncertainty&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        before = len(page.requests())
        page.check("input[name=layer][value=heatmap]")
        assert not page.evaluate(SHOWN)["visible"]
        page.check("input[name=layer][value=uncertainty]")
        wait_until(page, HEATMAP_LOADED)
        wait_until(page, "!document.getElementById('legend').hidden")
        assert page.evaluate(SHOWN)["visible"]
        assert [url for url in page.requests()[before:] if "/tiles/" in url] == []
    finally:
        page.close()


def refuse(status: int, detail: str):
    """A route handler answering every request `status` with `detail`."""
    return lambda route: route.fulfill(status=status, json={"detail": detail})


def test_tiles_refused_for_a_while_come_back_when_the_map_moves(browser, server):  # noqa: F811
    """A busy server (503) or a rate limit (429) refuses a tile for a while: the layer goes (the
    state before would show through) and the next pan or zoom draws the same state again, where
    before it stayed hidden until the query, hour or layer changed. A refusal that lasts (500)
    waits for a new state, as before."""
    page = open_page(browser, server, "/#q=birdsong&layer=heatmap&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        for status, detail in ((503, "the server is busy"), (429, "too many requests")):
            page.route("**/tiles/**", refuse(status, detail))
            page.uncheck("#hour-any")
            wait_until(page, "document.getElementById('status').textContent.startsWith('tiles failed')")
            assert (
                page.inner_text("#status")
                == f"tiles failed: {status}: {detail}; the layer is hidden until the map moves"
            )
            assert not page.evaluate(SHOWN)["visible"]
            page.unroute("**/tiles/**")
            page.evaluate("window.soundscape.map.panBy([40, 0], {duration: 0})")
            wait_until(page, HEATMAP_LOADED)
            shown = page.evaluate(SHOWN)
            assert shown["visible"] and shown["legend"] and not shown["error"]
            assert "hour=" in page.evaluate("window.soundscape.map.getSource('soundscape').tiles[0]")
            page.check("#hour-any")
            wait_until(page, HEATMAP_LOADED)
        page.route("**/tiles/**", lambda route: route.fulfill(status=500, json={"detail": "the server failed"}))
        page.uncheck("#hour-any")
        wait_until(page, "document.getElementById('status').textContent.startsWith('tiles failed')")
        page.unroute("**/tiles/**")
        page.evaluate("window.soundscape.map.panBy([40, 0], {duration: 0})")
        page.wait_for_timeout(500)
        assert not page.evaluate(SHOWN)["visible"] and page.inner_text("#status").endswith("the layer is hidden")
        assert page_errors(page) == []
    finally:
        page.close()


def test_a_saved_query_the_server_could_not_look_up_for_now_stays_in_the_link(browser, server):  # noqa: F811
    """A shared `query=<id>` whose lookup failed for a reason that passes (503, the network) was
    dropped from the link, so a reload (or the bookmark saved next) had lost the sound. Now the
    link keeps it, its tiles are asked for (the query is still registered), and a reload maps it
    with its text; an id the server does not know (404) still goes, as before."""
    query = httpx.post(f"{server}/queries", json={"text": "birdsong"}).json()["id"]
    page = browser.new_page(viewport={"width": 900, "height": 700})
    try:
        page.route(f"**/queries/{query}", refuse(503, "the server is busy"))
        page.goto(f"{server}/#query={query}&layer=heatmap&map=3/45/10")
        wait_until(page, HEATMAP_LOADED, timeout=60_000)
        assert page.inner_text("#status") == (
            f"could not load saved query {query}: 503: the server is busy; the link keeps it (reload to try again)"
        )
        assert hash_params(page)["query"] == query
        assert page.evaluate(SHOWN)["visible"] and page.evaluate(SHOWN)["legend"]
        page.unroute(f"**/queries/{query}")
        page.reload()
        wait_until(page, HEATMAP_LOADED, timeout=60_000)
        assert page.inner_text("#status").endswith("birdsong") and not page.evaluate(SHOWN)["error"]
    finally:
        page.close()

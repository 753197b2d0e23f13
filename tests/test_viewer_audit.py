"""The viewer as a person meets it in the first minutes (tests/test_viewer.py has the map itself):
a hand-edited or hostile saved link opens the default map and says which of its parameters it
left out; a link pasted into the address bar of an open viewer shows its state; texts from the
user, a link or the server (a query, a file name, the store's credit) show as text, and long ones
do not flood the panel; refusals show the server's sentence; the page has a Content-Security-Policy
of its own origin, under which it runs with no console error; every control has a name of its own."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import soundfile

from tests.server_support import live_server, make_client
from tests.test_viewer import (  # noqa: F401  (fixtures and helpers)
    HEATMAP_LOADED,
    browser,
    hash_params,
    open_page,
    page_errors,
    server,
    store_copy,
    wait_until,
)

HOSTILE = "<img src=x onerror=window.injected=1>"


class Controls(HTMLParser):
    """The form controls of a page, each with its accessible name: its aria-label, else the text of
    the label around it, else (a button) its own text."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict] = []
        self.labels: list[dict] = []  # the labels open around the parser's position
        self.button: dict | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "label":
            self.labels.append({"text": [], "controls": []})
        elif tag in ("input", "select", "button", "textarea"):
            control = {"id": attributes.get("id") or attributes.get("value"), "aria": attributes.get("aria-label")}
            self.controls.append(control)
            if self.labels:
                self.labels[-1]["controls"].append(control)
            if tag == "button":
                self.button = {**control, "text": []}
                control["text"] = self.button["text"]

    def handle_endtag(self, tag):
        if tag == "label":
            label = self.labels.pop()
            for control in label["controls"]:
                control["label"] = " ".join("".join(label["text"]).split())
        elif tag == "button":
            self.button = None

    def handle_data(self, data):
        for label in self.labels:
            label["text"].append(data)
        if self.button:
            self.button["text"].append(data)

    def names(self) -> dict[str, str]:
        return {
            c["id"]: c["aria"] or c.get("label") or " ".join("".join(c.get("text", [])).split()) for c in self.controls
        }


def policy(header: str) -> dict[str, str]:
    pairs = (directive.strip().partition(" ") for directive in header.split(";") if directive.strip())
    return {name: value for name, _, value in pairs}


def test_the_viewer_page_may_run_and_load_only_its_own_origins_files(bundle_path, store_path):
    """The viewer had no Content-Security-Policy (the docs pages had one): a string that reached its
    DOM as HTML could have run script, and nothing stopped a request to another host."""
    with make_client(bundle_path, store_path) as client:
        page = client.get("/")
    directives = policy(page.headers["content-security-policy"])
    assert directives["default-src"] == "'self'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["object-src"] == "'none'"
    assert "unsafe" not in page.headers["content-security-policy"]


def test_every_control_of_the_viewer_has_a_name_of_its_own(bundle_path, store_path):
    """A screen reader read both the hour's and the month's "any" checkbox as "any"."""
    with make_client(bundle_path, store_path) as client:
        controls = Controls()
        controls.feed(client.get("/").text)
    names = controls.names()
    assert len(names) == len(controls.controls) >= 10, "every control has an id (radios: a value)"
    assert all(names.values()), f"controls without a name: {[k for k, v in names.items() if not v]}"
    assert len(set(names.values())) == len(names), f"names shared by two controls: {names}"
    assert names["hour-any"] == "any hour" and names["month-any"] == "any month"


@pytest.mark.slow  # a live server and a browser (the module's first browser test starts both)
def test_a_hostile_link_opens_the_default_map_and_says_what_it_left_out(browser, server):  # noqa: F811
    """hour=99, month=0, layer=<script>, map=abc and opacity=2 were dropped without a word: the page
    showed defaults and the user could not tell why the link did not show what it promised. So
    was Months=5, a slip of month (a key far from every other, `_`, stays ignored)."""
    script = "<script>injected=1</script>"  # 27 characters: the notice quotes at most 30
    link = f"/#q={quote(HOSTILE)}&hour=99&month=0&layer={quote(script)}&map=abc&opacity=2&best=1,2&Months=5&_=1"
    page = open_page(browser, server, link, ready=HEATMAP_LOADED)
    try:
        notice = page.inner_text("#notice")
        assert notice.startswith("left out of the link: ")
        for refused in [
            "hour=99 (it takes a whole hour 0 to 23)",
            "month=0 (it takes a month 1 to 12)",
            f"layer={script} (it takes heatmap, contrast, uncertainty)",
            "map=abc (it takes zoom/lat/lon)",
            "opacity=2 (it takes a number 0 to 1)",
            "best=1,2 (it takes west,south,east,north)",
            "Months=5 (did you mean month?)",  # a slip of a key, said as the server says it
        ]:
            assert refused in notice
        assert "_=1" not in notice
        assert page.input_value("#text") == HOSTILE and HOSTILE in page.inner_text("#status"), "the query as text"
        assert page.evaluate("window.injected") is None and page.locator("#panel img:not(#legend-img)").count() == 0
        shown = hash_params(page)
        assert shown["layer"] == "contrast" and shown["opacity"] == "0.75", "the server's default layer"
        assert not {"hour", "month", "best"} & shown.keys() and page.is_checked("#hour-any")
        assert page.console_errors() == [], "no script error, and no request the page's policy refused"
        assert page.outside_requests() == []
    finally:
        page.close()


@pytest.mark.slow
def test_a_link_pasted_into_an_open_viewer_shows_its_state(browser, server):  # noqa: F811
    """A link pasted into the address bar of a tab already on the viewer changes only the hash; the
    browser loads nothing, and the viewer went on showing the old map under the new link."""
    page = open_page(browser, server, "/#layer=uncertainty")
    try:
        link = "q=birdsong&hour=7&month=3&layer=heatmap&opacity=0.5&map=3.5/45/10"
        # A mark the reload clears: the hash change is itself a navigation, and the old page's
        # uncertainty map counted as loaded until the reload replaced it.
        page.evaluate("(link) => { window.beforeTheLink = true; window.location.hash = link; }", link)
        wait_until(page, f"!window.beforeTheLink && {HEATMAP_LOADED}", timeout=60_000)
        assert page.input_value("#text") == "birdsong"
        assert page.input_value("#hour") == "7" and page.input_value("#month") == "3"
        assert page.is_checked("input[name=layer][value=heatmap]") and page.input_value("#opacity") == "0.5"
        view = page.evaluate("(m => [m.getZoom(), m.getCenter().lng, m.getCenter().lat])(window.soundscape.map)")
        assert view == pytest.approx([3.5, 10, 45], abs=1e-6)
        assert {"q": "birdsong", "hour": "7", "month": "3", "layer": "heatmap"}.items() <= hash_params(page).items()
        assert page.console_errors() == []
    finally:
        page.close()


def wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.2 * np.sin(np.arange(int(16000 * seconds)) * 0.05), 16000, format="WAV")
    return buffer.getvalue()


def refusal(url: str, **request) -> str:
    """The server's own sentence for a POST /queries, as the viewer quotes it."""
    response = httpx.post(f"{url}/queries", timeout=30, **request)
    assert response.status_code >= 400
    return f"{response.status_code}: {response.json()['detail']}"


def wait_status(page, starts: str) -> str:
    wait_until(page, "(s) => document.getElementById('status').textContent.startsWith(s)", arg=starts)
    return page.inner_text("#status")


@pytest.mark.slow
def test_refused_texts_and_files_show_the_servers_sentence_and_the_name_as_text(browser, server):  # noqa: F811
    """The status quoted a refused text whole: a 600-character link filled the panel with it."""
    long = "a" * 600
    page = open_page(browser, server, f"/#q={long}")
    try:
        status = wait_status(page, "could not register")
        detail = refusal(server, json={"text": long})
        assert status == f'could not register "{"a" * 59}…": {detail}' and len(status) < 200
        assert "q" not in hash_params(page), "the link's text is not kept"

        page.fill("#text", "")
        page.press("#text", "Enter")
        assert wait_status(page, "type a sound") == "type a sound first, e.g. birdsong"
        page.fill("#text", "🐦")  # no word the text model knows
        page.click("#search")
        assert wait_status(page, 'could not register "🐦"').endswith(refusal(server, json={"text": "🐦"}))

        name = f"{HOSTILE}.txt"  # a file that is not audio, with markup in its name
        page.set_input_files("#audio", files=[{"name": name, "mimeType": "text/plain", "buffer": b"hello"}])
        detail = refusal(server, files={"file": (name, b"hello", "text/plain")})
        assert wait_status(page, f"could not register {name}") == f"could not register {name}: {detail}"
        big = wav(1)[:44] + bytes(11 * 2**20)  # beyond the 10 MB limit
        page.set_input_files("#audio", files=[{"name": "big.wav", "mimeType": "audio/wav", "buffer": big}])
        status = wait_status(page, "could not register big.wav: 413: ")
        assert "the limit is" in status and "undefined" not in status
        page.set_input_files("#audio", files=[{"name": "dawn.wav", "mimeType": "audio/wav", "buffer": wav(2)}])
        assert wait_status(page, "query ").endswith("recording (2 s)")
        assert page.evaluate("window.injected") is None and page.locator("#panel img:not(#legend-img)").count() == 0
        assert page_errors(page) == []
    finally:
        page.close()


@pytest.mark.slow
def test_the_stores_credit_shows_as_written(browser, bundle_path, store_path, tmp_path):  # noqa: F811
    """TileJSON's attribution (the credit precompute was given) went into MapLibre's credit line as
    HTML: a credit with "<" or "&" lost its text, and markup in it became the page's."""
    credit = "<b id=injected>NASA</b> & friends"

    def credited(manifest: dict) -> None:
        manifest["attribution"] = {"credit": credit, "licence": "public domain"}

    with live_server(bundle_path, store_copy(store_path, tmp_path, credited)) as url:
        page = open_page(browser, url, "/#layer=uncertainty", ready=HEATMAP_LOADED)
        try:
            page.wait_for_selector(".maplibregl-ctrl-attrib-inner", state="attached")
            assert f"Imagery: {credit} (public domain)" in page.inner_text(".maplibregl-ctrl-attrib")
            assert page.locator("#injected").count() == 0
            assert page.console_errors() == []
        finally:
            page.close()


def overlaps(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


@pytest.mark.slow
def test_the_credit_line_stays_clear_of_the_panel_when_the_window_narrows(browser, server):  # noqa: F811
    """The credit line was placed once, for the width the page opened at: a window narrowed to phone
    width after that left it at the bottom right, under the panel's sheet and through its text."""
    page = open_page(browser, server, "/#layer=uncertainty")
    try:
        credit = page.locator(".maplibregl-ctrl-attrib")
        for width, corner in [(390, "top-left"), (900, "bottom-right")]:
            page.set_viewport_size({"width": width, "height": 700})
            page.wait_for_selector(f".maplibregl-ctrl-{corner} .maplibregl-ctrl-attrib", state="attached")
            assert credit.count() == 1 and credit.is_visible()
            assert not overlaps(credit.bounding_box(), page.locator("#panel").bounding_box())
        assert page.console_errors() == []
    finally:
        page.close()


@pytest.mark.slow
def test_a_long_query_is_named_by_its_start_in_the_status_and_the_profile(browser, server):  # noqa: F811
    """A 500-character query (the field's limit) was written out whole in the status line, read
    aloud on every change (role=status), and in the clicked place's profile, which grew taller than
    the map."""
    text = ("birdsong at dawn " * 30)[:500].strip()
    page = open_page(browser, server, f"/#q={quote(text)}&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        assert page.input_value("#text") == text, "the field holds the text whole"
        status = page.inner_text("#status")
        assert status.startswith("query ") and text[:59] + "…" in status and len(status) < 100
        page.mouse.click(650, 350)
        page.wait_for_selector(".maplibregl-popup h3", timeout=30_000)
        assert page.inner_text(".maplibregl-popup h3") == text[:59] + "… over the day"
        assert page.console_errors() == []
    finally:
        page.close()


@pytest.mark.slow
def test_unticking_any_hour_from_the_keyboard_moves_to_the_hour_slider(browser, server):  # noqa: F811
    """The hour slider comes before its "any hour" box on the page: a keyboard user who unticked the
    box with Space tabbed on to the month and reached the slider only with Shift+Tab."""
    page = open_page(browser, server, "/#q=birdsong", ready=HEATMAP_LOADED)
    try:
        page.focus("#hour-any")
        page.keyboard.press("Space")
        assert not page.is_checked("#hour-any")
        assert page.evaluate("document.activeElement.id") == "hour"
        before = int(page.input_value("#hour"))
        page.keyboard.press("ArrowRight")
        wait_until(page, "(h) => new URLSearchParams(location.hash.slice(1)).get('hour') === h", str(before + 1))
        assert page.console_errors() == []
    finally:
        page.close()


@pytest.mark.slow
def test_the_profile_of_a_place_opens_from_the_keyboard(browser, server):  # noqa: F811
    """A place's 24-hour profile opened only with a mouse click: the map took the keyboard's arrows
    and + and -, but nothing showed a place's profile from it."""
    page = open_page(browser, server, "/#q=birdsong&map=3.5/45/10", ready=HEATMAP_LOADED)
    try:
        canvas = page.locator(".maplibregl-canvas")
        assert "Enter" in canvas.get_attribute("aria-label")
        canvas.focus()
        page.keyboard.press("Enter")
        page.wait_for_selector(".maplibregl-popup canvas", timeout=30_000)
        assert "over the day" in page.inner_text(".maplibregl-popup")
        assert page.console_errors() == []
    finally:
        page.close()

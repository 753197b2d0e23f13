"""The viewer opens on a store's cells across the antimeridian: it fitted the map to TileJSON's
bounds with renderWorldCopies off, and those bounds span every longitude for such a store (TileJSON
3.0.0 bounds never wrap), so it opened on the whole world and could not show 175 E beside 175 W.
TileJSON now carries the store's `footprint` (west > east where it wraps, as RFC 7946 writes such a
box) beside the standard fields, and the viewer fits west..east + 360 over world copies; a store
that does not wrap opens as before."""

from __future__ import annotations

import httpx
import pytest

from cli.main import main
from store.reader import Store
from tests.conftest import precompute_args
from tests.server_support import live_server, make_client
from tests.test_imagery_audit import antimeridian, source  # noqa: F401  (fixtures this module uses)
from tests.test_viewer import (  # noqa: F401  (fixtures and helpers)
    browser,
    hide_layer,
    open_page,
    pixels_at,
    tile_box,
    wait_until,
    world_store,
)

HEATMAP_LOADED = "document.body.dataset.heatmap === 'loaded'"

# The map as the viewer fits it, in the map's own longitudes (beyond 180 on the eastern world copy).
VIEW = """(m => { const b = m.getBounds();
  return {west: b.getWest(), south: b.getSouth(), east: b.getEast(), north: b.getNorth(),
          copies: m.getRenderWorldCopies()}; })(window.soundscape.map)"""


@pytest.fixture(scope="module")
def crossing_store(antimeridian, bundle_path, tmp_path_factory):  # noqa: F811
    """A store of the UTM zone 60 scene at 168 E .. 168 W (levels 5-6)."""
    _, _, utm = antimeridian
    out = tmp_path_factory.mktemp("crossing") / "store"
    assert main(precompute_args(utm, bundle_path, "5-6", out, "--quiet")) == 0
    return out


def test_tilejson_hands_the_viewer_a_footprint_across_the_antimeridian(crossing_store, bundle_path):
    """Bounds stay one box of every longitude for other clients; `footprint` says where the cells
    are, west above east."""
    footprint = Store(crossing_store).footprint
    with make_client(bundle_path, crossing_store) as client:
        document = client.get("/tilejson.json", params={"layer": "uncertainty"}).json()
    assert document["bounds"][0] == -180 and document["bounds"][2] == 180
    assert document["footprint"] == pytest.approx(list(footprint))
    west, south, east, north = document["footprint"]
    assert 160 < west <= 180 and -180 <= east < -155 and south < 45 < north


def test_tilejson_footprint_of_a_store_that_does_not_wrap_is_its_bounds(bundle_path, store_path):
    with make_client(bundle_path, store_path) as client:
        document = client.get("/tilejson.json", params={"layer": "uncertainty"}).json()
    assert document["footprint"] == document["bounds"]


@pytest.mark.slow  # two live servers and a browser (14 s under load 2.5 on 2 cores), as tests/test_viewer.py
def test_the_viewer_opens_on_both_sides_of_180_degrees(browser, crossing_store, bundle_path, store_path):  # noqa: F811
    with live_server(bundle_path, crossing_store) as server:
        page = open_page(browser, server, "/#layer=uncertainty", ready="document.body.dataset.heatmap === 'loaded'")
        try:
            view = page.evaluate(VIEW)
            assert view["copies"], "world copies draw the eastern side beyond 180"
            assert view["west"] < 170 and view["east"] > 190, "both sides of 180 degrees are in view"
            assert view["east"] - view["west"] < 120, "the view is the store's cells, not the whole world"
            assert view["south"] < 40 and view["north"] > 55
            inside = [(175, 45), (185, 45), (178, 52), (188, 52)]  # 185 E is 175 W on the eastern copy
            drawn = pixels_at(page, inside)
            hide_layer(page, "soundscape")
            bare = pixels_at(page, inside)
            assert (abs(drawn - bare).sum(axis=1) > 10).all(), "the layer is drawn on both sides"
            lon = float(page.evaluate("window.location.hash").split("map=")[1].split("/")[2])
            assert -180 <= lon <= 180, "a shared link keeps a longitude the viewer reads back"
        finally:
            page.close()
    # A store that does not wrap opens exactly as before: fitted to its bounds, one world.
    with live_server(bundle_path, store_path) as server:
        page = open_page(browser, server)
        try:
            view = page.evaluate(VIEW)
            fitted = page.evaluate(
                """async () => { const info = await (await fetch('tilejson.json?layer=uncertainty')).json();
                const m = window.soundscape.map, b = info.bounds;
                return m.cameraForBounds([[b[0], b[1]], [b[2], b[3]]], {padding: clearOfPanel()}); }"""
            )
            assert not view["copies"]
            centre = page.evaluate("(m => [m.getCenter().lng, m.getCenter().lat, m.getZoom()])(window.soundscape.map)")
            assert centre == pytest.approx([fitted["center"]["lng"], fitted["center"]["lat"], fitted["zoom"]], abs=1e-6)
        finally:
            page.close()


def meets(box, footprint) -> bool:
    """Whether a tile's box meets a footprint that wraps (west > east: west..180 and -180..east)."""
    west, south, east, north = footprint
    across = box[0] < east or box[2] > west
    return across and box[1] < north and box[3] > south


@pytest.mark.slow
def test_the_viewer_asks_only_for_tiles_over_the_stores_cells(browser, crossing_store, bundle_path):  # noqa: F811
    """The layer's and the basemap's tiles were asked for at every longitude in view, on every world
    copy: the store's bounds (TileJSON's, every longitude) were all the map knew of where its cells
    are. Each source now covers its footprint's two boxes, either side of 180 degrees."""
    with live_server(bundle_path, crossing_store) as server:
        page = open_page(browser, server, "/#layer=uncertainty", ready=HEATMAP_LOADED)
        try:
            page.wait_for_load_state("networkidle")
            footprint = httpx.get(f"{server}/tilejson.json?layer=uncertainty", timeout=30).json()["footprint"]
            tiles = [url for url in page.requests() if "/tiles/" in url or "/basemap/" in url]
            boxes = [tile_box(url) for url in tiles]
            assert [url for url, box in zip(tiles, boxes, strict=True) if not meets(box, footprint)] == []
            assert any(box[2] > 0 for box in boxes) and any(box[0] < 0 for box in boxes), "both sides are asked for"
        finally:
            page.close()


# A shared view as the viewer shows it, its hash once rewritten and its notice (null when hidden).
SHOWN = """() => ({map: new URLSearchParams(location.hash.slice(1)).get('map'),
  copies: window.soundscape.map.getRenderWorldCopies(),
  notice: document.getElementById('notice').hidden ? null : document.getElementById('notice').textContent})"""
REWRITTEN = "/map=-?\\d+\\.\\d\\d\\//.test(location.hash)"  # the viewer wrote its own view into the hash


def open_view(browser, server: str, view: str) -> dict:  # noqa: F811
    page = open_page(browser, server, f"/#layer=uncertainty&map={view}", width=1024, height=768)
    try:
        wait_until(page, REWRITTEN)
        return page.evaluate(SHOWN)
    finally:
        page.close()


@pytest.mark.slow  # two live servers and a browser, as tests/test_viewer.py
def test_a_shared_view_near_the_antimeridian_is_kept_or_said(browser, bundle_path, store_path, world_store):  # noqa: F811
    """A store around the whole world drew no world copies (its footprint does not wrap), so
    MapLibre kept its view within -180..180: a link to Fiji (map=4/-17/179) opened at 157.5 E and
    zoom 0.8 at 1.00, with nothing said. Such a store now draws world copies and keeps any view; a
    store that does not go around the world still keeps its view within one world, and the notice
    says which view the link asked for, which it shows and why."""
    with live_server(bundle_path, world_store) as server:
        for view, kept in (("4/-17/179", "4.00/-17.0000/179.0000"), ("0.8/20/10", "0.80/20.0000/10.0000")):
            shown = open_view(browser, server, view)
            assert shown == {"map": kept, "copies": True, "notice": None}, view
        shown = open_view(browser, server, "2.5/-10/180")  # 180 E is 180 W
        assert shown["map"] in ("2.50/-10.0000/180.0000", "2.50/-10.0000/-180.0000") and shown["notice"] is None
        shown = open_view(browser, server, "23/20/10")  # beyond MapLibre's zooms: said all the same
        assert shown["map"] == "22.00/20.0000/10.0000"
        assert shown["notice"].startswith("the link's view map=23/20/10 is shown as map=22.00/20.0000/10.0000")
        assert "zooms in no further than 22" in shown["notice"]

    with live_server(bundle_path, store_path) as server:  # Europe: one world, as before, but said
        shown = open_view(browser, server, "4/-17/179")
        west_of_180 = "4.00/-17.0000/157.5000"  # 512 px either side of the centre, at 2^4 * 512 px a world
        assert shown["map"] == west_of_180 and not shown["copies"]
        assert shown["notice"].startswith(f"the link's view map=4/-17/179 is shown as map={west_of_180}: ")
        assert "180 W to 180 E" in shown["notice"]
        shown = open_view(browser, server, "0.8/20/10")
        assert shown["map"] == "1.00/20.0000/0.0000"
        assert "map=0.8/20/10 is shown as map=1.00/20.0000/0.0000" in shown["notice"]
        assert "zooms out no further than 1.00" in shown["notice"]
        assert open_view(browser, server, "3.5/45/10") == {
            "map": "3.50/45.0000/10.0000",
            "copies": False,
            "notice": None,
        }

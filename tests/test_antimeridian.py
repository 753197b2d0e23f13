"""Imagery across the antimeridian has a footprint that knows it wraps: its bounds span every
longitude (TileJSON's bounds never wrap), so a test against them let the corpus draw, and a csv
row keep, places on the far side of the planet, and a store of it advertised its centre there."""

from __future__ import annotations

import json
import logging
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from cli.main import main
from corpus.build import build as build_corpus
from corpus.build import draw_locations
from corpus.reader import DemoCorpus
from runtime.imagery import Imagery
from runtime.tiles import Footprint
from store.format import StoreError
from store.reader import Store
from tests.conftest import precompute_args
from tests.server_support import make_client
from tests.test_corpus import asset_root, small_config  # noqa: F401  (a fixture this module uses)
from tests.test_imagery_audit import antimeridian, source  # noqa: F401  (fixtures this module uses)
from tests.test_own_data_audit import folder, rows

OWS = "{http://www.opengis.net/ows/1.1}"


def test_a_footprint_across_the_antimeridian_holds_its_two_sides_only():
    fiji = Footprint.enclosing([(176.0, -19.0, 180.0, -16.0), (-180.0, -19.0, -178.0, -16.0)])
    assert fiji == (176, -19, -178, -16) and fiji.wraps
    assert fiji.boxes == ((176, -19, 180, -16), (-180, -19, -178, -16))
    assert fiji.bounds == (-180, -19, 180, -16)  # the one west < east box TileJSON takes
    assert fiji.centre == (179, -17.5)
    assert [fiji.covers(lon, -17) for lon in (177, 180, -180, -179, 0, 100, -100)] == [1, 1, 1, 1, 0, 0, 0]
    assert not fiji.covers(177, -20)
    assert fiji.clipped((-180, -85, 180, 85)) == fiji
    assert fiji.clipped((170, -85, 180, 85)) == (176, -19, 180, -16)
    assert fiji.clipped((0, -85, 10, 85)) is None
    # Three spans: the widest gap (here between -170 and 0) is the one left out.
    assert Footprint.enclosing([(-180, 0, -170, 1), (0, 0, 10, 1), (170, 0, 180, 1)]) == (0, 0, -170, 1)
    assert Footprint.enclosing([(-180, 0, 0, 1), (0, 0, 180, 1)]) == (-180, 0, 180, 1)  # the world: no wrap


def test_a_footprint_that_does_not_wrap_is_its_bounds(imagery_path):
    """Imagery away from the antimeridian keeps its box: the same bounds, centre and inside test."""
    imagery = Imagery(imagery_path)
    west, south, east, north = imagery.bounds
    assert not imagery.footprint.wraps and tuple(imagery.footprint) == imagery.bounds
    assert "footprint" not in imagery.describe()  # a store's key is as before where nothing wraps
    assert imagery.footprint.centre == ((west + east) / 2, (south + north) / 2)
    for lon in np.linspace(west - 5, east + 5, 23):
        for lat in np.linspace(south - 5, north + 5, 17):
            assert imagery.covers(lon, lat) == (west <= lon <= east and south <= lat <= north)


def test_imagery_across_the_antimeridian_covers_its_two_sides_only(antimeridian):  # noqa: F811
    """A UTM zone 60 scene and a mosaic of two geographic files at 170 E .. 170 W: bounds of
    -180..180, against which Europe (the far side) was inside the imagery."""
    halves, _, utm = antimeridian
    for imagery in (Imagery(utm), Imagery(halves)):
        assert imagery.bounds[0] == -180 and imagery.bounds[2] == 180  # unchanged: a box never wraps
        assert imagery.footprint.wraps and imagery.footprint.west > 160 and imagery.footprint.east < -155
        assert imagery.covers(175, 45) and imagery.covers(-175, 45) and imagery.covers(180, 45)
        assert not imagery.covers(10, 45) and not imagery.covers(-100, 45) and not imagery.covers(175, 10)
        lon, _ = imagery.footprint.centre
        assert abs(lon) > 170
        # As a store's manifest records it: the footprint beside the box that spans every longitude.
        assert imagery.describe()["footprint"] == list(imagery.footprint)


class _Places:
    """Places as draw_locations reads them: land everywhere, far from a coast, unlit."""

    def is_land(self, lat, lon):
        return np.ones(np.shape(lat), bool)

    def coast_km(self, lat, lon):
        return np.full(np.shape(lat), 1e4)

    def lights(self, lat, lon):
        return np.zeros(np.shape(lat))


def test_the_corpus_draws_places_inside_the_imagery_not_across_the_planet(antimeridian):  # noqa: F811
    halves, _, _ = antimeridian
    imagery = Imagery(halves)
    shares = {"land": 1.0, "coast": 0.0, "sea": 0.0, "lit": 0.0}
    lat, lon, _ = draw_locations(_Places(), 2000, imagery.footprint, shares, np.random.default_rng(0))
    assert all(imagery.covers(float(a), float(b)) for a, b in zip(lon, lat, strict=True))
    assert (lon > 170).sum() > 800 and (lon < -170).sum() > 800  # both sides, by area
    # A box that does not wrap draws as before: the points of the seed's first uniform draws.
    box = (-10.0, 35.0, 30.0, 60.0)
    again = draw_locations(_Places(), 500, box, shares, np.random.default_rng(1))
    rng = np.random.default_rng(1)
    m = 4 * 500 + 1000
    want_lat = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(35.0)), np.sin(np.radians(60.0)), m)))
    want_lon = rng.uniform(-10.0, 30.0, m)
    assert set(zip(again[0].tolist(), again[1].tolist(), strict=True)) <= set(
        zip(want_lat.tolist(), want_lon.tolist(), strict=True)
    )


def test_a_corpus_across_the_antimeridian_records_its_footprint(antimeridian, asset_root, tmp_path, capsys):  # noqa: F811
    """The corpus manifest recorded the imagery's bounds alone, every longitude for this scene: who
    read it saw imagery of the whole world. It records the footprint too (west > east, RFC 7946),
    which `corpus info` prints; a manifest written before (no footprint) reads as its bounds."""
    _, _, utm = antimeridian
    out = tmp_path / "corpus"
    sea = {"land": 0.0, "coast": 0.0, "sea": 1.0, "lit": 0.0}
    manifest = build_corpus(small_config(out, asset_root, utm, samples=60, strata=sea), progress=False)
    west, south, east, north = manifest["imagery"]["footprint"]
    assert west > 160 and east < -155 and south < 45 < north
    assert manifest["imagery"]["bounds"] == [-180, south, 180, north]  # a west < east box, as before
    corpus = DemoCorpus(out, progress=False)
    assert corpus.footprint.wraps and all(corpus.footprint.covers(lon, lat) for lon, lat in [(175, 45), (-175, 45)])
    capsys.readouterr()
    assert main(["corpus", "info", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["imagery_footprint"] == [west, south, east, north]

    old = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    del old["imagery"]["footprint"]
    (out / "manifest.json").write_text(json.dumps(old), encoding="utf-8")
    assert DemoCorpus(out, progress=False).footprint == (-180, south, 180, north)


def test_a_store_across_the_antimeridian_advertises_its_centre_there(antimeridian, bundle_path, tmp_path, capsys):  # noqa: F811
    """TileJSON's centre was the middle of bounds spanning every longitude: 0, over Africa, for
    imagery of Fiji; bounds stay -180..180 (TileJSON forbids bounds that wrap, MapLibre draws no
    tile of west > east bounds), and so does the WMTS WGS84BoundingBox, which clients read as a
    min/max box."""
    _, _, utm = antimeridian
    out = tmp_path / "store"
    assert main(precompute_args(utm, bundle_path, "5-6", out, "--quiet")) == 0
    store = Store(out)
    assert store.footprint.wraps and store.footprint.covers(175, 45) and not store.footprint.covers(0, 45)
    capsys.readouterr()
    assert main(["store", "info", str(out)]) == 0
    assert f"(its cells lie from {store.footprint.west:g} across the antimeridian to " in capsys.readouterr().out
    with make_client(bundle_path, out) as client:
        document = client.get("/tilejson.json", params={"layer": "uncertainty"}).json()
        west, south, east, north = document["bounds"]
        assert (west, east) == (-180, 180) and south < 45 < north
        lon, lat, zoom = document["center"]
        assert store.footprint.covers(lon, lat) and abs(lon) > 175 and south < lat < north
        assert document["minzoom"] <= zoom <= document["maxzoom"]
        capabilities = ET.fromstring(client.get("/WMTSCapabilities.xml").content)
        box = next(capabilities.iter(f"{OWS}WGS84BoundingBox"))
        assert box.find(f"{OWS}LowerCorner").text.split()[0] == "-180.0"


def test_a_store_away_from_the_antimeridian_keeps_its_centre(bundle_path, store_path):
    store = Store(store_path)
    west, south, east, north = store.bounds
    with make_client(bundle_path, store_path) as client:
        document = client.get("/tilejson.json", params={"layer": "uncertainty"}).json()
    assert document["bounds"] == [west, south, east, north]
    assert document["center"][:2] == [(west + east) / 2, (south + north) / 2]


def test_a_store_whose_plan_footprint_is_not_boxes_is_refused(store_path, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["plan"]["footprint"] = [[170, 28, 180]]
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(StoreError, match=r"'plan.footprint' is not one or two boxes of 4 finite numbers"):
        Store(copy)


def test_csv_rows_are_kept_on_both_sides_of_180_degrees_only(tmp_path, antimeridian, caplog):  # noqa: F811
    """The csv reader tested rows against the imagery's bounds, every longitude for this scene, so a
    row at 10E was kept and cut from imagery that holds nothing there."""
    _, _, utm = antimeridian
    text = "lat,lon,audio\n45,175,audio/0.wav\n45,-175,audio/1.wav\n45,10,audio/2.wav\n50,178,audio/3.wav\n"
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "am", text), imagery=str(utm), level=5)
    assert [r.lon for r in kept] == [175.0, -175.0, 178.0]
    assert "outside the imagery's bounds: 1" in caplog.text

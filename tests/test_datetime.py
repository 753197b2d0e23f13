"""`datetime=`: one moment (RFC 3339, as OGC API and STAC write it), each place at the hour and
month its clocks show then (its time zone by where it is, daylight saving included): `/point` as
`/point` of that hour and month, a map's cells each at its own clock (a tile across two time
zones is two hours), `/search` ranking every cell at its own clock. A moment without an offset is
every place's own clock: `hour=` and `month=` alike everywhere."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import numpy as np
import pytest

from runtime.clock import clocks_at
from server import wmts
from server.engine import CellEmbeddings, QueryMetadata
from tests.server_support import make_client, refused

INNSBRUCK = "/point/11.4,47.27"  # Europe/Vienna: UTC+1, +2 in summer
LISBON = "/point/-9.14,38.72"  # Europe/Lisbon: UTC+0, +1 in summer
BAY_OF_BISCAY = "/point/-10.5,45.5"  # at sea: the nominal zone of its 15 degrees of longitude, UTC-1 (Etc/GMT+1)
CLOCK_KEYS = ("datetime", "local_time")


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def answer(client, path: str, **params) -> dict:
    response = client.get(path, params={"q": "birdsong", **params})
    assert response.status_code == 200, response.text[:300]
    return response.json()


@pytest.mark.parametrize(
    "path, moment, local_time, hour, month",
    [
        (INNSBRUCK, "2024-07-01T10:00:00Z", "2024-07-01T12:00:00+02:00", 12, 7),  # summer time
        (INNSBRUCK, "2024-01-15T10:00:00Z", "2024-01-15T11:00:00+01:00", 11, 1),
        (INNSBRUCK, "2024-07-01T12:00:00+02:00", "2024-07-01T12:00:00+02:00", 12, 7),  # at an offset
        (INNSBRUCK, "2024-06-30T22:30:00Z", "2024-07-01T00:30:00+02:00", 0, 7),  # a month on, there
        (LISBON, "2024-07-01T10:00:00Z", "2024-07-01T11:00:00+01:00", 11, 7),
        (BAY_OF_BISCAY, "2024-07-01T10:00:00Z", "2024-07-01T09:00:00-01:00", 9, 7),
        (LISBON, "2024-07-01T06:30", "2024-07-01T06:30:00", 6, 7),  # no offset: the place's own clock
    ],
)
def test_a_moment_is_the_hour_and_month_of_the_places_clock(client, path, moment, local_time, hour, month):
    got = answer(client, path, datetime=moment)
    assert (got["datetime"], got["local_time"], got["hour"], got["month"]) == (moment, local_time, hour, month)
    same = answer(client, path, hour=hour, month=month)
    assert {k: v for k, v in got.items() if k not in CLOCK_KEYS} == same


def test_other_metadata_go_with_a_moment(client):
    got = answer(client, INNSBRUCK, datetime="2024-07-01T10:00:00Z", source="field", level=5)
    same = answer(client, INNSBRUCK, hour=12, month=7, source="field", level=5)
    assert {k: v for k, v in got.items() if k not in CLOCK_KEYS} == same and got["source"] == "field"


@pytest.mark.parametrize(
    "params, said",
    [
        ({"datetime": "2024-07-01T10:00:00Z", "hour": 6}, "give datetime, or hour and month, not both"),
        ({"datetime": "2024-07-01T10:00:00Z", "month": 6}, "give datetime, or hour and month, not both"),
        ({"datetime": "2024-07-01T00:00:00Z/2024-07-02T00:00:00Z"}, "one moment, not an interval"),
        ({"datetime": "../2024-07-02T00:00:00Z"}, "one moment, not an interval"),
        ({"datetime": "2024-07-01"}, "is a date alone: give its time too"),
        ({"datetime": "tomorrow at dawn"}, "as RFC 3339 writes it"),
        ({"datetime": "2024-07-01T25:00:00Z"}, "as RFC 3339 writes it"),
        ({"datetime": "2024-07-01T10:00:00Z", "hour": 6, "level": 99}, "not both"),  # with the level's
        ({"datetime": "0001-01-01T00:00:00+14:00"}, "year must be 2..9998"),  # before the calendar at UTC
        ({"datetime": "9999-12-31T23:00:00-12:00"}, "year must be 2..9998"),
        ({"datetime": "{Time}"}, "a WMTS template's placeholder the client left as it was: pick a value of"),
    ],
)
def test_a_moment_that_is_none_is_refused_in_a_sentence(client, params, said):
    detail = refused(client.get(INNSBRUCK, params={"q": "birdsong", **params}))
    assert said in detail, detail
    if "level" in params:
        assert "level" in detail.replace("datetime", ""), "one 422 names every bad parameter"


@pytest.mark.parametrize(
    "name, value, said",
    [
        ("DateTime", "2024-07-01T10:00:00Z", "did you mean 'datetime'?"),
        ("date_time", "2024-07-01T10:00:00Z", "did you mean 'datetime'?"),
        ("time", "06:00", "give the moment as datetime=2024-06-01T06:00:00Z (RFC 3339), or the local hour"),
        ("TIME", "2024-07-01T10:00:00Z", "give the moment as datetime="),  # the WMS and WMTS dimension
        ("date", "2024-07-01", "give the moment as datetime="),
        ("season", "summer", "give the month as month=1..12"),
    ],
)
def test_another_name_for_the_moment_is_refused_naming_datetime(client, name, value, said):
    detail = refused(client.get(TILES[0] if name == "TIME" else INNSBRUCK, params={"q": "birdsong", name: value}))
    assert detail.startswith(f"{name!r} is not a parameter of this route: ") and said in detail, detail


def test_every_route_that_takes_an_hour_takes_a_moment(client):
    operations = client.get("/openapi.json").json()["paths"]
    names = {
        path: {p["name"] for p in op.get("parameters", [])}
        for path, methods in operations.items()
        for op in methods.values()
    }
    hourly = sorted(path for path, taken in names.items() if "hour" in taken)
    assert len(hourly) > 8 and all("datetime" in names[path] for path in hourly)
    assert not [path for path, taken in names.items() if "datetime" in taken and "hour" not in taken]


# Tiles of level 6 cells (.npy: values, no colour scale). Bilinear between cell centres, so each
# pixel blends up to four cells, each at its own clock: Central European summer time on land
# (12:00 at SUMMER_10_UTC), Eastern (13:00) from Romania and Ukraine on, and at sea the nominal
# zone of its longitude, which keeps no summer time (11:00 in the Adriatic).
TILES = ["/tiles/WebMercatorQuad/6/34/22.npy", "/tiles/WebMercatorQuad/5/18/11.npy", "/tiles/WebMercatorQuad/4/8/5.npy"]
SUMMER_10_UTC = "2024-07-01T10:00:00Z"


def values(client, path: str, **params) -> np.ndarray:
    response = client.get(path, params={"q": "birdsong", "layer": "heatmap", **params})
    assert response.status_code == 200, response.text[:300]
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def test_the_clocks_of_places_at_an_instant():
    lat = np.array([47.27, 44.43, 43.0, 35.7, 35.7, -33.9, 45.5])
    lon = np.array([11.4, 26.1, 15.0, 139.7, 139.7, 151.2, -10.5])  # Innsbruck, Bucharest, Adriatic, Tokyo, ...
    hours, months = clocks_at(datetime(2024, 7, 1, 10, tzinfo=UTC), lat, lon)
    assert hours.tolist() == [12, 13, 11, 19, 19, 20, 9] and months.tolist() == [7] * 7
    hours, months = clocks_at(datetime(2024, 6, 30, 22, 30, tzinfo=UTC), lat[3:6], lon[3:6])
    assert hours.tolist() == [7, 7, 8] and months.tolist() == [7, 7, 7]  # Tokyo and Sydney: July already


@pytest.mark.parametrize("path", TILES)
def test_a_tile_at_an_instant_draws_each_cell_at_its_own_clock(client, path):
    """The tile as the engine draws cells it is given: each cell of the tile's window embedded
    under its own clock's hour and month (runtime.clock at the cell's centre), then sampled."""
    engine = client.app.state.service.engine
    z, x, y = (int(v) for v in path.removesuffix(".npy").split("/")[-3:])
    window = engine.window(z, x, y, 256)
    rows = window.present
    lonlat = np.asarray(window.level.arrays.lonlat[rows])
    hours, months = clocks_at(datetime(2024, 7, 1, 10, tzinfo=UTC), lonlat[:, 1], lonlat[:, 0])
    mu = np.zeros((len(rows), window.level.arrays.mu.shape[1]), np.float16)
    s = np.zeros(len(rows), np.float32)
    for hour, month in set(zip(hours.tolist(), months.tolist(), strict=True)):
        mine = (hours == hour) & (months == month)
        cells = engine.embeddings(window.level, rows[mine], QueryMetadata(hour=hour, month=month))
        mu[mine], s[mine] = cells.mu, cells.s
    expected = engine.tile_values(window, CellEmbeddings(mu, s), "heatmap", engine.embed_text("birdsong"))
    assert len(set(hours.tolist())) > 1, "the tile's cells keep more than one clock"
    assert np.array_equal(values(client, path, datetime=SUMMER_10_UTC), expected, equal_nan=True)
    assert not np.array_equal(expected, values(client, path, hour=12, month=7), equal_nan=True)


def test_a_moment_without_an_offset_is_the_hour_and_month_everywhere(client):
    for path in (TILES[1], "/tiles/5/17/11.png"):
        at = client.get(path, params={"q": "birdsong", "datetime": "2024-07-01T06:30"})
        same = client.get(path, params={"q": "birdsong", "hour": 6, "month": 7})
        assert at.status_code == 200 and at.content == same.content and at.headers["etag"] == same.headers["etag"]


def test_a_tile_at_an_instant_has_its_own_scale_and_name(client):
    at = client.get("/tiles/5/18/11.png", params={"q": "birdsong", "datetime": SUMMER_10_UTC})
    noon = client.get("/tiles/5/18/11.png", params={"q": "birdsong", "hour": 12, "month": 7})
    assert at.status_code == 200 and at.headers["content-type"] == "image/png"
    assert at.headers["etag"] not in (noon.headers["etag"], None)
    written_so = (
        "2024-07-01T10:00:00+00:00",
        "2024-07-01T12:00:00+02:00",
        "2024-07-01T12:00:00 02:00",
        "2024-07-01 12:00 02:00",
    )
    for written in written_so:  # the last two: an offset's + that came as a space
        later = client.get("/tiles/5/18/11.png", params={"q": "birdsong", "datetime": written})
        assert later.headers["etag"] == at.headers["etag"], "one instant, however written, is one tile"
    tilejson = client.get("/tilejson.json", params={"q": "birdsong", "datetime": SUMMER_10_UTC}).json()
    assert "datetime=2024-07-01T10%3A00%3A00Z" in tilejson["tiles"][0]
    assert "each at its clock at 2024-07-01T10:00:00+00:00" in tilejson["description"]


def test_a_search_at_an_instant_ranks_each_cell_at_its_own_clock(client):
    found = client.get("/search", params={"q": "birdsong", "datetime": SUMMER_10_UTC, "level": 5, "k": 40}).json()
    assert (
        found["properties"]["datetime"] == SUMMER_10_UTC
        and found["properties"]["ranked"] == found["properties"]["cells"]
    )
    hours = set()
    for feature in found["features"]:
        lon, lat = feature["geometry"]["coordinates"]
        point = answer(client, f"/point/{lon},{lat}", datetime=SUMMER_10_UTC, level=5)
        assert point["score"] == feature["properties"]["score"], (lon, lat)
        hours.add(point["hour"])
    assert len(hours) > 1, "the best cells of the whole level keep more than one clock"


def test_a_search_at_an_instant_is_bounded_as_an_exact_one(bundle_path, store_path):
    small = make_client(bundle_path, store_path, max_search_cells=20)
    detail = refused(small.get("/search", params={"q": "birdsong", "datetime": SUMMER_10_UTC, "level": 6}))
    assert "a search at an instant ranks every cell at its own clock (limit 20)" in detail
    box = {"bbox": "10,45,12,47", "level": 5}
    assert small.get("/search", params={"q": "birdsong", "datetime": SUMMER_10_UTC, **box}).status_code == 200


def wmts_layers(client, **params) -> dict[str, ET.Element]:
    response = client.get("/WMTSCapabilities.xml", params={"q": "birdsong", **params})
    assert response.status_code == 200, response.text[:300]
    layers = ET.fromstring(response.text).iter(f"{{{wmts.WMTS}}}Layer")
    return {layer.findtext(f"{{{wmts.OWS}}}Identifier"): layer for layer in layers}


def test_wmts_at_an_instant_offers_the_hours_of_its_day_as_its_time_dimension(client):
    """A GIS client picks a WMTS layer's time from its Time dimension (QGIS: Select dimensions;
    GDAL takes the default): the instant asked is its default, beside each whole hour of its day
    (UTC), and every value put in the template is the tile of that instant."""
    layers = wmts_layers(client, datetime="2024-07-01T12:30:00+02:00")
    assert set(layers) == {"heatmap", "contrast", "uncertainty"}
    for name, layer in layers.items():
        [dimension] = layer.iter(f"{{{wmts.WMTS}}}Dimension")
        assert dimension.findtext(f"{{{wmts.OWS}}}Identifier") == "Time"
        assert dimension.findtext(f"{{{wmts.WMTS}}}Default") == "2024-07-01T10:30:00Z"
        offered = [value.text for value in dimension.iter(f"{{{wmts.WMTS}}}Value")]
        assert offered == sorted([f"2024-07-01T{hour:02d}:00:00Z" for hour in range(24)] + ["2024-07-01T10:30:00Z"])
        template = layer.find(f"{{{wmts.WMTS}}}ResourceURL").get("template")
        assert template.count("datetime=") == 1 and template.endswith("&datetime={Time}"), template
        for instant in (offered[4], "2024-07-01T10:30:00Z"):
            url = template.format(TileMatrix=6, TileCol=34, TileRow=22, Time=instant).split("/", 3)[3]
            tile = client.get(f"/{url}")
            params = {"datetime": instant, "layer": name} | ({} if name == "uncertainty" else {"q": "birdsong"})
            direct = client.get("/tiles/WebMercatorQuad/6/34/22.png", params=params)
            assert tile.status_code == 200 and tile.headers["etag"] == direct.headers["etag"], (name, instant)


def test_wmts_time_dimension_says_whether_its_instants_share_a_colour_scale(client):
    """Each instant of a query's layer has a colour scale of its own unless the capabilities URL
    holds a rescale (then every instant's tiles have it); the uncertainty's is one range always."""
    scales = {}
    for params in ({}, {"rescale": "0,0.07"}):
        layers = wmts_layers(client, datetime="2024-07-01T10:00:00Z", **params)
        for name, layer in layers.items():
            [dimension] = layer.iter(f"{{{wmts.WMTS}}}Dimension")
            scales[name, bool(params)] = dimension.findtext(f"{{{wmts.OWS}}}Abstract").split("show then; ", 1)[1]
    shared = "every instant on the layer's one colour scale"
    assert scales["heatmap", True] == scales["contrast", True] == shared
    assert scales["uncertainty", False] == scales["uncertainty", True] == shared
    for name in ("heatmap", "contrast"):
        assert scales[name, False].startswith("each instant on a colour scale of its own")
        assert "a rescale= in the capabilities URL puts every instant on one" in scales[name, False]
    template = wmts_layers(client, datetime="2024-07-01T10:00:00Z", rescale="0,0.07")["heatmap"]
    url = template.find(f"{{{wmts.WMTS}}}ResourceURL").get("template")
    for hour in (4, 16):  # two instants of the day, one scale: the tile TileJSON describes
        tile = url.format(TileMatrix=2, TileCol=2, TileRow=1, Time=f"2024-07-01T{hour:02d}:00:00Z").split("/", 3)[3]
        tilejson = client.get(
            "/tilejson.json", params={"q": "birdsong", "datetime": f"2024-07-01T{hour:02d}:00:00Z", "rescale": "0,0.07"}
        ).json()
        assert client.get(f"/{tile}").status_code == 200 and tilejson["rescale"] == [0, 0.07]


def test_wmts_without_an_instant_has_no_time_dimension(client):
    for params in ({}, {"hour": 6}, {"datetime": "2024-07-01T06:30"}):  # no offset: every place's own clock
        for layer in wmts_layers(client, **params).values():
            assert layer.find(f"{{{wmts.WMTS}}}Dimension") is None and "{Time}" not in ET.tostring(layer, "unicode")

"""/statistics: each layer's statistics over a level's cells (a bbox's, a GeoJSON area's, or all
of them) under the metadata asked, computed here independently of the server: from every cell's
embeddings (the tests of /search do the same), the cells /search ranks in the same box, the cells
whose centre a triangle, a holed square or two squares hold, and the areas pyproj's geodesic gives
the cells. Bad areas and bounds are refused in a sentence; the latency benchmark runs."""

import json

import mercantile
import numpy as np
import pytest
from pyproj import Geod

from benchmarks import statistics_latency
from runtime.tiles import EARTH_RADIUS_M
from server.engine import CellEmbeddings
from store.reader import Store
from tests.server_support import make_client
from tests.test_server_rest import brute_force, cells_under, centres_within

TEXT = "birdsong in a forest"
BOX = (0.0, 40.0, 20.0, 55.0)
SPHERE = Geod(a=EARTH_RADIUS_M, b=EARTH_RADIUS_M)  # the sphere runtime.tiles.cells_area_km2 measures on


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def statistics(client, **params) -> dict:
    answer = client.get("/statistics", params={"q": TEXT, **{k: v for k, v in params.items() if v is not None}})
    assert answer.status_code == 200, answer.text
    return answer.json()


def areas_km2(client, level: int, rows: np.ndarray) -> np.ndarray:
    """Each cell's area on the sphere, from its tile's bounds (mercantile) by pyproj's geodesics."""
    codes = np.asarray(Store(client.app.state.service.store.path).levels[level].arrays.codes)[rows]
    tiles = []
    for code in codes:
        x = y = 0
        for bit in range(level):  # Morton order: x in the even bits, y in the odd
            x |= ((int(code) >> (2 * bit)) & 1) << bit
            y |= ((int(code) >> (2 * bit + 1)) & 1) << bit
        tiles.append((x, y))
    return tile_areas_km2(level, tiles)


def tile_areas_km2(level: int, tiles: list[tuple[int, int]]) -> np.ndarray:
    areas = []
    for x, y in tiles:
        w, s, e, n = mercantile.bounds(x, y, level)
        along = np.linspace(w, e, 400)  # the edges are parallels, which geodesics between corners are not
        lons, lats = np.concatenate([along, along[::-1]]), np.repeat([s, n], len(along))
        area, _ = SPHERE.polygon_area_perimeter(lons, lats)
        areas.append(abs(area) / 1e6)
    return np.array(areas)


def assert_summary(found: dict, values: np.ndarray, area: np.ndarray, bins: int = 10, atol: float = 1e-4) -> None:
    values = values.astype(np.float64)
    assert found["count"] == len(values)
    for name, expected in [
        ("min", values.min()),
        ("max", values.max()),
        ("mean", values.mean()),
        ("std", values.std()),
        ("median", np.median(values)),
        ("percentile_2", np.percentile(values, 2)),
        ("percentile_98", np.percentile(values, 98)),
        ("area_mean", np.average(values, weights=area)),
    ]:
        assert found[name] == pytest.approx(expected, abs=atol), name
    counts, edges = found["histogram"]
    assert len(counts) == bins and sum(counts) == len(values) and len(edges) == bins + 1
    assert edges[0] == found["min"] and edges[-1] == found["max"]
    # Values computed here are within atol of the server's: one that close to an edge may fall either side.
    inner = np.array(edges[1:-1])
    ambiguous = int((np.abs(values[:, None] - inner[None, :]) <= atol).any(axis=1).sum())
    assert np.abs(np.array(counts) - np.histogram(values, bins=np.array(edges))[0]).sum() <= 2 * ambiguous


@pytest.mark.parametrize("hour", [None, 6])
def test_the_statistics_of_a_level_are_those_of_every_cell(client, hour):
    body = statistics(client, level=5, hour=hour)
    truth, s = brute_force(client, 5, TEXT, hour)
    rows = np.arange(len(s))
    area = areas_km2(client, 5, rows)
    assert body["level"] == 5 and body["cells"] == len(s) and "bbox" not in body
    assert body["area_km2"] == pytest.approx(area.sum(), rel=1e-6)
    assert (body.get("hour"), body["text"]) == (hour, TEXT)
    assert_summary(body["layers"]["heatmap"], truth, area)
    assert_summary(body["layers"]["uncertainty"], s, area)
    assert body["layers"]["heatmap"]["area_mean"] != pytest.approx(body["layers"]["heatmap"]["mean"], abs=1e-6), (
        "a web-mercator level's cells are not all the same size"
    )
    assert "match probability" in body["layers"]["heatmap"]["units"] and "S" in body["layers"]["uncertainty"]["units"]


def test_the_statistics_in_a_bbox_are_of_the_cells_search_ranks_there(client):
    box = ",".join(map(str, BOX))
    body = statistics(client, level=6, bbox=box, hour=6, bins=7)
    rows = centres_within(client, 6, *BOX)
    engine = client.app.state.service.engine
    mu, s = cells_under(client, 6, 6)
    contrast = engine.values(CellEmbeddings(mu[rows], s[rows]), "contrast", engine.embed_text(TEXT))
    area = areas_km2(client, 6, rows)
    assert body["bbox"] == list(BOX) and body["cells"] == len(rows) > 1
    assert_summary(body["layers"]["contrast"], contrast, area, bins=7)
    ranked = client.get("/search", params={"q": TEXT, "k": 1000, "level": 6, "bbox": box, "hour": 6}).json()
    found = [f["properties"] for f in ranked["features"]]
    scores, where = np.array([f["score"] for f in found]), [(f["x"], f["y"]) for f in found]
    assert_summary(body["layers"]["heatmap"], scores, tile_areas_km2(6, where), bins=7, atol=1e-6)  # as /search reads


def test_at_an_instant_each_cell_is_at_its_own_clock(client):
    instant = "2024-07-01T10:00:00Z"
    box = "-12,28,36,62"  # from the Atlantic to the Caspian: more than one time zone
    body = statistics(client, level=5, bbox=box, datetime=instant)
    ranked = client.get("/search", params={"q": TEXT, "k": 1000, "level": 5, "bbox": box, "datetime": instant}).json()
    scores = np.array([f["properties"]["score"] for f in ranked["features"]])
    assert body["datetime"] == instant and body["cells"] == ranked["properties"]["ranked"] == len(scores)
    assert body["layers"]["heatmap"]["mean"] == pytest.approx(scores.mean(), abs=1e-6)
    one_hour = statistics(client, level=5, bbox=box, hour=12, month=7)["layers"]["heatmap"]["mean"]
    assert body["layers"]["heatmap"]["mean"] != pytest.approx(one_hour, abs=1e-6), "not one clock everywhere"


def test_one_cell_s_area_is_its_area_on_the_ground(client):
    rows = centres_within(client, 6, *BOX)[:1]
    lon, lat = np.asarray(Store(client.app.state.service.store.path).levels[6].arrays.lonlat)[rows[0]]
    body = statistics(client, level=6, bbox=f"{lon - 0.01},{lat - 0.01},{lon + 0.01},{lat + 0.01}")
    assert body["cells"] == 1 and body["area_km2"] == pytest.approx(areas_km2(client, 6, rows)[0], rel=1e-6)
    heatmap = body["layers"]["heatmap"]
    assert heatmap["min"] == heatmap["max"] == heatmap["mean"] == heatmap["area_mean"] and heatmap["std"] == 0


@pytest.mark.parametrize(
    ("params", "status", "said"),
    [
        ({"bins": "0"}, 422, "bins must be an integer in 1..100"),
        ({"bins": "101"}, 422, "bins must be an integer in 1..100"),
        ({"bbox": "-150,-60,-140,-50"}, 404, "no cell of level 6 has its centre in the bbox"),
        ({"bbox": "10,50,0,40,5"}, 422, "bbox"),
        ({"q": None}, 422, "q"),
    ],
)
def test_bad_statistics_requests_are_refused_in_a_sentence(client, params, status, said):
    asked = {k: v for k, v in {"q": TEXT, **params}.items() if v is not None}
    answer = client.get("/statistics", params=asked)
    assert answer.status_code == status and said in answer.json()["detail"], answer.text


def test_a_level_or_a_bbox_over_the_cells_limit_is_a_422_that_says_what_to_do(client, bundle_path, store_path):
    limit = len(client.app.state.service.store.levels[6]) - 1  # one cell short of the whole level
    with make_client(bundle_path, store_path, max_search_cells=limit) as small:
        whole = small.get("/statistics", params={"q": TEXT, "level": 6})
        assert whole.status_code == 422 and f"level 6 has {limit + 1} cells" in whole.json()["detail"]
        assert "pass a coarser level= or a bbox=" in whole.json()["detail"]
        boxed = small.get("/statistics", params={"q": TEXT, "level": 6, "bbox": "-180,-90,180,90"})
        assert boxed.status_code == 422 and "pass a smaller bbox or a coarser level=" in boxed.json()["detail"]
        part = small.get("/statistics", params={"q": TEXT, "level": 6, "bbox": ",".join(map(str, BOX))})
        assert part.status_code == 200 and 0 < part.json()["cells"] <= limit


def test_a_whole_level_under_new_metadata_is_fused_once_and_kept(bundle_path, store_path):
    params = {"q": TEXT, "level": 6, "hour": 6, "month": 3}  # no store holds an hour and a month together
    with make_client(bundle_path, store_path) as client:
        service = client.app.state.service
        first = client.get("/statistics", params=params).json()
        fusions = service.stats["fusions"]
        again = client.get("/statistics", params={**params, "q": "rain"}).json()
        assert service.stats["fusions"] == fusions > 0, "the second query reads the level the first fused"
        assert again["layers"]["uncertainty"] == first["layers"]["uncertainty"], "the same cells"
        ranked = client.get("/search", params={**params, "exact": "true", "k": 3}).json()
        assert service.stats["fusions"] == fusions and ranked["properties"]["ranked"] == first["cells"]


def square(west: float, south: float, east: float, north: float) -> list:
    return [[west, south], [east, south], [east, north], [west, north], [west, south]]


def post_area(client, area: dict, content_type: str = "application/geo+json", **params):
    return client.post(
        "/statistics",
        params={"q": TEXT, "level": 6, **params},
        content=json.dumps(area).encode(),
        headers={"Content-Type": content_type},
    )


def test_an_area_as_a_bbox_s_polygon_reads_the_bbox_s_cells(client):
    answer = post_area(client, {"type": "Polygon", "coordinates": [square(*BOX)]}, hour=6)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    boxed = statistics(client, level=6, hour=6, bbox=",".join(map(str, BOX)))
    assert body["layers"] == boxed["layers"] and body["cells"] == boxed["cells"]
    assert body["area"] == {"type": "Polygon", "bbox": list(BOX)} and "bbox" not in body


def test_an_area_holds_the_cells_whose_centre_is_inside_it_and_not_in_its_holes(client):
    lonlat = np.asarray(Store(client.app.state.service.store.path).levels[6].arrays.lonlat)
    lon, lat = lonlat.T
    # A triangle (0 E, 40 N), (20 E, 40 N), (0 E, 55 N): inside where both legs' sides hold.
    triangle = {"type": "Polygon", "coordinates": [[[0, 40], [20, 40], [0, 55], [0, 40]]]}
    inside = (lon > 0) & (lat > 40) & ((lon / 20) + ((lat - 40) / 15) < 1)
    assert post_area(client, triangle, "application/json").json()["cells"] == inside.sum() > 0
    hole = [[2, 42], [2, 46], [8, 46], [8, 42], [2, 42]]  # a hole wound clockwise, as RFC 7946 has them
    holed = {"type": "Polygon", "coordinates": [square(*BOX), hole]}
    in_hole = (lon > 2) & (lon < 8) & (lat > 42) & (lat < 46)
    in_box = (lon >= BOX[0]) & (lon <= BOX[2]) & (lat >= BOX[1]) & (lat <= BOX[3])
    assert post_area(client, holed).json()["cells"] == (in_box & ~in_hole).sum() < in_box.sum()
    boxes = [(-10, 30, 0, 40), (10, 50, 30, 60)]
    parts = [square(*b) for b in boxes]
    each = [((lon >= w) & (lon <= e) & (lat >= s) & (lat <= n)).sum() for w, s, e, n in boxes]
    multi = {"type": "MultiPolygon", "coordinates": [[parts[0]], [parts[1]]]}
    collection = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"name": str(i)}, "geometry": {"type": "Polygon", "coordinates": [p]}}
            for i, p in enumerate(parts)
        ],
    }
    for area in (multi, collection):
        answer = post_area(client, area).json()
        assert answer["cells"] == sum(each) and answer["area"]["type"] == "MultiPolygon"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "said"),
    [
        (b'{"type": "Polygon"}', "text/plain", 415, "send the area as application/geo+json or application/json"),
        (b'{"type": "Polygon", "coordinates": [[[0, 40], [20, 40]', "application/json", 422, "not valid JSON"),
        (json.dumps({"type": "Point", "coordinates": [0, 0]}).encode(), None, 422, "a Point has no area"),
        (
            json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}).encode(),
            None,
            422,
            "Self-intersection",
        ),
        (
            json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [200, 1], [1, 0], [0, 0]]]}).encode(),
            None,
            422,
            "not [200, 1]",
        ),
        (
            json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}).encode(),
            None,
            422,
            "at least 4 coordinates",
        ),
        (json.dumps({"type": "FeatureCollection", "features": []}).encode(), None, 422, "non-empty 'features' list"),
        (json.dumps({"type": "Feature", "geometry": None}).encode(), None, 422, "a Feature's geometry must be"),
        (b"[" * 20 + b"]" * 20, None, 422, "nests deeper than 8 levels"),
        (
            json.dumps({"type": "Polygon", "coordinates": [square(0, 40, 1, 41) * 20001]}).encode(),
            None,
            422,
            "over 100000 vertices",
        ),
        (b" " * (4 * 1024 * 1024 + 1), None, 413, "the limit is 4 MB"),
    ],
)
def test_a_bad_area_is_refused_in_a_sentence(client, body, content_type, status, said):
    answer = client.post(
        "/statistics",
        params={"q": TEXT},
        content=body,
        headers={"Content-Type": content_type or "application/geo+json"},
    )
    assert answer.status_code == status and said in answer.json()["detail"], answer.text[:300]


def test_an_area_with_a_bbox_or_outside_the_store_is_refused(client):
    area = {"type": "Polygon", "coordinates": [square(*BOX)]}
    both = post_area(client, area, bbox="0,40,20,55")
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    away = post_area(client, {"type": "Polygon", "coordinates": [square(-150, -60, -140, -50)]})
    assert away.status_code == 404 and "has its centre in the area" in away.json()["detail"]


@pytest.mark.slow  # a server of its own
def test_the_statistics_benchmark_runs_on_a_store(bundle_path, store_path, tmp_path, capsys):
    out = tmp_path / "latency.json"
    args = ["--bundle", str(bundle_path), "--store", str(store_path), "--repeat", "1", "--json", str(out)]
    assert statistics_latency.main(args) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert json.loads(capsys.readouterr().out) == result and {"command", "commit", "date", "machine"} <= set(result)
    measures = result["measures"]
    assert measures["POST, 99999 vertices"]["bytes"] > measures["POST, 100 vertices"]["bytes"]
    assert all(v > 0 for case in measures.values() for k, v in case.items() if k.endswith("_s"))


def test_an_area_over_the_cells_limit_is_named_an_area(bundle_path, store_path):
    with make_client(bundle_path, store_path, max_search_cells=5) as small:
        boxed = small.get("/statistics", params={"q": TEXT, "level": 6, "bbox": ",".join(map(str, BOX))})
        assert boxed.status_code == 422 and "pass a smaller bbox or a coarser level=" in boxed.json()["detail"]
        area = post_area(small, {"type": "Polygon", "coordinates": [square(*BOX)]})
        detail = area.json()["detail"]
        assert area.status_code == 422 and "the area's box holds" in detail and "pass a smaller area" in detail

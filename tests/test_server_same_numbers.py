"""The same number wherever the server reports it: a cell's score, contrast and S under one
query and metadata read the same, bit for bit, in /point's `score`, its hour and month profiles
and its `by_source` entry, and in /search's features. They were computed by separate paths (a
fusion of the profiles' 36 rows against the cell's own; BLAS sums a row's dot product in an
order that depends on how many rows share the batch) and differed by up to ~5e-7."""

import itertools

import pytest

from tests.server_support import make_client

PLACES = [(10.5, 47.2), (12.4, 43.9), (16.0, 45.5), (8.2, 53.1)]  # the Alps, Italy, Croatia, the North Sea coast
QUERIES = ["birdsong", "traffic noise"]
METAS = [{}, {"hour": 3}, {"hour": 17, "month": 6}, {"month": 11}]


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


@pytest.fixture(scope="module")
def sources(client) -> list[str | None]:
    return [None, *(entry["value"] for entry in client.get("/metadata").json()["source"]["values"])]


def test_point_reports_the_requested_hour_month_and_source_as_its_score(client, sources):
    checked = 0
    for (lon, lat), q, meta, source in itertools.product(PLACES, QUERIES, METAS, sources):
        params = {"q": q, **meta, **({"source": source} if source else {})}
        r = client.get(f"/point/{lon},{lat}", params=params)
        assert r.status_code == 200, r.text
        point = r.json()
        same = [next(entry for entry in point["by_source"] if entry["source"] == source)]
        if "hour" in meta:
            same.append(point["hours"][meta["hour"]])
        if "month" in meta:
            same.append(point["months"][meta["month"] - 1])
        for entry in same:
            assert (entry["score"], entry["uncertainty"]) == (point["score"], point["uncertainty"]), (params, entry)
            checked += 1
        assert same[0]["contrast"] == point["contrast"]
    assert checked >= len(PLACES) * len(QUERIES) * len(sources) * 6


@pytest.mark.parametrize("rank_by", ["score", "contrast"])
def test_a_searched_cell_reads_the_same_at_its_point(client, rank_by):
    for q, meta in itertools.product(QUERIES, [{}, {"month": 11}]):
        r = client.get("/search", params={"q": q, "k": 20, "rank_by": rank_by, **meta})
        assert r.status_code == 200, r.text
        features = r.json()["features"]
        assert len(features) == 20
        for feature in features:
            lon, lat = feature["geometry"]["coordinates"]
            found = feature["properties"]
            point = client.get(f"/point/{lon},{lat}", params={"q": q, "level": found["level"], **meta}).json()
            assert (point["cell"]["lon"], point["cell"]["lat"]) == (lon, lat)
            for name in ("score", "contrast", "uncertainty"):
                assert point[name] == found[name], (q, meta, rank_by, name, point[name], found[name])

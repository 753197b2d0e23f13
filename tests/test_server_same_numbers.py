"""The same number wherever the server reports it: a cell's score, contrast and S under one
query and metadata read the same, bit for bit, in /point's `score`, its hour and month profiles
and its `by_source` entry, and in /search's features. They were computed by separate paths (a
fusion of the profiles' 36 rows against the cell's own; BLAS sums a row's dot product in an
order that depends on how many rows share the batch) and differed by up to ~5e-7."""

import itertools

import pytest

from cli.main import main
from tests.conftest import FIXTURE_BBOX, precompute_args
from tests.server_support import make_client
from tests.test_imagery_audit import antimeridian, source  # noqa: F401  (fixtures a test uses)

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
    for (lon, lat), q, meta, recorder in itertools.product(PLACES, QUERIES, METAS, sources):
        params = {"q": q, **meta, **({"source": recorder} if recorder else {})}
        r = client.get(f"/point/{lon},{lat}", params=params)
        assert r.status_code == 200, r.text
        point = r.json()
        same = [next(entry for entry in point["by_source"] if entry["source"] == recorder)]
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
def test_a_searched_cell_reads_the_same_at_its_point(client, sources, rank_by):
    for q, meta in itertools.product(QUERIES, [{}, {"month": 11}, {"hour": 5, "source": sources[1]}]):
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


@pytest.fixture(scope="module")
def fused_client(bundle_path, imagery_path, tmp_path_factory):
    """The fixture's levels 5 and 6 with the store's hourly and monthly fusions at both."""
    from precompute.run import run
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery

    out = tmp_path_factory.mktemp("fused") / "store"
    run(Imagery(imagery_path), Bundle(bundle_path), [5, 6], FIXTURE_BBOX, out, fusion_levels=(5, 6), progress=False)
    return make_client(bundle_path, out)


def test_a_profile_entry_reads_as_the_point_of_the_hour_or_month_the_store_holds(fused_client, monkeypatch):
    """hours[h] of a /point without an hour is the /point of hour h where the store holds that
    fusion: the profiles fused every hour afresh, while /point?hour=h (and tiles, /search) read the
    store's. The fusion graph's numbers depend on the batch beside a cell (on the demo world a
    cell fused among the profiles' 36 rows and alone differ in S by up to 6e-8, and 32 of 144
    entries read otherwise than the /point of their hour or month at level 6); here a fusion
    that adds the batch's size to the log-variances makes that plain."""
    bundle = fused_client.app.state.service.engine.bundle
    fuse = bundle.fuse

    def batch_dependent_fuse(sat, encoded):
        mu, logvar = fuse(sat, encoded)
        return mu, logvar + 1e-3 * len(sat)

    monkeypatch.setattr(bundle, "fuse", batch_dependent_fuse)
    for (lon, lat), level in itertools.product(PLACES[:2], (5, 6)):
        params = {"q": "birdsong", "level": level}
        point = fused_client.get(f"/point/{lon},{lat}", params=params).json()
        entries = [("hour", h, point["hours"][h]) for h in range(24)]
        entries += [("month", m, point["months"][m - 1]) for m in range(1, 13)]
        for name, value, entry in entries:
            alone = fused_client.get(f"/point/{lon},{lat}", params={**params, name: value}).json()
            assert (entry["score"], entry["uncertainty"]) == (alone["score"], alone["uncertainty"]), (
                level,
                name,
                value,
            )


def test_longitude_180_and_minus_180_name_one_cell(antimeridian, bundle_path, tmp_path):  # noqa: F811
    """180 and -180 are one meridian: /point took the cell west of it for 180 (the last column)
    and the cell east of it for -180, where every other meridian between cells belongs to the
    cell east of it."""
    _, _, utm = antimeridian
    out = tmp_path / "store"
    assert main(precompute_args(utm, bundle_path, "5", out, "--quiet")) == 0
    client = make_client(bundle_path, out)
    for lat in (45.0, 50.5):
        east, west = (client.get(f"/point/{lon},{lat}", params={"q": "birdsong"}).json() for lon in (180, -180))
        assert east["cell"] == west["cell"] and east["cell"]["lon"] < -170, (east, west)  # east of the meridian
        assert (east["score"], east["uncertainty"]) == (west["score"], west["uncertainty"])
    # and a meridian between two cells belongs to the cell east of it, as 180 now does
    assert client.get("/point/168.75,45", params={"q": "birdsong"}).json()["cell"]["lon"] == 174.375


def profile_entries(point: dict) -> list[tuple[str, int, dict]]:
    """(name, value, entry) of each entry of a /point's hour and month profiles."""
    return [("hour", h, point["hours"][h]) for h in range(24)] + [
        ("month", m, point["months"][m - 1]) for m in range(1, 13)
    ]


def assert_reads_as_its_point(client, params: dict, entry: dict, name: str, value: int) -> None:
    alone = client.get(f"/point/{PLACES[0][0]},{PLACES[0][1]}", params={**params, name: value}).json()
    assert (entry["score"], entry["uncertainty"]) == (alone["score"], alone["uncertainty"]), (params, name, value)


@pytest.mark.parametrize("meta", [{}, {"month": 11}, {"hour": 3}, {"hour": 17, "month": 6}])
def test_every_profile_entry_reads_as_the_point_of_its_hour_or_month(bundle_path, store_path, sources, meta):
    """Under a source, or an hour with a month the store holds no fusion of, the profiles fused
    the cell's 36 hours and months in one graph run; the fusion graph keeps only the metadata
    tokens some row of its batch holds, so a row of no hour fused beside rows of an hour read
    otherwise than alone (months[m] of /point?source=s against /point?source=s&month=m). Each
    profile is now fused in a run of its own, rows of one kind, and the /point of an hour reads
    its row of that run."""
    client = make_client(bundle_path, store_path)
    lon, lat = PLACES[0]
    for recorder in sources:
        params = {"q": "birdsong", **meta, **({"source": recorder} if recorder else {})}
        point = client.get(f"/point/{lon},{lat}", params=params).json()
        for name, value, entry in profile_entries(point):
            assert_reads_as_its_point(client, params, entry, name, value)


def test_a_profile_entry_is_the_point_of_its_hour_by_one_computation(bundle_path, store_path, sources, monkeypatch):
    """hours[h] and /point?hour=h (under a source, or a month, the store holds no fusion of), the
    months of a /point of no hour and /point?month=m, and each by_source entry and the /point of
    that source come from one fusion: equal even under a fusion graph whose every number depends
    on its batch (here the batch's size is added to the log-variances, as in
    test_a_profile_entry_reads_as_the_point_of_the_hour_or_month_the_store_holds)."""
    client = make_client(bundle_path, store_path)
    bundle = client.app.state.service.engine.bundle
    fuse = bundle.fuse
    monkeypatch.setattr(
        bundle, "fuse", lambda sat, encoded: (lambda mu, lv: (mu, lv + 1e-3 * len(sat)))(*fuse(sat, encoded))
    )
    lon, lat = PLACES[0]
    for recorder, meta in itertools.product(sources, [{}, {"month": 5}, {"hour": 9}]):
        params = {"q": "birdsong", **meta, **({"source": recorder} if recorder else {})}
        point = client.get(f"/point/{lon},{lat}", params=params).json()
        for name, value, entry in profile_entries(point):
            if name == "hour" or "hour" not in meta:  # months of an hour: one run of their own
                assert_reads_as_its_point(client, params, entry, name, value)
        for entry in point["by_source"]:
            other = {k: v for k, v in params.items() if k != "source"} | (
                {"source": entry["source"]} if entry["source"] else {}
            )
            alone = client.get(f"/point/{lon},{lat}", params=other).json()
            assert (entry["score"], entry["uncertainty"]) == (alone["score"], alone["uncertainty"]), (params, entry)

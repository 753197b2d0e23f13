"""REST: /search ranks cells exactly (FAISS for default metadata, a rescoring over fused cells
otherwise: the whole level, or the engine's candidates on a large level) and /point returns a
place's score with its 24-hour and 12-month profiles."""

import json

import mercantile
import numpy as np
import pytest

from runtime.metadata import encode_metadata
from runtime.scoring import csd, match_probability, uncertainty
from runtime.tiles import demorton, morton
from server import engine as engine_module
from server.engine import CellEmbeddings, QueryMetadata
from store.reader import Store
from tests.conftest import FIXTURE_BBOX
from tests.server_support import make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def cells_under(client, level: int, hour=None, month=None) -> tuple[np.ndarray, np.ndarray]:
    """Every cell's (mu, S) under the metadata, computed here independently of the server."""
    service = client.app.state.service
    bundle, arrays = service.bundle, Store(service.store.path).levels[level].arrays
    if hour is None and month is None:
        return np.asarray(arrays.mu, np.float32), np.asarray(arrays.s)
    lonlat = arrays.lonlat
    meta = encode_metadata(len(arrays.s), lat=lonlat[:, 1], lon=lonlat[:, 0], hour=hour, month=month)
    mu, logvar = bundle.fuse(np.asarray(arrays.sat, np.float32), meta)
    return mu.astype(np.float16).astype(np.float32), uncertainty(logvar)


def brute_force(client, level: int, text: str, hour=None, month=None) -> tuple[np.ndarray, np.ndarray]:
    """Every cell's match probability and S, computed here independently of the server."""
    bundle = client.app.state.service.bundle
    mu_q, logvar_q = bundle.embed_texts([text])
    mu, s = cells_under(client, level, hour, month)
    a, b = bundle.calibration
    return match_probability(csd(mu_q[0], uncertainty(logvar_q)[0], mu, s), a, b), s


@pytest.mark.parametrize("hour", [None, 6])
def test_search_returns_the_true_top_k(client, hour):
    params = {"q": "waves on the open ocean", "k": 7, "level": 5, **({"hour": hour} if hour is not None else {})}
    answer = client.get("/search", params=params)
    assert answer.headers["content-type"] == "application/geo+json"
    body = answer.json()
    assert body["type"] == "FeatureCollection" and body["properties"]["level"] == 5
    scores = [f["properties"]["score"] for f in body["features"]]
    assert len(scores) == 7 and scores == sorted(scores, reverse=True)
    truth, s = brute_force(client, 5, "waves on the open ocean", hour)
    assert np.allclose(scores, np.sort(truth)[::-1][:7], atol=1e-4)
    first = body["features"][0]
    assert first["geometry"]["type"] == "Point" and len(first["bbox"]) == 4
    assert first["properties"]["uncertainty"] == pytest.approx(float(s[np.argmax(truth)]), rel=1e-3)


def scores_of(answer) -> list[float]:
    return [f["properties"]["score"] for f in answer.json()["features"]]


def test_search_under_new_metadata_ranks_candidates_and_exact_ranks_all(monkeypatch, bundle_path, store_path):
    """Under an hour+month the store does not hold, /search ranks the engine's candidates exactly
    (here the best 8 by the stored default ranking of level 6's cells); `exact=true` ranks every
    cell, and its fused level then serves later searches under that metadata whole."""
    monkeypatch.setattr(engine_module, "SEARCH_CANDIDATES", 8)
    monkeypatch.setattr(engine_module, "CANDIDATES_PER_K", 1)
    text, meta = "a river in the forest", {"hour": 6, "month": 3}
    params = {"q": text, "k": 3, "level": 6, **meta}
    with make_client(bundle_path, store_path) as client:
        service = client.app.state.service
        level = service.store.levels[6]
        truth, _ = brute_force(client, 6, text, **meta)
        query = service.engine.embed_text(text)
        candidates = service.engine.candidates(level, QueryMetadata(**meta), query, 8, len(level))
        assert len(candidates) == 8 and len(level) > 16

        near = client.get("/search", params=params)
        assert near.status_code == 200
        assert near.json()["properties"]["ranked"] == 8 and near.json()["properties"]["cells"] == len(level)
        assert np.allclose(scores_of(near), np.sort(truth[candidates])[::-1][:3], atol=1e-4)
        fusions = service.stats["fusions"]
        assert client.get("/search", params=params).json() == near.json()
        assert service.stats["fusions"] == fusions, "the candidates' fusion is cached"

        exact = client.get("/search", params={**params, "exact": "true"})
        assert exact.json()["properties"]["ranked"] == len(level)
        assert np.allclose(scores_of(exact), np.sort(truth)[::-1][:3], atol=1e-4)

        fusions = service.stats["fusions"]
        again = client.get("/search", params={**params, "q": "wind over the sea"})
        assert again.json()["properties"]["ranked"] == len(level), "the fused level is reused"
        assert service.stats["fusions"] == fusions


def test_a_level_over_the_search_limit_ranks_candidates_and_refuses_exact(monkeypatch, bundle_path, store_path):
    """Over SOUNDSCAPE_MAX_SEARCH_CELLS no ranking scans the level: its index names the
    candidates, and exact=true, which would fuse every cell, is a 422 that says what to do."""
    monkeypatch.setattr(engine_module, "SEARCH_CANDIDATES", 8)
    monkeypatch.setattr(engine_module, "CANDIDATES_PER_K", 1)
    params = {"q": "a river in the forest", "k": 3, "level": 6, "hour": 6, "month": 3}
    with make_client(bundle_path, store_path, max_search_cells=40) as client:
        assert len(client.app.state.service.store.levels[6]) > 40
        near = client.get("/search", params=params)
        assert near.status_code == 200 and near.json()["properties"]["ranked"] == 8
        exact = client.get("/search", params={**params, "exact": "true"})
        assert exact.status_code == 422 and "leave exact= out" in exact.json()["detail"]


def centres_within(client, level: int, west, south, east, north) -> np.ndarray:
    """Rows whose centre lies in the box, read here from the store's own lonlat."""
    lon, lat = np.asarray(Store(client.app.state.service.store.path).levels[level].arrays.lonlat).T
    inside_lon = (lon >= west) | (lon <= east) if west > east else (lon >= west) & (lon <= east)
    return np.flatnonzero(inside_lon & (lat >= south) & (lat <= north))


@pytest.mark.parametrize("hour", [None, 6])
def test_a_search_within_a_bbox_ranks_every_cell_there_and_no_other(client, hour):
    box, text = (0.0, 40.0, 20.0, 55.0), "birdsong in a forest"
    params = {"q": text, "k": 1000, "level": 5, "bbox": ",".join(map(str, box)), **({"hour": hour} if hour else {})}
    answer = client.get("/search", params=params)
    body = answer.json()
    rows = centres_within(client, 5, *box)
    assert 0 < len(rows) < len(Store(client.app.state.service.store.path).levels[5].arrays.s)
    assert body["properties"]["ranked"] == len(rows) == len(body["features"])
    assert body["properties"]["bbox"] == list(box)
    for feature in body["features"]:
        lon, lat = feature["geometry"]["coordinates"]
        assert box[0] <= lon <= box[2] and box[1] <= lat <= box[3]
    truth, _ = brute_force(client, 5, text, hour)
    assert np.allclose(scores_of(answer), np.sort(truth[rows])[::-1], atol=1e-4)


@pytest.mark.parametrize("hour, bbox", [(None, None), (6, None), (None, "0,40,20,55")])
def test_search_by_contrast_returns_the_cells_the_contrast_layer_draws_brightest(client, hour, bbox):
    text, engine = "market", client.app.state.service.engine
    given = {"q": text, "k": 20, "level": 6, "rank_by": "contrast", "hour": hour, "bbox": bbox}
    params = {k: v for k, v in given.items() if v is not None}
    body = client.get("/search", params=params).json()
    mu, s = cells_under(client, 6, hour)
    contrast = engine.values(CellEmbeddings(mu, s), "contrast", engine.embed_text(text))
    rows = centres_within(client, 6, 0, 40, 20, 55) if bbox else np.arange(len(s))
    found = [f["properties"]["contrast"] for f in body["features"]]
    assert body["properties"]["rank_by"] == "contrast" and found == sorted(found, reverse=True)
    assert np.allclose(found, np.sort(contrast[rows])[::-1][:20], atol=1e-4)
    by_score = client.get("/search", params={**params, "rank_by": "score"}).json()["features"]
    assert [f["properties"]["contrast"] for f in by_score] != found  # the score ranks other cells first


def test_search_by_contrast_under_a_source_ranks_the_whole_level(monkeypatch, bundle_path, store_path):
    """A source moves the contrast far from the stored rankings that name candidates (the demo's
    church bells under wildlife recordings: none of the exact top 10), so /search ranks every cell
    there; by score, or by contrast without a source, it ranks candidates."""
    monkeypatch.setattr(engine_module, "SEARCH_CANDIDATES", 8)
    monkeypatch.setattr(engine_module, "CANDIDATES_PER_K", 1)
    with make_client(bundle_path, store_path) as client:
        cells = len(client.app.state.service.store.levels[6])
        source = client.app.state.service.bundle.sources.names[0]
        params = {"q": "church bells ringing", "k": 3, "level": 6, "hour": 6, "month": 3}

        def ranked(**extra) -> int:
            return client.get("/search", params={**params, **extra}).json()["properties"]["ranked"]

        assert ranked(rank_by="score", source=source) < cells and ranked(rank_by="contrast") < cells
        assert ranked(rank_by="contrast", source=source) == cells  # last: a fused level serves later searches


def test_a_bbox_search_takes_its_cells_from_a_fused_level_kept_by_an_earlier_search(bundle_path, store_path):
    params = {"q": "rain", "k": 5, "level": 6, "hour": 6, "month": 3}
    with make_client(bundle_path, store_path) as client:
        service = client.app.state.service
        whole = client.get("/search", params={**params, "exact": "true"}).json()  # fuses and keeps level 6
        fusions = service.stats["fusions"]
        boxed = client.get("/search", params={**params, "bbox": "-180,-90,180,90"}).json()
        assert service.stats["fusions"] == fusions, "no fusion: the kept level has every cell of the box"
        assert boxed["features"] == whole["features"]


def test_a_bbox_across_the_antimeridian_and_one_without_cells(client):
    across = client.get("/search", params={"q": "rain", "k": 1000, "level": 4, "bbox": "30,28,-170,62"}).json()
    rows = centres_within(client, 4, 30, 28, -170, 62)
    assert across["properties"]["ranked"] == len(rows) > 0
    assert all(f["geometry"]["coordinates"][0] >= 30 for f in across["features"])
    empty = client.get("/search", params={"q": "rain", "bbox": "-150,-60,-140,-50"})
    assert empty.status_code == 200 and empty.json()["features"] == [] and empty.json()["properties"]["ranked"] == 0


def test_a_bbox_over_the_search_limit_is_a_422_that_says_what_to_do(bundle_path, store_path):
    with make_client(bundle_path, store_path, max_search_cells=40) as client:
        answer = client.get("/search", params={"q": "rain", "level": 6, "bbox": "-12,28,36,62"})
        assert answer.status_code == 422 and "pass a smaller bbox or a coarser level=" in answer.json()["detail"]
        small = client.get("/search", params={"q": "rain", "level": 6, "bbox": "0,40,12,50"})
        assert small.status_code == 200 and 0 < small.json()["properties"]["ranked"] <= 40
        # A box far over the limit is refused from a count of its inner tiles' cells, before its rows are listed.
        world = client.get("/search", params={"q": "rain", "level": 6, "bbox": "-180,-90,180,90"})
        assert world.status_code == 422 and "the bbox holds at least " in world.json()["detail"]


def test_candidates_are_the_default_best_the_children_above_and_the_additive_proxy_best(
    bundle_path, imagery_path, tmp_path
):
    """A level without stored fusions takes its own default ranking's best, the children of the
    best cells one level up under each of that level's stored hourly and monthly fusions, and the
    best by the additive proxy: the default score plus the score changes the hour alone and the
    month alone make at the cell's parent (none where the store holds no parent). Over the scan
    limit, the level's index and the children above only."""
    from precompute.run import run
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery
    from server.engine import PARENT_SHARE, PROXY_SHARE, Engine, children

    run(
        Imagery(imagery_path),
        Bundle(bundle_path),
        [5, 6],
        FIXTURE_BBOX,
        tmp_path / "s",
        fusion_levels=(5,),
        progress=False,
    )
    engine = Engine(Bundle(bundle_path), Store(tmp_path / "s"))
    above, level = engine.store.levels[5], engine.store.levels[6]
    count = 12

    def scores(cells):
        return cells.mu.astype(np.float32) @ query.mu - 0.5 * cells.s

    x, y = demorton(np.asarray(level.arrays.codes))
    px, py = demorton(np.asarray(above.arrays.codes))
    parent_of = {(int(a), int(b)): row for row, (a, b) in enumerate(zip(px, py, strict=True))}
    rows_above = np.array([parent_of.get((int(a) >> 1, int(b) >> 1), -1) for a, b in zip(x, y, strict=True)])
    proxy_added = 0  # searches where the proxy names cells the other rankings leave out
    for text, hour, month in [("birds at dawn", 5, 6), ("traffic in a city", 22, 1), ("waves on a beach", 13, 9)]:
        query = engine.embed_text(text)
        meta = QueryMetadata(hour=hour, month=month)
        engine._parents.clear()
        found = set(engine.candidates(level, meta, query, count, len(level)).tolist())
        default_above = scores(engine.stored(above, np.arange(len(above)), QueryMetadata()))
        expected = set(engine.top_k(level, None, query, count)[0].tolist())
        proxy = scores(engine.stored(level, np.arange(len(level)), QueryMetadata()))
        for alone in (QueryMetadata(hour=hour), QueryMetadata(month=month)):
            fused = engine.stored(above, np.arange(len(above)), alone)
            parents = engine.top_k(above, fused, query, round(count * PARENT_SHARE))[0]
            kids = children(level, np.asarray(above.arrays.codes[parents]))
            assert len(kids) > 0 and set(rows_above[kids].tolist()) == set(parents.tolist())
            expected |= set(kids.tolist())
            proxy += np.where(rows_above >= 0, (scores(fused) - default_above)[rows_above], 0.0)  # no parent: none
        proxy_best = set(np.argsort(-proxy, kind="stable")[: round(count * PROXY_SHARE)].tolist())
        proxy_added += not proxy_best <= expected
        assert found == expected | proxy_best and len(found) < len(level)

        engine._parents.clear()  # over the scan limit the level is not scanned: no proxy, no parent map
        over = engine.candidates(level, meta, query, count, scan_limit=len(above))
        assert set(over.tolist()) == expected and not engine._parents
    assert proxy_added > 0, "in some search the proxy names cells the other rankings leave out"


def test_default_ranking_reads_a_flat_index_as_the_stored_embeddings_rank(bundle_path, store_path):
    """Engine.default_ranking scores every cell as `ranking` scores the stored embeddings: from a
    flat index's float32 vectors, or from the embeddings where the level's index is IVF."""
    from runtime.bundle import Bundle
    from server.engine import Engine
    from store.index import build_index

    engine = Engine(Bundle(bundle_path), Store(store_path))
    level = engine.store.levels[6]
    query = engine.embed_text("a river in the forest")
    stored = engine.ranking(engine.stored(level, np.arange(len(level)), QueryMetadata()), query)
    assert np.allclose(engine.default_ranking(level, query), stored, atol=1e-6)
    level._index, info = build_index(np.asarray(level.arrays.mu), np.asarray(level.arrays.s), flat_max=1)
    assert info["kind"].startswith("ivf")
    assert np.array_equal(engine.default_ranking(level, query), stored)


def test_the_search_recall_benchmark_runs_on_a_store(monkeypatch, bundle_path, store_path, tmp_path, capsys):
    """benchmarks/search_recall.py on the fixture: candidate searches are counted against the
    exact top k, and a search that ranked the whole level found all of it; --prompts takes a
    file of other prompts."""
    from benchmarks import search_recall

    monkeypatch.setattr(engine_module, "SEARCH_CANDIDATES", 8)
    monkeypatch.setattr(engine_module, "CANDIDATES_PER_K", 1)
    out = tmp_path / "recall.json"
    argv = ["--bundle", str(bundle_path), "--store", str(store_path), "--level", "6", "--pairs", "2"]
    assert search_recall.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    runs = result["runs"]
    assert len(runs) == len(search_recall.PROMPTS) * len(result["cases"]) * len(search_recall.KS)
    assert any(r["ranked"] < result["cells"] for r in runs), "small k ranks candidates"
    assert all(r["recall"] == 1 and r["max_score_difference"] == 0 for r in runs if r["ranked"] == result["cells"])
    assert all(0 <= r["recall"] <= 1 for r in runs) and "| k | searches |" in capsys.readouterr().out

    assert search_recall.main([*argv, "--rank-by", "contrast", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["rank_by"] == "contrast" and any(r["ranked"] < result["cells"] for r in result["runs"])
    assert all(
        r["recall"] == 1 and r["max_score_difference"] == 0 for r in result["runs"] if r["ranked"] == result["cells"]
    )

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a waterfall\n\nowls hooting at night\n", encoding="utf-8")
    assert search_recall.main([*argv, "--pairs", "1", "--prompts", str(prompts), "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["prompts"] == ["a waterfall", "owls hooting at night"]
    assert {r["prompt"] for r in result["runs"]} == set(result["prompts"])


def test_point_profiles_agree_with_the_point_score(client):
    at_six = client.get("/point/10.5,47.2", params={"q": "birdsong", "hour": 6}).json()
    assert at_six["cell"]["level"] == 6 and at_six["hour"] == 6
    assert [h["hour"] for h in at_six["hours"]] == list(range(24))
    assert [m["month"] for m in at_six["months"]] == list(range(1, 13))
    assert at_six["hours"][6]["score"] == at_six["score"]  # bit for bit (tests/test_server_same_numbers.py)
    in_may = client.get("/point/10.5,47.2", params={"q": "birdsong", "month": 5}).json()
    assert in_may["months"][4]["score"] == in_may["score"]
    scores = [h["score"] for h in at_six["hours"]]
    assert np.ptp(scores) > 0, "the hour changes the score"
    unknown = client.get("/point/10.5,47.2", params={"q": "birdsong"}).json()
    truth, s = brute_force(client, 6, "birdsong")
    tile = mercantile.tile(10.5, 47.2, 6)
    row = int(np.flatnonzero(client.app.state.service.store.levels[6].arrays.codes == morton(tile.x, tile.y))[0])
    assert unknown["score"] == pytest.approx(float(truth[row]), abs=1e-5)
    assert unknown["uncertainty"] == pytest.approx(float(s[row]), rel=1e-5)


@pytest.mark.parametrize("cells", [0, 1, 16, 17, 95, 96, 200, 1000])
@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_split_parts_are_in_order_nearly_equal_and_not_too_small(monkeypatch, cells, parts):
    monkeypatch.setattr(engine_module, "SMALLEST_PART", 16)
    index = np.arange(cells) * 3
    runs = engine_module.split_parts(index, parts)
    assert np.array_equal(np.concatenate(runs), index)
    assert 1 <= len(runs) <= parts
    assert len(runs) == 1 or min(len(r) for r in runs) >= 16
    assert max(len(r) for r in runs) - min(len(r) for r in runs) <= 1


def test_a_large_fusion_over_several_threads_equals_one_serial_fusion(monkeypatch, bundle_path, store_path):
    monkeypatch.setattr(engine_module, "FUSE_BATCH", 5)  # parts cut across graph runs of the serial fusion
    monkeypatch.setattr(engine_module, "SMALLEST_PART", 4)
    with make_client(bundle_path, store_path, fusion_threads=3) as client:
        service = client.app.state.service
        level = service.store.levels[service.store.maxlevel]
        index = np.arange(len(level.arrays.s))
        meta = QueryMetadata(hour=5, month=7)
        parts = engine_module.split_parts(index, 3)
        assert len(parts) == 3 and any(len(p) % 5 for p in parts[:-1]), "a cut inside a serial batch"
        before = service.stats["fusions"]
        parallel = client.portal.call(service.fuse, level, index, meta, True)
        serial = service.engine.fuse(level, index, meta)
        assert service.stats["fusions"] == before + 2  # the split fusion counts once
        assert np.array_equal(parallel.mu, serial.mu) and np.array_equal(parallel.s, serial.s)

"""REST: /search ranks cells exactly (FAISS for default metadata, a rescoring over fused cells
otherwise) and /point returns a place's score with its 24-hour and 12-month profiles."""

import mercantile
import numpy as np
import pytest

from runtime.metadata import encode_metadata
from runtime.scoring import csd, match_probability, uncertainty
from runtime.tiles import morton
from server import engine as engine_module
from server.engine import QueryMetadata
from store.reader import Store
from tests.server_support import make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def brute_force(client, level: int, text: str, hour=None) -> tuple[np.ndarray, np.ndarray]:
    """Every cell's match probability, computed here independently of the server."""
    service = client.app.state.service
    bundle, arrays = service.bundle, Store(service.store.path).levels[level].arrays
    mu_q, logvar_q = bundle.embed_texts([text])
    if hour is None:
        mu, s = np.asarray(arrays.mu, np.float32), np.asarray(arrays.s)
    else:
        meta = encode_metadata(len(arrays.s), lat=arrays.lonlat[:, 1], lon=arrays.lonlat[:, 0], hour=hour)
        mu, logvar = bundle.fuse(np.asarray(arrays.sat, np.float32), meta)
        mu, s = mu.astype(np.float16).astype(np.float32), uncertainty(logvar)
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


def test_point_profiles_agree_with_the_point_score(client):
    at_six = client.get("/point/10.5,47.2", params={"q": "birdsong", "hour": 6}).json()
    assert at_six["cell"]["level"] == 6 and at_six["hour"] == 6
    assert [h["hour"] for h in at_six["hours"]] == list(range(24))
    assert [m["month"] for m in at_six["months"]] == list(range(1, 13))
    assert at_six["hours"][6]["score"] == pytest.approx(at_six["score"], abs=1e-5)
    in_may = client.get("/point/10.5,47.2", params={"q": "birdsong", "month": 5}).json()
    assert in_may["months"][4]["score"] == pytest.approx(in_may["score"], abs=1e-5)
    scores = [h["score"] for h in at_six["hours"]]
    assert np.ptp(scores) > 0, "the hour changes the score"
    unknown = client.get("/point/10.5,47.2", params={"q": "birdsong"}).json()
    truth, s = brute_force(client, 6, "birdsong")
    tile = mercantile.tile(10.5, 47.2, 6)
    row = int(np.flatnonzero(client.app.state.service.store.levels[6].arrays.codes == morton(tile.x, tile.y))[0])
    assert unknown["score"] == pytest.approx(float(truth[row]), abs=1e-5)
    assert unknown["uncertainty"] == pytest.approx(float(s[row]), rel=1e-5)


@pytest.mark.parametrize("cells", [0, 1, 16, 17, 95, 96, 200])
@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_split_batches_keeps_whole_batches_in_order(monkeypatch, cells, parts):
    monkeypatch.setattr(engine_module, "FUSE_BATCH", 16)
    index = np.arange(cells) * 3
    runs = engine_module.split_batches(index, parts)
    assert np.array_equal(np.concatenate(runs), index)
    assert 1 <= len(runs) <= max(1, min(parts, -(-cells // 16)))
    assert all(len(r) % 16 == 0 for r in runs[:-1]), "only the last run may end in a partial batch"


def test_a_large_fusion_over_several_threads_equals_one_serial_fusion(monkeypatch, bundle_path, store_path):
    monkeypatch.setattr(engine_module, "FUSE_BATCH", 4)  # many batches from the test store's finest level
    with make_client(bundle_path, store_path, fusion_threads=3) as client:
        service = client.app.state.service
        level = service.store.levels[service.store.maxlevel]
        index = np.arange(len(level.arrays.s))
        meta = QueryMetadata(hour=5, month=7)
        assert len(engine_module.split_batches(index, 3)) == 3
        before = service.stats["fusions"]
        parallel = client.portal.call(service.fuse, level, index, meta, True)
        serial = service.engine.fuse(level, index, meta)
        assert service.stats["fusions"] == before + 2  # the split fusion counts once
        assert np.array_equal(parallel.mu, serial.mu) and np.array_equal(parallel.s, serial.s)

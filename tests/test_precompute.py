import subprocess
import sys

import numpy as np

from model.scoring import query_vector
from model.tiles import demorton
from model.bundle import Bundle
from precompute.store import Store
from tests.conftest import FIXTURE_LEVELS


def soundscape(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True)


def test_store_levels_are_sorted_and_consistent(store_path, bundle_path):
    store = Store(store_path)
    bundle = Bundle(bundle_path)
    store.check_bundle(bundle.id)
    assert sorted(store.levels) == FIXTURE_LEVELS
    for level in store.levels.values():
        a = level.arrays
        n = len(a.codes)
        assert n > 0 and (np.diff(a.codes.astype(np.int64)) > 0).all()
        assert a.sat.shape == (n, bundle.sat_dim) and a.sat.dtype == np.float16
        assert a.mu.shape == (n, bundle.embed_dim) and a.s.shape == (n,)
        np.testing.assert_allclose(np.linalg.norm(a.mu.astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert level.index.ntotal == n


def test_cells_under_a_tile_equal_brute_force(store_path):
    level = Store(store_path).levels[6]
    codes = np.asarray(level.arrays.codes)
    for z, x, y in [(2, 2, 1), (3, 4, 2), (4, 8, 6), (6, 33, 22)]:
        got = codes[level.cells_under(z, x, y)]
        cx, cy = demorton(codes)
        want = codes[(cx >> (6 - z) == x) & (cy >> (6 - z) == y)]
        assert got.tolist() == want.tolist()


def test_index_ranks_by_mu_dot_q_minus_half_s(store_path):
    level = Store(store_path).levels[5]
    q = np.random.default_rng(0).standard_normal(level.arrays.mu.shape[1]).astype(np.float32)
    q /= np.linalg.norm(q)
    scores, ids = level.index.search(query_vector(q), 10)
    brute = level.arrays.mu.astype(np.float32) @ q - 0.5 * level.arrays.s
    assert ids[0].tolist() == np.argsort(-brute)[:10].tolist()
    np.testing.assert_allclose(scores[0], np.sort(brute)[::-1][:10], rtol=1e-5, atol=1e-5)


def test_cli_refuses_bad_input_with_exit_2(bundle_path, imagery_path, store_path, tmp_path):
    bad = tmp_path / "not.tif"
    bad.write_text("not a raster")
    cases = [
        (["--imagery", str(bad), "--bundle", str(bundle_path), "--out", str(tmp_path / "s1")], "cannot read imagery"),
        (["--imagery", str(imagery_path), "--bundle", str(tmp_path), "--out", str(tmp_path / "s2")], "not a model bundle"),
        (["--imagery", str(imagery_path), "--bundle", str(bundle_path), "--out", str(store_path)], "already exists"),
        (["--imagery", str(imagery_path), "--bundle", str(bundle_path), "--levels", "7-x", "--out", str(tmp_path / "s3")], "levels must"),
        (["--imagery", str(imagery_path), "--bundle", str(bundle_path), "--bbox", "100,0,120,10", "--out", str(tmp_path / "s4")], "does not overlap"),
    ]
    before = sorted(p.name for p in store_path.rglob("*"))
    for args, needle in cases:
        r = soundscape("precompute", *args)
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in store_path.rglob("*")) == before
    assert Store(store_path).id


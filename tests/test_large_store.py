"""Large stores (issue 15), at small sizes: the synthetic store generator (`soundscape store
synth`), the index chosen by a level's size (thresholds lowered), and the per-level fusion plan of
`precompute --dry-run --fusion-budget`."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from cli.main import main
from runtime.tiles import demorton, tile_range
from store import synth
from store.index import build_index, exact_top_k, index_bytes_per_cell, recall_at_k
from store.reader import Store
from store.synth import SynthSpec
from store.verify import verify_store
from tests.conftest import FIXTURE_BBOX, FIXTURE_BBOX_ARG, precompute_args
from tests.server_support import decode_png, make_client


def _synth(out, level: int, cells: int, *extra: str) -> Store:
    assert main(["store", "synth", "--out", str(out), "--level", str(level), "--cells", str(cells), *extra]) == 0
    return Store(out)


def test_synth_store_opens_verifies_and_looks_like_a_real_one(tmp_path):
    store = _synth(tmp_path / "a", 9, 3000, "--within", "12")
    verify_store(store)
    assert store.bundle_id == "synthetic" and sorted(store.levels) == [9]
    a = store.levels[9].arrays
    first = SynthSpec(level=9, cells=3000, within="12").first_code
    assert np.array_equal(np.asarray(a.codes), np.arange(first, first + 3000, dtype=np.uint64))
    x, y = demorton(np.asarray(a.codes))
    assert ((x >> 7) == 2).all() and ((y >> 7) == 1).all(), "quadkey 12 is tile (2, 1) of level 2"
    west, south, east, north = store.bounds
    lon, lat = np.asarray(a.lonlat).T
    assert (lon > west).all() and (lon < east).all() and (lat > south).all() and (lat < north).all()
    assert np.allclose(np.linalg.norm(np.asarray(a.mu, dtype=np.float32), axis=1), 1.0, atol=2e-3)
    s = np.asarray(a.s)
    assert 0.2 < np.percentile(s, 1) < np.percentile(s, 99) < 0.8, "S on the demo store's scale (0.28-0.60)"
    assert a.sat.shape == (3000, 96) and 0.6 < np.asarray(a.sat, dtype=np.float32).std() < 1.2
    again = _synth(tmp_path / "b", 9, 3000, "--within", "12")
    other = _synth(tmp_path / "c", 9, 3000, "--within", "12", "--seed", "1")
    assert again.id == store.id != other.id


def test_level_chunks_are_the_cells_a_synth_store_holds(tmp_path, monkeypatch):
    """benchmarks/gpu_paths.py draws its 10 M cells from level_chunks without writing a store:
    the same arrays, chunk after chunk, and from any first chunk (a resumed store's)."""
    monkeypatch.setattr(synth, "CHUNK", 1000)
    spec = SynthSpec(level=7, cells=2500, within="3")
    synth.synth_store(tmp_path / "s", spec)
    written = Store(tmp_path / "s").levels[7].arrays
    chunks = list(synth.level_chunks(spec))
    assert [len(c.codes) for c in chunks] == [1000, 1000, 500]
    for name in ("codes", "mu", "s", "sat", "lonlat"):
        assert np.array_equal(np.concatenate([getattr(c, name) for c in chunks]), np.asarray(getattr(written, name)))
    assert np.array_equal(next(synth.level_chunks(spec, 2)).mu, chunks[2].mu)


def test_synth_means_are_clustered_like_a_real_stores(tmp_path):
    """Over the world (64 coherent blocks at level 9), the means' mean cosine is near the demo
    store's 0.42, and cells next to each other are more alike than cells far apart."""
    mu = np.asarray(_synth(tmp_path / "w", 9, 4**9).levels[9].arrays.mu, dtype=np.float32)
    sample = mu[np.random.default_rng(0).choice(len(mu), 1000, replace=False)]
    far = (sample @ sample.T)[np.triu_indices(1000, 1)].mean()
    assert 0.25 < far < 0.55, "clustered, neither isotropic nor collapsed"
    assert np.einsum("ij,ij->i", mu[:-1], mu[1:]).mean() > far + 0.1, "nearby cells are alike"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--level", "6", "--cells", "5000"], "--cells must be 1..4,096"),
        (["--level", "6", "--cells", "10", "--within", "4"], "--within must be a quadkey"),
        (["--level", "2", "--cells", "10", "--within", "0123"], "--within must be a quadkey"),
    ],
)
def test_synth_refuses_bad_arguments(tmp_path, capsys, args, needle):
    assert main(["store", "synth", "--out", str(tmp_path / "s"), *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_synth_refuses_a_path_that_is_not_a_bundle(tmp_path, capsys):
    args = ["store", "synth", "--out", str(tmp_path / "s"), "--level", "3", "--cells", "8", "--bundle", str(tmp_path)]
    assert main(args) == 2
    assert "is not a model bundle" in capsys.readouterr().err


def test_synth_store_paired_with_a_bundle_serves_tiles_and_fused_hours(bundle_path, tmp_path, caplog):
    out = tmp_path / "paired"
    _synth(out, 6, 4096, "--bundle", str(bundle_path))
    with caplog.at_level(logging.WARNING), make_client(bundle_path, out) as client:
        # A store of no imagery has no basemap to look for: it warned "the store's imagery None is not found".
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        stats = client.app.state.service.stats
        params = {"q": "birdsong", "layer": "heatmap"}
        plain = client.get("/tiles/2/2/1.png", params=params)
        fusions = stats["fusions"]
        dawn = client.get("/tiles/2/2/1.png", params={**params, "hour": 6})
        assert plain.status_code == dawn.status_code == 200
        assert len(np.unique(decode_png(plain.content))) > 3, "a map, not a flat tile"
        assert stats["fusions"] > fusions and dawn.content != plain.content, "hour= fuses the stored sat"


@pytest.mark.parametrize("cells, kind", [(1500, "flat-ip"), (4000, "ivf-flat-ip"), (12000, "ivf-sqfp16-ip")])
def test_index_kind_follows_the_level_size_and_reaches_its_recall(tmp_path, cells, kind):
    level = _synth(tmp_path / "s", 8, cells).levels[8]
    mu, s = level.arrays.mu, level.arrays.s
    index, info = build_index(mu, s, flat_max=2000, ivf_flat_max=6000)
    assert info["kind"] == kind and index.ntotal == cells
    size = len(faiss.serialize_index(index))
    assert abs(size - cells * index_bytes_per_cell(cells, 65, 2000, 6000)) < 0.1 * size + 65 * 4 * info.get("nlist", 0)
    if kind == "flat-ip":
        return
    assert info["recall_at_10"] >= 0.95 and info["recall_at_100"] >= 0.95 and index.nprobe == info["nprobe"]
    rng = np.random.default_rng(7)  # fresh queries, not those nprobe was tuned on: random directions and cells
    far = rng.standard_normal((100, 64)).astype(np.float32)
    near = np.asarray(mu[rng.choice(cells, 100, replace=False)], dtype=np.float32)
    for q in (far / np.linalg.norm(far, axis=1, keepdims=True), near):
        q = np.hstack([q, np.ones((100, 1), np.float32)])
        assert recall_at_k(index, q, exact_top_k(mu, s, q, 100)) >= 0.93
    if kind == "ivf-sqfp16-ip":  # its HNSW quantizer returns at most efSearch lists, as written to disk too
        restored = faiss.deserialize_index(faiss.serialize_index(index))  # owns what the casts point into
        again = faiss.downcast_index(restored)
        assert faiss.downcast_index(again.quantizer).hnsw.efSearch >= 2 * again.nprobe


def _dry_run(capsys, imagery_path, bundle_path, tmp_path, *extra: str) -> str:
    assert main(precompute_args(imagery_path, bundle_path, "3-6", tmp_path / "store", FIXTURE_BBOX_ARG, *extra)) == 0
    return capsys.readouterr().out


def test_fusion_budget_stores_the_coarsest_levels_that_fit(capsys, imagery_path, bundle_path, tmp_path):
    cells = {lv: (r[1] - r[0] + 1) * (r[3] - r[2] + 1) for lv in range(3, 7) for r in [tile_range(lv, FIXTURE_BBOX)]}
    per_cell = 36 * (2 * 32 + 4)  # 24 hours and 12 months of mu float16 and S float32 at 32 dims
    budget = (cells[3] + cells[4]) * per_cell + 1  # levels 3 and 4 fit, 5 does not
    text = _dry_run(capsys, imagery_path, bundle_path, tmp_path, "--dry-run", "--fusion-budget", f"{budget}B")
    lines = text.splitlines()
    rows = {int(line.split()[0]): line for line in lines if line.split()[0].isdigit() and "MB" not in line}
    rows = {lv: line for lv, line in rows.items() if line.endswith(("stored", "at query time"))}
    assert rows[3].endswith("stored") and rows[4].endswith("stored")
    assert rows[5].endswith("fused at query time") and rows[6].endswith("fused at query time")
    assert f"{6:>5} {cells[6]:>12,}" in lines, "the cells table is unchanged"
    assert "fusions: 36 per cell stored at levels 3, 4:" in text and "--fusion-budget" in text
    assert not (tmp_path / "store").exists()
    _dry_run(capsys, imagery_path, bundle_path, tmp_path, "--fusion-budget", f"{budget}B", "--quiet")
    store = Store(tmp_path / "store")
    assert [store.levels[lv].fusion_kinds for lv in sorted(store.levels)] == [["hour", "month"]] * 2 + [[]] * 2


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--fusion-budget", "lots"], "--fusion-budget must be a size"),
        (["--fusion-budget", "1GB", "--fusion-levels", "3"], "not both"),
    ],
)
def test_fusion_budget_refuses_bad_input(capsys, imagery_path, bundle_path, tmp_path, extra, needle):
    assert (
        main(precompute_args(imagery_path, bundle_path, "3-4", tmp_path / "s", FIXTURE_BBOX_ARG, "--dry-run", *extra))
        == 2
    )
    assert needle in capsys.readouterr().err


def test_dry_run_sizes_each_level_and_its_fusions():
    """Half the cells have imagery: 1 M level-10 cells store 500,000 x 600 B of arrays and index
    and, per fusion, 500,000 x 132 B (64 dims); fusions are stored at level 10 only."""
    from precompute.estimate import Estimate, levels_within_budget, parse_size

    estimate = Estimate(
        cells={10: 1_000_000, 11: 4_000_000},
        valid_fraction=0.5,
        default_bytes={10: 600, 11: 500},
        fusion_bytes=132,
        fusion_sets=36,
        fusion_levels=(10,),
        cells_per_s=1000.0,
        sampled=256,
        device="cpu",
        budget=parse_size("5GB"),
    )
    lines = estimate.lines()
    assert f"{10:>5} {300.0:>12,.1f} {66.0:>12,.1f} {2376.0:>12,.1f}  stored" in lines
    assert f"{11:>5} {1000.0:>12,.1f} {264.0:>12,.1f} {9504.0:>12,.1f}  fused at query time" in lines
    assert "fusions: 36 per cell stored at levels 10: 2,376.0 MB of the --fusion-budget 5.0 GB" in "\n".join(lines)
    assert estimate.storage_bytes == 300e6 + 1000e6 + 2376e6
    assert levels_within_budget({10: 10**6, 11: 4 * 10**6}, 64, ["hour", "month"], int(4.752e9)) == (10,)
    assert levels_within_budget({10: 10**6, 11: 4 * 10**6}, 64, ["hour", "month"], int(23.76e9)) == (10, 11)
    assert levels_within_budget({10: 10**6}, 64, ["hour"], 10**6) == ()
    assert [parse_size(s) for s in ("50GB", "750 MB", "1.5tb", "0")] == [50 * 10**9, 750 * 10**6, 15 * 10**11, 0]

import shutil

import numpy as np
import pytest

from cli.main import main
from runtime.bundle import Bundle
from runtime.metadata import encode_metadata
from runtime.scoring import query_vector, uncertainty
from runtime.tiles import demorton, morton, tiles_in_bbox
from store.format import StoreError
from store.reader import Store
from store.verify import verify_store
from tests.conftest import FIXTURE_BBOX, FIXTURE_BBOX_ARG, FIXTURE_LEVELS, precompute_args


@pytest.fixture(scope="module")
def fused_store(bundle_path, imagery_path, tmp_path_factory):
    """Levels 3-5 with hourly and monthly fusions at levels 3-4, written by the CLI."""
    out = tmp_path_factory.mktemp("fused") / "store"
    assert (
        main(
            precompute_args(
                imagery_path, bundle_path, "3-5", out, FIXTURE_BBOX_ARG, "--fusion-levels", "3-4", "--quiet"
            )
        )
        == 0
    )
    return Store(out)


def test_store_levels_are_sorted_and_consistent(store_path, bundle_path):
    store = Store(store_path)
    bundle = Bundle(bundle_path)
    store.check_bundle(bundle.id)
    verify_store(store)
    assert sorted(store.levels) == FIXTURE_LEVELS
    for level in store.levels.values():
        a = level.arrays
        n = len(a.codes)
        assert n > 0 and (np.diff(a.codes.astype(np.int64)) > 0).all()
        assert a.sat.shape == (n, bundle.sat_dim) and a.sat.dtype == np.float16
        assert a.mu.shape == (n, bundle.embed_dim) and a.s.shape == (n,)
        np.testing.assert_allclose(np.linalg.norm(a.mu.astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert level.index.ntotal == n


def test_store_holds_every_cell_with_imagery_and_its_embedding(store_path, bundle_path, imagery_path):
    """Round trip: the stored rows are the reader's cells through the bundle's graphs."""
    from runtime.imagery import Imagery

    store, bundle, imagery = Store(store_path), Bundle(bundle_path), Imagery(imagery_path)
    level = store.levels[5]
    x, y = tiles_in_bbox(5, FIXTURE_BBOX)
    cells = {
        morton(a, b): imagery.cell(5, a, b, bundle.image_size) for a, b in zip(x.tolist(), y.tolist(), strict=True)
    }
    with_imagery = sorted(code for code, cell in cells.items() if cell is not None)
    assert level.arrays.codes.tolist() == with_imagery
    assert level.meta["skipped"] == len(cells) - len(with_imagery)
    rows = list(range(8))
    chosen = [cells[c] for c in with_imagery[:8]]
    sat = bundle.embed_images(np.stack([c.rgb for c in chosen]), np.array([c.gsd for c in chosen], np.float32))
    np.testing.assert_allclose(level.arrays.sat[rows].astype(np.float32), sat, rtol=1e-2, atol=1e-2)
    cx, cy = demorton(np.asarray(level.arrays.codes[rows]))
    lon, lat = level.arrays.lonlat[rows].T
    assert (np.floor((lon + 180) / 360 * 32) == cx).all()
    assert (np.floor((1 - np.arcsinh(np.tan(np.radians(lat))) / np.pi) / 2 * 32) == cy).all()


def test_index_ranks_by_mu_dot_q_minus_half_s(store_path):
    level = Store(store_path).levels[5]
    q = np.random.default_rng(0).standard_normal(level.arrays.mu.shape[1]).astype(np.float32)
    q /= np.linalg.norm(q)
    scores, ids = level.index.search(query_vector(q), 10)
    brute = level.arrays.mu.astype(np.float32) @ q - 0.5 * level.arrays.s
    assert ids[0].tolist() == np.argsort(-brute)[:10].tolist()
    np.testing.assert_allclose(scores[0], np.sort(brute)[::-1][:10], rtol=1e-5, atol=1e-5)


def test_precomputed_fusions_equal_fusing_the_stored_features(fused_store, bundle_path):
    bundle = Bundle(bundle_path)
    level = fused_store.levels[4]
    a = level.arrays
    for hour, month in ((6, None), (23, None), (None, 1), (None, 12)):
        mu, s = level.precomputed(hour=hour, month=month)
        assert mu.shape == a.mu.shape and mu.dtype == np.float16 and s.shape == a.s.shape
        meta = encode_metadata(len(a.s), lat=a.lonlat[:, 1], lon=a.lonlat[:, 0], hour=hour, month=month)
        want_mu, logvar = bundle.fuse(np.asarray(a.sat, dtype=np.float32), meta)
        np.testing.assert_allclose(mu.astype(np.float32), want_mu, atol=2e-3)
        np.testing.assert_allclose(s, uncertainty(logvar), rtol=1e-4)
    assert not np.allclose(level.precomputed(hour=6)[0], level.precomputed(hour=18)[0])
    default = level.precomputed()
    assert default[0] is a.mu and default[1] is a.s
    for args in ({"hour": 6, "month": 5}, {"source": 0}, {"hour": 24}, {"month": 0}, {"hour": 6.5}):
        assert level.precomputed(**args) is None
    assert fused_store.levels[5].precomputed(hour=6) is None  # a level without fusions
    assert fused_store.levels[5].precomputed() is not None


def test_verify_finds_a_changed_byte_and_info_describes(fused_store, tmp_path, capsys):
    assert main(["store", "info", str(fused_store.path)]) == 0
    out = capsys.readouterr().out
    assert fused_store.id in out and "hour, month" in out and "flat-ip" in out
    copy = tmp_path / "copy"
    shutil.copytree(fused_store.path, copy)
    assert main(["store", "verify", str(copy)]) == 0
    target = copy / "levels" / "04" / "fusions" / "hour-06.mu.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert main(["store", "verify", str(copy)]) == 2
    assert "hour-06.mu.npy does not match its checksum" in capsys.readouterr().err
    with pytest.raises(StoreError):
        verify_store(Store(copy))


def test_dry_run_counts_cells_and_writes_nothing(bundle_path, imagery_path, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(precompute_args(imagery_path, bundle_path, "3-5", out, FIXTURE_BBOX_ARG, "--dry-run")) == 0
    text = capsys.readouterr().out
    total = sum(len(tiles_in_bbox(z, FIXTURE_BBOX)[0]) for z in (3, 4, 5))
    assert f"total {total:>12,}" in text and "cells/s" in text and "MB" in text
    assert not out.exists() and not any(tmp_path.iterdir())


def test_cli_refuses_bad_input_with_exit_2(bundle_path, imagery_path, store_path, tmp_path, capsys):
    bad = tmp_path / "not.tif"
    bad.write_text("not a raster", encoding="utf-8")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("someone's files", encoding="utf-8")
    # a manifest.json alone made a folder a store to replace: --overwrite deleted a bundle's graphs
    # (even the --bundle being embedded) and a user's files beside a store
    kept = {"a bundle": tmp_path / "bundle", "a store and a note": tmp_path / "noted"}
    shutil.copytree(bundle_path, kept["a bundle"])
    shutil.copytree(store_path, kept["a store and a note"])
    (kept["a store and a note"] / "keep.txt").write_text("mine", encoding="utf-8")
    files = {name: sorted(p.relative_to(path) for p in path.rglob("*")) for name, path in kept.items()}
    run = ["precompute", "--imagery", str(imagery_path), "--bundle", str(bundle_path)]
    cases = [
        (
            ["precompute", "--imagery", str(bad), "--bundle", str(bundle_path), "--out", str(tmp_path / "s1")],
            "cannot read imagery",
        ),
        (
            ["precompute", "--imagery", str(imagery_path), "--bundle", str(tmp_path), "--out", str(tmp_path / "s2")],
            "not a model bundle",
        ),
        ([*run, "--out", str(store_path)], "already exists"),
        ([*run, "--out", str(tmp_path / "other"), "--overwrite"], "is not an embedding store"),
        ([*run, "--out", str(kept["a bundle"]), "--overwrite"], "is not an embedding store alone"),
        ([*run, "--out", str(kept["a store and a note"]), "--overwrite"], "is not an embedding store alone"),
        (
            ["store", "synth", "--level", "3", "--cells", "10", "--out", str(kept["a bundle"]), "--overwrite"],
            "not an embedding store",
        ),
        (
            ["precompute", "merge", "--out", str(kept["a bundle"]), "--overwrite", str(store_path)],
            "not an embedding store",
        ),
        ([*run, "--levels", "7-x", "--out", str(tmp_path / "s3")], "levels must"),
        ([*run, "--levels", "3-14", "--out", str(tmp_path / "s3")], "-10"),
        ([*run, "--levels", "0-4", "--out", str(tmp_path / "s3")], "too large for the imagery's footprint"),
        ([*run, "--bbox", "100,0,120,10", "--out", str(tmp_path / "s4")], "does not overlap"),
        ([*run, "--shard", "4/4", "--out", str(tmp_path / "s5")], "shard"),
        ([*run, "--region", str(bad), "--out", str(tmp_path / "s6")], "not a readable GeoJSON"),
        ([*run, "--fusions", "weekday", "--out", str(tmp_path / "s7")], "fusions must be among"),
        (  # fusion levels with no kind of fusion stored none, exit 0
            [*run, "--levels", "3", "--fusion-levels", "3", "--fusions", "", "--out", str(tmp_path / "s9")],
            "--fusions names none",
        ),
        (  # a fusion level outside --levels was dropped from the plan without a word
            [*run, "--levels", "3", "--fusion-levels", "3-4", "--out", str(tmp_path / "s10")],
            "--fusion-levels 3-4 name level(s) 4 that --levels 3 does not embed",
        ),
        (["precompute", "merge", "--out", str(tmp_path / "s8"), str(store_path)], "not a shard store"),
        (["store", "verify", str(tmp_path)], "not an embedding store"),
    ]
    before = sorted(p.name for p in store_path.rglob("*"))
    for args, needle in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and err.count("\n") == 1, err
    assert sorted(p.name for p in store_path.rglob("*")) == before
    assert (tmp_path / "other" / "notes.txt").exists()
    assert {name: sorted(p.relative_to(path) for p in path.rglob("*")) for name, path in kept.items()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "not.tif", "noted", "other"]


def test_an_empty_shard_is_said_as_it_is_written_and_as_it_is_opened(imagery_path, bundle_path, tmp_path, capsys):
    """Shard edges are rounded down to batches, so a small plan leaves the first shards empty: the
    run said "0 cells" alone, and `store info` of the shard only "holds no cells"."""
    out = tmp_path / "shard0"
    args = precompute_args(
        imagery_path, bundle_path, "3", out, FIXTURE_BBOX_ARG, "--shard", "0/8", "--batch-size", "64"
    )
    assert main(args) == 0
    assert "note: shard 0/8 holds no cells: each level is split into 8 parts" in capsys.readouterr().err
    assert main(["store", "info", str(out)]) == 2
    said = capsys.readouterr().err
    assert "holds no cells: it is shard 0 of 8" in said and "precompute merge` takes it as it is" in said

"""A store under real failures: replaced while a reader holds it open, written by a process that is
killed at a given point, or that runs out of disk. Nothing already stored is lost, a reader never
mixes two stores, and a rerun finishes the store an uninterrupted run writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import store.reader
from precompute.run import run
from runtime.bundle import Bundle
from runtime.files import replace_dir
from runtime.imagery import Imagery
from store.reader import Store
from tests.conftest import FIXTURE_BBOX

OTHER_BBOX = (0.0, 40.0, 36.0, 62.0)  # within the fixture imagery: fewer cells at every level


def _build(imagery_path: Path, bundle_path: Path, out: Path, bbox=FIXTURE_BBOX, **options) -> dict:
    manifest, _ = run(
        Imagery(imagery_path), Bundle(bundle_path), [3, 4], bbox, out, fusion_levels=(3, 4), progress=False, **options
    )
    return manifest


@pytest.fixture(scope="module")
def two_stores(imagery_path, bundle_path, tmp_path_factory) -> tuple[Path, Path]:
    """Two stores of the same levels and fusions over different areas (other counts, other rows)."""
    root = tmp_path_factory.mktemp("two-stores")
    _build(imagery_path, bundle_path, root / "old")
    _build(imagery_path, bundle_path, root / "new", bbox=OTHER_BBOX)
    return root / "old", root / "new"


def _replace_with(source: Path, path: Path) -> None:
    """What `precompute --overwrite` does at its end: the finished folder renamed over `path`."""
    staged = path.parent / f".{path.name}.staged"
    shutil.copytree(source, staged)
    replace_dir(staged, path)


def _snapshot(level: store.reader.Level) -> dict[str, np.ndarray]:
    """A level's default and hour-5 arrays, and every vector of its index, copied."""
    mu, s = level.precomputed(hour=5)
    index = level.index
    return {
        "mu": np.array(level.arrays.mu),
        "hour_mu": np.array(mu),
        "hour_s": np.array(s),
        "index": index.reconstruct_n(0, index.ntotal) if hasattr(index, "reconstruct_n") else np.zeros(0),
    }


def test_a_reader_keeps_the_store_it_opened_when_a_writer_replaces_it(two_stores, tmp_path):
    old, new = two_stores
    path = tmp_path / "store"
    shutil.copytree(old, path)
    expected = _snapshot(Store(old).levels[4])
    served = Store(path)  # a server's store, opened before the run that replaces it
    _replace_with(new, path)
    assert Store(path).id != served.id
    level = served.levels[4]
    assert level.index.ntotal == len(level)  # the index it loads now is its own, not the new store's
    got = _snapshot(level)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_a_store_replaced_while_it_is_opened_opens_as_one_store(two_stores, tmp_path, monkeypatch):
    old, new = two_stores
    path = tmp_path / "store"
    shutil.copytree(old, path)
    checked = store.reader.check_level_files
    replaced = []

    def replace_then_check(folder: Path, meta: dict) -> None:
        if not replaced:  # the writer's rename lands after the manifest was read
            replaced.append(True)
            _replace_with(new, path)
        checked(folder, meta)

    monkeypatch.setattr(store.reader, "check_level_files", replace_then_check)
    opened = Store(path)
    assert replaced and opened.id == json.loads((new / "manifest.json").read_text(encoding="utf-8"))["id"]
    for level in opened.levels.values():
        assert len(level) == opened.manifest["levels"][str(level.level)]["count"] == level.index.ntotal

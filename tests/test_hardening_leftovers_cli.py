"""Leftovers of the hardening audit, through the `soundscape` command: what a finished command
leaves on disk, and a merge beside another writer of its store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import precompute_args
from tests.test_cli import _fails


@pytest.fixture(scope="module")
def shards(imagery_path, bundle_path, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("shards")
    paths = [root / f"shard{i}" for i in range(2)]
    for i, path in enumerate(paths):
        assert main(precompute_args(imagery_path, bundle_path, "3", path, "--shard", f"{i}/2", "--quiet")) == 0
    assert sorted(p.name for p in root.iterdir()) == ["shard0", "shard1"], "a lock file or work folder left behind"
    return paths


def test_merge_leaves_no_lock_file(shards, tmp_path) -> None:
    """`precompute merge --out S` left `.S.lock` beside the merged store for good."""
    assert main(["precompute", "merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_a_merge_into_a_store_another_process_is_writing_stops_at_once(capsys, shards, tmp_path) -> None:
    """A merge took a lock of its own (`.S.lock`), not the one a precompute or synth of S holds
    (`.S.partial.lock`), so it merged into S while that run went on, and whichever finished last
    replaced the other's store without --overwrite; two merges of S checked S was free, then
    waited for each other, and the second replaced the first's store."""
    from store.writer import PartialStore

    out = tmp_path / "merged"
    running = PartialStore(out, {"run": "a precompute"}, 8, discard_other=False)
    try:
        line = _fails(capsys, ["precompute", "merge", *map(str, shards), "--out", str(out)])
        assert line == (
            f"soundscape precompute: another process is writing the store {out}; wait for it to finish "
            "(a rerun then resumes or refuses the finished store), or choose another --out"
        )
        assert not out.exists() and running.dir.is_dir()
    finally:
        running.discard()
        running.close()
    assert main(["precompute", "merge", *map(str, shards), "--out", str(out)]) == 0


def test_a_nodata_no_pixel_can_hold_stops_precompute_before_it_writes(capsys, imagery_path, bundle_path, tmp_path):
    """`--nodata nan` on uint8 imagery failed on the first cell with rio-tiler's `Cannot convert
    fill_value nan to dtype uint8`, leaving a work folder and progress file beside --out."""
    out = tmp_path / "store"
    line = _fails(capsys, [*precompute_args(imagery_path, bundle_path, "3", out, "--quiet"), "--nodata", "nan"])
    assert line == (
        f"soundscape precompute: nodata nan can never be a pixel of imagery {str(imagery_path)!r}, whose uint8 "
        "pixels are whole numbers 0..255: give --nodata one of those, or leave it out for the file's own nodata"
    )
    assert list(tmp_path.iterdir()) == []

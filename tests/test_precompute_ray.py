"""`soundscape precompute --engine ray` on a local Ray instance of 2 CPUs: the store equals the
local engine's byte for byte, a worker lost mid-shard is retried without losing or duplicating a
cell, and a driver killed mid-run and started again finishes the same store. The argument checks
run without ray."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from precompute import ray_engine
from precompute.merge import merge
from precompute.ray_engine import KILL_ONCE_ENV, shards_root
from precompute.run import run
from runtime.bundle import Bundle
from runtime.imagery import Imagery
from store.reader import Store
from tests.conftest import FIXTURE_BBOX
from tests.test_precompute_resume import BATCH, FLAT_MAX, LEVELS, assert_same_store, precompute_argv


def _argv(imagery_path: Path, bundle_path: Path, out: Path, *extra: str) -> list[str]:
    return precompute_argv(imagery_path, bundle_path, out, "--quiet", "--engine", "ray", "--ray-cpus", "1", *extra)


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance of 2 CPUs for the module (the engine finds it initialised); its address."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(imagery_path, bundle_path, tmp_path_factory) -> Path:
    """The local engine's store for the same arguments."""
    out = tmp_path_factory.mktemp("reference") / "store"
    levels = [int(v) for v in LEVELS.split("-")]
    run(
        Imagery(str(imagery_path)),
        Bundle(bundle_path),
        list(range(levels[0], levels[1] + 1)),
        FIXTURE_BBOX,
        out,
        batch=BATCH,
        fusion_levels=(3, 4),
        index_flat_max=FLAT_MAX,
        progress=False,
    )
    return out


def assert_every_cell_once(out: Path, reference: Path) -> None:
    """Each level holds the reference's cells, each once, in quadkey order."""
    ref = Store(reference)
    for level, meta in Store(out).levels.items():
        codes = np.load(out / "levels" / f"{level:02d}" / "codes.npy")
        assert len(np.unique(codes)) == len(codes) == meta.meta["count"], f"level {level} repeats a cell"
        np.testing.assert_array_equal(codes, np.load(reference / "levels" / f"{level:02d}" / "codes.npy"))
    assert sorted(Store(out).levels) == sorted(ref.levels)


@pytest.mark.slow
def test_ray_store_equals_the_local_engines(
    ray_address, reference, imagery_path, bundle_path, tmp_path, capsys, monkeypatch
):
    def merge_then_killed(*args, **kwargs):
        merge(*args, **kwargs)
        raise KeyboardInterrupt  # the driver stopped between the merge and removing the shards

    out = tmp_path / "store"
    monkeypatch.setattr(ray_engine, "merge", merge_then_killed)
    assert main(_argv(imagery_path, bundle_path, out, "--ray-workers", "3")) == 130
    assert_same_store(out, reference)
    assert Store(out).manifest["run"]["merged_shards"] == 3
    monkeypatch.undo()

    assert main(_argv(imagery_path, bundle_path, out)) == 0  # run again: sees the merge done, tidies up
    assert f"store {Store(reference).id} written to {out} by 3 Ray tasks" in capsys.readouterr().out
    assert not shards_root(out).exists()
    assert_same_store(out, reference)


@pytest.mark.slow
def test_a_worker_lost_mid_shard_is_retried_without_losing_or_repeating_cells(
    ray_address, reference, imagery_path, bundle_path, tmp_path, monkeypatch
):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    out = tmp_path / "store"
    assert main(_argv(imagery_path, bundle_path, out, "--ray-workers", "2")) == 0
    saved = int(marker.read_text(encoding="utf-8"))  # rows the shard had saved when its worker process exited
    assert 0 < saved < sum(m["count"] for m in Store(reference).manifest["levels"].values())
    assert_every_cell_once(out, reference)
    assert_same_store(out, reference)


@pytest.mark.slow
def test_a_killed_driver_run_again_finishes_the_same_store(ray_address, reference, imagery_path, bundle_path, tmp_path):
    out = tmp_path / "store"
    argv = [sys.executable, "-m", "cli.main", *_argv(imagery_path, bundle_path, out, "--address", ray_address)]
    root = shards_root(out)
    complete = lambda: sorted(p.parent.name for p in root.glob("shard-*/manifest.json"))  # noqa: E731
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stderr:
        proc = subprocess.Popen([*argv, "--ray-workers", "4"], stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 240
        while not complete() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stderr.seek(0)
        assert proc.returncode == -signal.SIGKILL, f"the driver ended before it was killed: {stderr.read()}"
    done = complete()
    assert len(done) >= 1 and not out.exists()
    assert json.loads((root / "job.json").read_text(encoding="utf-8"))["shards"] == 4

    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)  # the job file keeps the 4 shards
    assert again.returncode == 0, again.stderr
    # Not rerun: every shard complete at the kill, and any a task of the dead driver completed
    # before Ray stopped it (its shard lock keeps it and the new run's task from writing at once).
    reused = re.search(r"\(([0-9]+) shards complete before this run\)", again.stdout)
    assert reused is not None and len(done) <= int(reused.group(1)) <= 4, again.stdout
    assert_every_cell_once(out, reference)
    assert_same_store(out, reference)
    assert not root.exists()


@pytest.mark.slow
def test_ray_refuses_what_it_cannot_run(ray_address, imagery_path, bundle_path, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(_argv(imagery_path, bundle_path, out, "--dry-run", "--ray-workers", "2")) == 0  # estimated here
    assert "cells" in capsys.readouterr().out and not out.exists() and not shards_root(out).exists()
    assert main(_argv(imagery_path, bundle_path, out, "--ray-cpus", "64")) == 2
    assert "more than any node of the Ray cluster has (at most 2)" in capsys.readouterr().err
    assert main(_argv(imagery_path, bundle_path, out, "--device", "cuda")) == 2
    assert "--device cuda needs GPUs, and no node of the Ray cluster has one" in capsys.readouterr().err
    assert main(_argv(imagery_path, bundle_path, out, "--levels", "12", "--fusion-levels", "12")) == 2  # by the tasks
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "level(s) 12 would enlarge" in err[0]
    root = shards_root(out)
    assert json.loads((root / "job.json").read_text(encoding="utf-8"))["levels"] == [12]
    (root / ".shard-0000.partial").mkdir()  # as if a task of that job had started writing
    assert main(_argv(imagery_path, bundle_path, out)) == 2
    assert "holds the shards of another run" in capsys.readouterr().err
    assert (root / ".shard-0000.partial").is_dir() and not out.exists()  # nothing discarded without --overwrite


def test_engine_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without the extra
    assert main(_argv(tmp_path / "x.tif", tmp_path / "bundle", tmp_path / "store")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "soundscape precompute: --engine ray needs the ray extra: pip install 'soundscape-tiles[ray]' (or 'ray>=2.9')"
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--engine", "local", "--ray-workers", "2"), "--address, --ray-workers and --ray-cpus need --engine ray"),
        (("--shard", "0/2"), "--engine ray makes its own shards"),
    ],
)
def test_ray_flags_are_checked_before_anything_runs(tmp_path, capsys, extra, message):
    assert main([*_argv(tmp_path / "x.tif", tmp_path / "bundle", tmp_path / "store"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

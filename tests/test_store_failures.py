"""A store under real failures: replaced while a reader holds it open, written by a process that is
killed at a given point, or that runs out of disk. Nothing already stored is lost, a reader never
mixes two stores, and a rerun finishes the store an uninterrupted run writes."""

from __future__ import annotations

import errno
import json
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import store.reader
import store.writer
from precompute.run import run
from runtime.bundle import Bundle
from runtime.files import replace_dir
from runtime.imagery import Imagery
from store.reader import Store
from store.verify import verify_store
from tests.conftest import FIXTURE_BBOX, FIXTURE_BBOX_ARG, precompute_args
from tests.test_precompute_resume import assert_same_store

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


# Runs `soundscape ARGV...` in this process and SIGKILLs it on the N-th call of a function (module,
# attribute path), just after the call returns: a kill at that exact point of the run.
KILL_AT = """
import importlib, os, signal, sys
module, attribute, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
owner = importlib.import_module(module)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
called, function = [0], getattr(owner, name)
def killing(*args, **kwargs):
    result = function(*args, **kwargs)
    called[0] += 1
    if called[0] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, killing)
from cli.main import main
sys.exit(main(sys.argv[4:]))
"""


def _killed_at(argv: list[str], function: str, nth: int) -> None:
    """Run the command, killed just after the nth call of `function` ('module:attribute')."""
    module, attribute = function.split(":")
    done = subprocess.run(
        [sys.executable, "-c", KILL_AT, module, attribute, str(nth), *argv], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, f"the run ended before it was killed: {done.stderr[-2000:]}"


@pytest.fixture(scope="module")
def killed_reference(imagery_path, bundle_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("killed-reference") / "store"
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *_argv(imagery_path, bundle_path, out)], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    return out


def _argv(imagery_path: Path, bundle_path: Path, out: Path) -> list[str]:
    """A run of two levels, one with fusions and an IVF index, in batches of 8 cells."""
    return precompute_args(
        imagery_path,
        bundle_path,
        "3-5",
        out,
        FIXTURE_BBOX_ARG,
        "--batch-size=8",
        "--fusion-levels=3",
        "--fusions=hour",
        "--index-flat-max=10",
        "--quiet",
    )


KILL_POINTS = {
    "mid-level, after a batch's progress": ("store.writer:PartialStore.save", 5),
    "inside an index write": ("faiss:write_index", 3),
    "after the manifest, before the move": ("store.writer:os.chmod", 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_at_any_point_resumes_to_the_uninterrupted_store(
    killed_reference, imagery_path, bundle_path, tmp_path, point
):
    out = tmp_path / "store"
    argv = _argv(imagery_path, bundle_path, out)
    _killed_at(argv, *KILL_POINTS[point])
    assert not out.exists()
    done = subprocess.run([sys.executable, "-m", "cli.main", *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_store(out, killed_reference)
    assert not list(out.rglob(".*")), "a killed write's temporary file went into the store"
    verify_store(Store(out))


def _limited_to(size: int) -> Callable[[], None]:
    """A child's set-up: no file it writes may grow past `size` bytes (write() then fails with
    EFBIG, as a full disk fails with ENOSPC)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_a_sentence_and_a_rerun_resumes(
    killed_reference, store_path, imagery_path, bundle_path, tmp_path
):
    out = tmp_path / "store"
    shutil.copytree(store_path, out)
    old = Store(out).id
    argv = [sys.executable, "-m", "cli.main", *_argv(imagery_path, bundle_path, out), "--overwrite"]
    full = subprocess.run(argv, capture_output=True, text=True, preexec_fn=_limited_to(1000))
    said = [line for line in full.stderr.splitlines() if not line.startswith("WARNING clustering")]  # faiss's
    assert full.returncode == 2 and len(said) == 1, full.stderr
    assert f"cannot write {out}: File too large" in full.stderr and "resumes" in full.stderr, full.stderr
    assert Store(out).id == old  # the store already there is untouched
    verify_store(Store(out))
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0 and ", resumed)" in done.stdout, done.stderr
    assert_same_store(out, killed_reference)


@pytest.mark.parametrize(
    "error, said",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "cannot write {out}: No space left on device"),
        (OSError(errno.EIO, "Input/output error"), "is damaged ([Errno 5] Input/output error); delete that folder"),
    ],
)
def test_a_level_that_finds_no_room_is_not_called_damaged(tmp_path, monkeypatch, error, said):
    """A full disk as a level's files were made was said to damage the unfinished run, and to need
    --overwrite (given already): after making room the same command resumed it."""
    out = tmp_path / "store"
    work = store.writer.PartialStore(out, {"plan": 1}, 8, discard_other=False)

    def no_room(*args, **kwargs):
        raise error

    monkeypatch.setattr(store.writer, "LevelWriter", no_room)
    try:
        with pytest.raises(store.writer.StoreError) as caught, store.writer.no_room_said(out, "run it again"):
            work.writer(3, 0, 8, 4, [])
    finally:
        work.close()
    assert said.format(out=out) in str(caught.value)
    assert work.dir.is_dir() and work.progress.is_file()  # the run is kept, to resume

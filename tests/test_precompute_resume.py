"""A killed precompute resumes to the store an uninterrupted run writes; shards merged equal one
run; an existing store survives an --overwrite run that is killed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from precompute.merge import merge
from precompute.run import run
from runtime.bundle import Bundle
from runtime.imagery import Imagery
from store.format import StoreError
from store.reader import Store
from store.verify import verify_store
from store.writer import work_paths
from tests.conftest import FIXTURE_BBOX, FIXTURE_BBOX_ARG, precompute_args

LEVELS = "3-7"
BATCH = 16
FUSION_LEVELS = (3, 4)
FLAT_MAX = 300  # level 7 (~450 cells) gets an IVF index, so its determinism is checked too


def _run(imagery_path, bundle_path, out, levels=range(3, 8), **options):
    return run(
        Imagery(str(imagery_path)),
        Bundle(bundle_path),
        list(levels),
        FIXTURE_BBOX,
        out,
        batch=BATCH,
        fusion_levels=FUSION_LEVELS,
        index_flat_max=FLAT_MAX,
        progress=False,
        **options,
    )


@pytest.fixture(scope="module")
def reference(imagery_path, bundle_path, tmp_path_factory) -> Path:
    """The store of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "store"
    _run(imagery_path, bundle_path, out)
    return out


def assert_same_store(a: Path, b: Path) -> None:
    """Equal content: manifests equal but for when and how they were made, every file byte-equal."""
    ma, mb = (json.loads((p / "manifest.json").read_text(encoding="utf-8")) for p in (a, b))
    for m in (ma, mb):
        m.pop("created"), m.pop("run")
    assert ma == mb
    files = sorted(p.relative_to(a) for p in a.rglob("*.*") if p.name != "manifest.json")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.*") if p.name != "manifest.json")
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def precompute_argv(imagery_path: Path, bundle_path: Path, out: Path, *extra: str) -> list[str]:
    """`soundscape precompute` of the reference store's levels, fusions and index choice."""
    return precompute_args(
        imagery_path,
        bundle_path,
        LEVELS,
        out,
        FIXTURE_BBOX_ARG,
        "--batch-size",
        str(BATCH),
        "--fusion-levels",
        "-".join(map(str, FUSION_LEVELS)),
        "--index-flat-max",
        str(FLAT_MAX),
        *extra,
    )


def _positions(progress: Path) -> int:
    try:
        state = json.loads(progress.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return sum(level["rows"] for level in state["levels"].values())


def test_reference_store_has_every_part(reference):
    store = Store(reference)
    verify_store(store)
    assert sorted(store.levels) == list(range(3, 8))
    assert store.levels[7].meta["index"]["kind"] == "ivf-flat-ip"
    assert store.levels[7].meta["index"]["recall_at_10"] >= 0.95
    assert store.levels[3].fusion_kinds == ["hour", "month"] and store.levels[5].fusion_kinds == []


# kill -9 (the process gone at once) and SIGTERM (`docker stop`: exit 143 with the sentence saying
# how to resume, not the silent death of Python's default)
STOPS = [(signal.SIGKILL, -signal.SIGKILL, ""), (signal.SIGTERM, 143, "stopped by SIGTERM; run the same command again")]


@pytest.mark.parametrize(("stop", "code", "said"), STOPS, ids=["SIGKILL", "SIGTERM"])
def test_killed_overwrite_run_keeps_the_old_store_then_resumes_to_the_same_store(
    reference, imagery_path, bundle_path, store_path, tmp_path, stop, code, said
):
    out = tmp_path / "store"
    old = Store(store_path)
    subprocess.run(["cp", "-r", str(store_path), str(out)], check=True)
    argv = [sys.executable, "-m", "cli.main", *precompute_argv(imagery_path, bundle_path, out, "--overwrite")]
    _, progress = work_paths(out)
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while _positions(progress) < 100 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(stop)
        proc.wait()
        stderr.seek(0)
        err = stderr.read()
        assert proc.returncode == code, f"the run ended before it was stopped: {err}"
        assert said in err
    assert 100 <= _positions(progress) < sum(len(lv) for lv in Store(reference).levels.values())
    assert Store(out).id == old.id  # the store at --out is untouched while the new one is unfinished
    verify_store(Store(out))

    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert not progress.exists() and not work_paths(out)[0].exists()
    assert_same_store(out, reference)


def test_shards_merged_equal_one_run(reference, imagery_path, bundle_path, tmp_path):
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    for i, path in enumerate(shards):
        _run(imagery_path, bundle_path, path, shard=(i, 3))
    read = [sum(m["count"] + m["skipped"] for m in Store(p).manifest["levels"].values()) for p in shards]
    assert min(read) > 0 and max(read) - min(read) <= 2 * BATCH * 5  # near-equal ranges of each level
    with pytest.raises(StoreError, match="each of the 3 shards"):
        merge(shards[:2], tmp_path / "partial")
    killed = tmp_path / ".merged.merge-killed"  # what a merge killed half-way leaves
    (killed / "level_3").mkdir(parents=True)
    merged = merge(list(reversed(shards)), tmp_path / "merged", flat_max=FLAT_MAX)
    assert "shard" not in merged
    assert_same_store(tmp_path / "merged", reference)
    assert not list(tmp_path.glob(".merged.merge-*")), "the killed merge's folder is cleared, and this one's"


def test_resume_refuses_another_plan_without_overwrite(imagery_path, bundle_path, tmp_path):
    out = tmp_path / "store"
    work, progress = work_paths(out)
    work.mkdir()
    progress.write_text(json.dumps({"key": {"other": "plan"}, "batch": 16, "levels": {}}), encoding="utf-8")
    with pytest.raises(StoreError, match="unfinished run of another plan"):
        _run(imagery_path, bundle_path, out, levels=[3, 4])
    assert work.is_dir()
    _run(imagery_path, bundle_path, out, levels=[3, 4], overwrite=True)
    assert len(Store(out).levels[3]) > 0 and not work.exists()

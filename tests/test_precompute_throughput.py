"""benchmarks/precompute_throughput.py's arguments: a data dir without imagery or bundle, or a
baseline data dir without the revision that made it, is refused (exit 2, one sentence) before
minutes of runs start. The runs themselves take minutes each and are measured, not tested."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.precompute_throughput import data_files

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "precompute_throughput.py"


def _demo_dir(root: Path) -> Path:
    (root / "imagery").mkdir(parents=True)
    (root / "imagery" / "bluemarble.tif").write_bytes(b"")
    (root / "bundle").mkdir()
    (root / "bundle" / "manifest.json").write_text("{}", encoding="utf-8")
    return root


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_data_files_finds_imagery_and_bundle(tmp_path: Path) -> None:
    data = _demo_dir(tmp_path / "demo")
    assert data_files(str(data)) == (data / "imagery" / "bluemarble.tif", data / "bundle")


@pytest.mark.parametrize("missing", ["imagery/bluemarble.tif", "bundle/manifest.json"])
def test_data_files_refuses_an_incomplete_dir(tmp_path: Path, missing: str) -> None:
    data = _demo_dir(tmp_path / "demo")
    (data / missing).unlink()
    with pytest.raises(ValueError, match="soundscape demo --build-only"):
        data_files(str(data))


def test_baseline_data_dir_needs_a_baseline(tmp_path: Path) -> None:
    done = _run("--data-dir", str(_demo_dir(tmp_path / "demo")), "--baseline-data-dir", str(tmp_path / "demo"))
    assert done.returncode == 2
    assert "--baseline-data-dir needs --baseline REV" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_baseline_data_dir_is_refused_before_any_run(tmp_path: Path) -> None:
    absent = tmp_path / "base-data"
    done = _run(
        "--data-dir", str(_demo_dir(tmp_path / "demo")), "--baseline", "HEAD", "--baseline-data-dir", str(absent)
    )
    assert done.returncode == 2
    assert f"{absent} holds no imagery/bluemarble.tif" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_baseline_that_is_no_commit_is_refused_before_any_run(tmp_path: Path) -> None:
    done = _run("--data-dir", str(_demo_dir(tmp_path / "demo")), "--baseline", "no-such-revision-0")
    assert done.returncode == 2
    assert "--baseline no-such-revision-0 is no commit of this repository" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""

"""An unfinished run resumed with inputs that would embed its remaining cells otherwise (imagery
files rewritten since it started, other graphs) is refused in a sentence, never mixed into one
store; --overwrite rebuilds it from the inputs as they are."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from precompute.run import run
from runtime.bundle import Bundle
from runtime.imagery import Imagery
from store.format import StoreError
from store.writer import PartialStore, work_paths
from tests.conftest import FIXTURE_BBOX
from tests.test_precompute_resume import assert_same_store
from tests.test_store_failures import _argv, _killed_at


def _invert(path: Path) -> None:
    """Rewrite the raster in place with other pixels: same size, place and bands (a reprocessed
    version of the same scene)."""
    with rasterio.open(path) as src:
        profile, pixels = src.profile, src.read()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.iinfo(pixels.dtype).max - pixels)


@pytest.mark.slow
def test_a_resume_over_rewritten_imagery_is_refused_then_rebuilt(imagery_path, bundle_path, tmp_path):
    imagery = tmp_path / "scene.tif"
    shutil.copy(imagery_path, imagery)
    out = tmp_path / "store"
    argv = _argv(imagery, bundle_path, out)
    _killed_at(argv, "store.writer:PartialStore.save", 3)
    _invert(imagery)
    resumed = subprocess.run([sys.executable, "-m", "cli.main", *argv], capture_output=True, text=True)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr
    assert f"imagery file {imagery} changed" in resumed.stderr and "--overwrite" in resumed.stderr, resumed.stderr
    assert work_paths(out)[0].is_dir() and not out.exists()  # the unfinished run is kept, nothing mixed

    rebuilt = subprocess.run([sys.executable, "-m", "cli.main", *argv, "--overwrite"], capture_output=True, text=True)
    assert rebuilt.returncode == 0, rebuilt.stderr
    fresh = tmp_path / "fresh"
    done = subprocess.run([sys.executable, "-m", "cli.main", *_argv(imagery, bundle_path, fresh)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert_same_store(out, fresh)


def test_a_resume_on_other_graphs_is_refused(imagery_path, bundle_path, tmp_path, monkeypatch):
    out = tmp_path / "store"
    save, saves = PartialStore.save, []

    def interrupted(self: PartialStore) -> None:  # Ctrl-C after the second batch
        save(self)
        saves.append(1)
        if len(saves) == 3:
            raise KeyboardInterrupt

    def embed(bundle: Bundle) -> None:
        run(Imagery(imagery_path), bundle, [3, 4, 5], FIXTURE_BBOX, out, batch=4, progress=False)

    with monkeypatch.context() as patched:
        patched.setattr(PartialStore, "save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            embed(Bundle(bundle_path))
    other = Bundle(bundle_path)
    monkeypatch.setattr(other, "precision", "fp16")  # as a GPU's run of its float16 graphs reports
    with pytest.raises(StoreError, match="fp32 graphs on the CPU provider, not fp16"):
        embed(other)
    embed(Bundle(bundle_path))  # the device it started on finishes it
    assert (out / "manifest.json").is_file()

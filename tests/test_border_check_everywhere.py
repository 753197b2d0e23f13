"""The black-border check ran at precompute start only: training from a csv folder cut its cells
from a mosaic whose file's black collar covers the next file's pixels, trained on that black as
imagery, silently, and the server drew the same black into its basemap without a word. Training now
refuses it as precompute does (exit 2, the same sentence, the remedy training has: the file's own
nodata, since data.imagery takes no --nodata); the server warns at start and serves the basemap."""

from __future__ import annotations

import logging
import shutil
import time

import pytest
import rasterio
import yaml

from cli.main import main as soundscape
from model.data import reader
from tests.server_support import make_client
from tests.test_imagery_audit import source  # noqa: F401  (a fixture this module uses)
from tests.test_mosaic_borders import collared  # noqa: F401  (a fixture this module uses)
from tests.test_own_data import run_config, write_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTENCE = "has a black border (pixels 0, 0, 0; no nodata declared) that covers"


def test_training_refuses_a_black_border_over_the_next_files_pixels(collared, tmp_path, capsys):  # noqa: F811
    folder, _ = collared
    west = str(folder / "a-west.tif")
    root = write_folder(tmp_path / "d", 12, image=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(run_config({"root": str(root), "imagery": str(folder)}).to_dict()), encoding="utf-8"
    )
    run = tmp_path / "run"
    assert soundscape(["train", "--config", str(config), "--out", str(run), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err and err.strip().count("\n") == 0, err
    assert err.startswith(f"soundscape train: imagery {west!r} {SENTENCE} {str(folder / 'b-east.tif')!r}")
    assert err.strip().endswith(
        f"since a mosaic takes black for imagery: declare its black no imagery first (gdal_edit.py -a_nodata 0 "
        f"{west}), or mask the border (nearblack -setmask)"
    )
    assert not (run / "last.pt").exists() and not (run / "metrics.csv").exists()


def test_training_reads_the_mosaic_once_the_border_is_declared(collared, tmp_path):  # noqa: F811
    """The remedy the sentence names: the file's black declared nodata (gdal_edit.py -a_nodata 0)."""
    folder, _ = collared
    declared = tmp_path / "declared"
    shutil.copytree(folder, declared)
    with rasterio.open(declared / "a-west.tif", "r+") as dataset:
        dataset.nodata = 0
    root = write_folder(tmp_path / "d", 12, image=False)
    splits = reader("csv")({"root": str(root), "imagery": str(declared)}, 16)
    assert len([*splits.train.rows, *splits.val.rows, *splits.test.rows]) == 12


def test_the_server_warns_of_a_basemap_border_and_still_draws_it(
    collared,  # noqa: F811
    bundle_path,
    store_path,
    caplog,
):
    """The basemap is a picture under the heatmap, not what the cells were embedded from: a
    warning from start-up (its check runs beside it, not before it), naming the file and the fix,
    and the basemap served."""
    folder, _ = collared
    west = str(folder / "a-west.tif")

    def border_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("basemap: ")]

    with (
        caplog.at_level(logging.WARNING, logger="server.service"),
        make_client(bundle_path, store_path, imagery=str(folder)) as client,
    ):
        assert client.get("/basemap/3/4/2.webp").status_code == 200
        deadline = time.monotonic() + 30
        while not border_warnings() and time.monotonic() < deadline:
            time.sleep(0.05)
    [warning] = border_warnings()
    assert warning.startswith(f"basemap: imagery {west!r} {SENTENCE} {str(folder / 'b-east.tif')!r}")
    assert warning.endswith(
        f"(gdal_edit.py -a_nodata 0 {west}), or mask the border (nearblack -setmask); "
        "the basemap draws that border black until then"
    )

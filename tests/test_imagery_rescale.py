"""Imagery that is not 8-bit (uint16 reflectance x 10000, as most satellite products ship)
through `soundscape precompute --rescale` into a store, and the server's basemap of that store."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import Resampling

from cli.main import main
from precompute.run import RunOptions, make_plan, run_key
from runtime.bundle import Bundle
from runtime.imagery import Imagery
from store.reader import Store
from tests.conftest import FIXTURE_BBOX, precompute_args
from tests.server_support import make_client
from tests.test_cli import _fails

BASEMAP = "/basemap/3/4/2.webp"  # over the fixture's crop


@pytest.fixture(scope="module")
def uint16_path(imagery_path, tmp_path_factory):
    """The fixture's crop times 10 as uint16, with its overviews."""
    path = tmp_path_factory.mktemp("uint16") / "uint16.tif"
    with rasterio.open(imagery_path) as src:
        data, profile, factors = src.read(), src.profile, src.overviews(1)
    with rasterio.open(path, "w", **{**profile, "dtype": "uint16", "nodata": None}) as dst:
        dst.write(data.astype("uint16") * 10)
        if factors:
            dst.build_overviews(factors, Resampling.average)
    return path


def test_precompute_refuses_16_bit_imagery_without_a_range(capsys, uint16_path, bundle_path, tmp_path):
    """uint16 imagery was clipped to 0..255, silently: a store of near-white cells."""
    out = tmp_path / "store"
    line = _fails(capsys, precompute_args(uint16_path, bundle_path, "3", out, "--quiet"))
    assert "has uint16 pixels and the model reads 8-bit RGB" in line and "--rescale LOW,HIGH" in line
    assert not list(tmp_path.iterdir())


def test_a_rescaled_store_is_the_8_bit_store_and_its_basemap_reads_the_same(
    uint16_path, imagery_path, bundle_path, store_path, tmp_path
):
    out = tmp_path / "store"
    assert main([*precompute_args(uint16_path, bundle_path, "3", out, "--quiet"), "--rescale", "0,2550"]) == 0
    store, eight_bit = Store(out), Store(store_path)
    assert store.manifest["imagery"]["rescale"] == [0, 2550] and "rescale" not in eight_bit.manifest["imagery"]
    ours, theirs = store.levels[3], eight_bit.levels[3]
    assert np.array_equal(ours.arrays.codes, theirs.arrays.codes)
    cosine = (np.asarray(ours.arrays.mu, np.float32) * np.asarray(theirs.arrays.mu, np.float32)).sum(axis=1)
    assert cosine.min() > 0.99  # pixels within 1 of the 8-bit ones embed alike
    with make_client(bundle_path, out) as client, make_client(bundle_path, store_path) as other:
        got, want = client.get(BASEMAP), other.get(BASEMAP)
    assert got.status_code == want.status_code == 200
    pixels = [np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=int) for r in (got, want)]
    assert np.abs(pixels[0] - pixels[1]).mean() < 2  # the store's range read back (near-white without it)


def test_a_run_read_another_way_is_another_run(uint16_path, bundle_path):
    """A resumed precompute with another --rescale or --nodata mixed cells read two ways in one
    store, since the run's key named the imagery's path but not how it was read."""
    bundle = Bundle(bundle_path)

    def key(**reading) -> str:
        imagery = Imagery(uint16_path, **reading)
        plan = make_plan(imagery, [3], FIXTURE_BBOX)
        return json.dumps(run_key(imagery, bundle, plan, RunOptions()), sort_keys=True)

    keys = {key(rescale=(0, 2550)), key(rescale=(0, 3000)), key(rescale=(0, 2550), nodata=0)}
    assert len(keys) == 3


def test_training_reads_16_bit_imagery_through_data_rescale(uint16_path, imagery_path, tmp_path):
    """A csv folder's cells cut from uint16 imagery were clipped to 0..255 as precompute's were:
    a model trained on near-white cells. Now refused without data.rescale, and read through it."""
    from model.data import reader
    from runtime.errors import UserError
    from tests.test_own_data import write_folder

    root = write_folder(tmp_path / "d", 12, image=False)
    section = {"root": str(root), "imagery": str(uint16_path), "level": 5}
    with pytest.raises(UserError, match=r"data\.rescale"):
        reader("csv")(section, 16)
    with pytest.raises(ValueError, match="the low below the high"):
        reader("csv")({**section, "rescale": [3000, 0]}, 16)
    rescaled = reader("csv")({**section, "rescale": [0, 2550]}, 16).train
    eight_bit = reader("csv")({**section, "imagery": str(imagery_path)}, 16).train
    for i in range(len(eight_bit)):
        got, want = rescaled[i].image, eight_bit[i].image
        assert got is not None and want is not None
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1

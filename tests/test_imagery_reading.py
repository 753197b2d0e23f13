"""Imagery read another way than 8-bit red, green, blue in bands 1, 2, 3: uint16 reflectance x
10000 (as most satellite products ship) through `--rescale`, a blue-green-red stack through
`--bands`, into a store, the server's basemap of that store, and training's cells."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling

from cli.main import main
from precompute.run import RunOptions, make_plan, run_key
from runtime.bundle import Bundle
from runtime.imagery import Imagery, ImageryError
from store.reader import Store
from tests.conftest import FIXTURE_BBOX, precompute_args
from tests.server_support import make_client
from tests.test_cli import _fails

BASEMAP = "/basemap/3/4/2.webp"  # over the fixture's crop
SIZE = 32


def _rewritten(imagery_path, path, data_of, colours=None, **profile_changes):
    """The fixture's crop with its pixels changed by `data_of` (its overviews rebuilt), declaring
    `colours` as the bands' colour interpretation where given."""
    with rasterio.open(imagery_path) as src:
        data, profile, factors = src.read(), src.profile, src.overviews(1)
    data = data_of(data)
    with rasterio.open(path, "w", **{**profile, "count": len(data), "nodata": None, **profile_changes}) as dst:
        dst.write(data)
        if colours:
            dst.colorinterp = colours
        if factors:
            dst.build_overviews(factors, Resampling.average)
    return path


@pytest.fixture(scope="module")
def uint16_path(imagery_path, tmp_path_factory):
    """The fixture's crop times 10 as uint16."""
    path = tmp_path_factory.mktemp("uint16") / "uint16.tif"
    return _rewritten(imagery_path, path, lambda data: data.astype("uint16") * 10, dtype="uint16")


@pytest.fixture(scope="module")
def bgr_path(imagery_path, tmp_path_factory):
    """The fixture's crop as blue, green, red, declared so."""
    path = tmp_path_factory.mktemp("bgr") / "bgr.tif"
    colours = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    return _rewritten(imagery_path, path, lambda data: data[::-1], colours)


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
    assert _least_cosine(store, eight_bit) > 0.99  # pixels within 1 of the 8-bit ones embed alike
    assert _basemap_difference(bundle_path, out, store_path) < 2  # the store's range read back (near-white without)


def _least_cosine(store: Store, other: Store) -> float:
    """The least cosine between the level-3 means of two stores of the same cells."""
    ours, theirs = store.levels[3], other.levels[3]
    assert np.array_equal(ours.arrays.codes, theirs.arrays.codes)
    return float((np.asarray(ours.arrays.mu, np.float32) * np.asarray(theirs.arrays.mu, np.float32)).sum(1).min())


def _basemap_difference(bundle_path, store, other) -> float:
    """The mean difference of two stores' basemap tiles over the crop, in 8-bit levels."""
    with make_client(bundle_path, store) as client, make_client(bundle_path, other) as peer:
        answers = client.get(BASEMAP), peer.get(BASEMAP)
    assert [r.status_code for r in answers] == [200, 200]
    pixels = [np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=int) for r in answers]
    return float(np.abs(pixels[0] - pixels[1]).mean())


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


def test_a_stack_of_other_colours_is_read_through_its_bands(bgr_path, imagery_path, tmp_path):
    """Bands 1, 2, 3 were read as red, green, blue whatever the file said: a blue-green-red stack
    was embedded with red and blue swapped. A file that declares other colours there is refused
    with the bands to give; with them, its cells are the RGB file's."""
    with pytest.raises(ImageryError) as refused:
        Imagery(bgr_path)
    assert "declares bands 1, 2, 3 as blue, green, red" in str(refused.value)
    assert "--bands 3,2,1" in str(refused.value) and "data.bands: [3, 2, 1]" in str(refused.value)
    same = _rewritten(imagery_path, tmp_path / "rgb.tif", lambda data: data)  # overviews built as bgr_path's
    stack, rgb = Imagery(bgr_path, rgb_bands=(3, 2, 1)), Imagery(same)
    for z, x, y in ((5, 16, 10), (6, 33, 22)):
        assert np.array_equal(stack.cell(z, x, y, SIZE).rgb, rgb.cell(z, x, y, SIZE).rgb)
    assert stack.describe()["rgb_bands"] == [3, 2, 1] and "rgb_bands" not in rgb.describe()
    with pytest.raises(ImageryError, match="has 3 band\\(s\\), so no band 4 to read as a colour"):
        Imagery(bgr_path, rgb_bands=(4, 2, 1))
    for bad in ((3, 2), (0, 1, 2), ("a", 1, 2)):
        with pytest.raises(ValueError, match="three band numbers"):
            Imagery(bgr_path, rgb_bands=bad)


def test_precompute_reads_the_bands_it_is_given_and_the_basemap_too(
    bgr_path, bundle_path, store_path, tmp_path, capsys
):
    out = tmp_path / "store"
    line = _fails(capsys, precompute_args(bgr_path, bundle_path, "3", out, "--quiet"))
    assert "--bands 3,2,1" in line
    assert main([*precompute_args(bgr_path, bundle_path, "3", out, "--quiet"), "--bands", "3,2,1"]) == 0
    store, rgb = Store(out), Store(store_path)
    assert store.manifest["imagery"]["rgb_bands"] == [3, 2, 1]
    assert _least_cosine(store, rgb) > 0.99  # the same pixels but for overviews, embedded alike
    assert _basemap_difference(bundle_path, out, store_path) < 2  # (swapped colours without the bands)
    assert "argument --bands: bands are three band numbers" in _refused_by_argparse(
        capsys, [*precompute_args(bgr_path, bundle_path, "3", tmp_path / "x", "--quiet"), "--bands", "3,2"]
    )


def _refused_by_argparse(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_training_reads_the_bands_of_data_bands(bgr_path, imagery_path, tmp_path):
    from model.data import reader
    from tests.test_own_data import write_folder

    root = write_folder(tmp_path / "d", 12, image=False)
    section = {"root": str(root), "imagery": str(bgr_path), "level": 5, "bands": [3, 2, 1]}
    stack = reader("csv")(section, 16).train
    rgb = reader("csv")({**section, "imagery": str(imagery_path), "bands": None}, 16).train
    assert all(np.array_equal(stack[i].image, rgb[i].image) for i in range(len(rgb)))
    with pytest.raises(ValueError, match="three band numbers"):
        reader("csv")({**section, "bands": [3, 2]}, 16)


def test_stores_reading_one_file_otherwise_share_no_basemap_through_redis(
    bgr_path, bundle_path, tmp_path, redis_server
):
    """The basemap's cache key named the imagery's path alone: through one Redis, a store reading
    the file as blue-green-red served the picture another store had drawn in its own colours."""
    swapped, plain = tmp_path / "swapped", tmp_path / "plain"
    assert main([*precompute_args(bgr_path, bundle_path, "3", swapped, "--quiet"), "--bands", "3,2,1"]) == 0
    assert main([*precompute_args(bgr_path, bundle_path, "3", plain, "--quiet"), "--bands", "1,2,3"]) == 0
    drawn = {}
    for store in (swapped, plain):
        with make_client(bundle_path, store, redis_url=redis_server) as client:
            drawn[store] = client.get(BASEMAP).content
    with make_client(bundle_path, plain) as alone:
        assert drawn[plain] == alone.get(BASEMAP).content != drawn[swapped]

"""The shared imagery reader on rasters as users bring them: mosaics of files that differ in how
their pixels are to be read, rasters without georeferencing, and other real-world layouts. Each
either reads right or is refused in one sentence before any work, never read wrongly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

from runtime.imagery import Imagery, ImageryError
from tests.conftest import precompute_args
from tests.test_cli import _fails

SIZE = 32


@pytest.fixture(scope="module")
def source(imagery_path):
    with rasterio.open(imagery_path) as src:
        return src.read(), src.profile


def _write(path: Path, data: np.ndarray, profile: dict, colours=None, **changes) -> Path:
    profile = {**profile, "count": len(data), "dtype": str(data.dtype), "nodata": None, **changes}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colours:
            dst.colorinterp = colours
    return path


def _halves(source, folder: Path, east=lambda data: data, west=lambda data: data, **east_changes) -> Path:
    """The crop cut into a west and an east file, each half's pixels changed by its function."""
    data, profile = source
    folder.mkdir()
    split = data.shape[2] // 2
    for name, part, change, changes in (
        ("a-west.tif", data[:, :, :split], west, {}),
        ("b-east.tif", data[:, :, split:], east, east_changes),
    ):
        offset = 0 if name.startswith("a") else split
        transform = profile["transform"] * profile["transform"].translation(offset, 0)
        _write(folder / name, change(part), profile, width=part.shape[2], transform=transform, **changes)
    return folder


def _reflectance(data: np.ndarray) -> np.ndarray:
    return data.astype("uint16") * 10


def test_a_mosaic_of_8_and_16_bit_files_is_refused_not_rescaled_alike(source, tmp_path):
    """One --rescale range read every file of a mosaic: uint8 files beside uint16 reflectance x 10
    came out near-black (their 0..255 read as 0..25 of 0..2550), silently."""
    folder = _halves(source, tmp_path / "mixed", east=_reflectance)
    for reading in ({}, {"rescale": (0, 2550)}):
        with pytest.raises(ImageryError) as refused:
            Imagery(folder, **reading)
        assert str(refused.value) == (
            f"imagery {str(folder / 'a-west.tif')!r} has uint8 pixels but {str(folder / 'b-east.tif')!r} has "
            "uint16 pixels: all the imagery is read into 8-bit RGB one way (one --rescale range, or none for "
            "8-bit), which cannot suit both; convert it to one pixel type first"
        )
    both = _halves(source, tmp_path / "both", east=_reflectance, west=_reflectance)
    assert Imagery(both, rescale=(0, 2550)).cell(5, 16, 10, SIZE) is not None  # one type: read as before


def test_a_mosaic_whose_files_declare_other_colours_is_refused_even_with_bands(source, tmp_path):
    """An RGB file beside a blue-green-red one: the latter was refused with '--bands 3,2,1', and
    with it the RGB file was read with red and blue swapped, silently."""
    folder = _halves(
        source,
        tmp_path / "bgr",
        east=lambda data: data[::-1],
        colours=[ColorInterp.blue, ColorInterp.green, ColorInterp.red],
    )
    for reading, band, west, east in (({}, 1, "red", "blue"), ({"rgb_bands": (3, 2, 1)}, 3, "blue", "red")):
        with pytest.raises(ImageryError) as refused:
            Imagery(folder, **reading)
        assert str(refused.value) == (
            f"imagery {str(folder / 'a-west.tif')!r} declares band {band} {west} but {str(folder / 'b-east.tif')!r} "
            "declares it " + east + ": one --bands cannot read both in their colours; give files of one band order"
        )


def test_a_mosaic_whose_files_scale_their_values_differently_is_refused(source, tmp_path):
    """Sentinel-2 L2A before 2022 (reflectance = v / 10000) beside after (v / 10000 - 0.1): one
    range read the same ground in two brightnesses, silently."""

    folder = _halves(source, tmp_path / "scaled", east=_reflectance, west=_reflectance)
    for name, offset in (("a-west.tif", 0.0), ("b-east.tif", -0.1)):
        with rasterio.open(folder / name, "r+") as dst:
            dst.scales, dst.offsets = (0.0001,) * 3, (offset,) * 3
    with pytest.raises(ImageryError) as refused:
        Imagery(folder, rescale=(0, 3000))
    assert "has pixels v that stand for v x 0.0001 but" in str(refused.value)
    assert "for v x 0.0001 - 0.1 (the bands' scale and offset)" in str(refused.value)


def test_precompute_refuses_a_mixed_mosaic_before_any_work(source, bundle_path, tmp_path, capsys):
    folder = _halves(source, tmp_path / "mixed", east=_reflectance)
    out = tmp_path / "out" / "store"
    line = _fails(capsys, [*precompute_args(folder, bundle_path, "3", out, "--quiet"), "--rescale", "0,2550"])
    assert "has uint8 pixels but" in line and "has uint16 pixels" in line
    assert not (tmp_path / "out").exists()


def test_a_raster_that_is_not_georeferenced_is_refused(source, tmp_path, bundle_path, capsys):
    """A file with a CRS but no geotransform was placed with its corner at 0, 0 and a degree per
    pixel (bounds 0..720 E, 0..510 N: cells off West Africa), silently; one without a CRS failed
    with "'NoneType' object has no attribute 'is_geographic'"."""
    data, profile = source
    placeless = _write(tmp_path / "placeless.tif", data, profile, transform=None)
    crsless = _write(tmp_path / "crsless.tif", data, profile, crs=None)
    with pytest.raises(ImageryError, match="has a coordinate reference system but no geotransform or ground control"):
        Imagery(placeless)
    with pytest.raises(ImageryError, match=r"has no coordinate reference system, .* give it one"):
        Imagery(crsless)
    out = tmp_path / "out" / "store"
    line = _fails(capsys, precompute_args(placeless, bundle_path, "3", out, "--quiet"))
    assert "georeference it first" in line and not (tmp_path / "out").exists()


def test_a_raster_placed_by_ground_control_points_reads_where_they_say(source, imagery_path, tmp_path):
    data, profile = source
    height, width = data.shape[1:]
    west, south, east, north = rasterio.open(imagery_path).bounds
    corners = [(0, 0, west, north), (0, width, east, north), (height, 0, west, south), (height, width, east, south)]
    gcps = [GroundControlPoint(row, col, x, y) for row, col, x, y in corners]
    path = _write(tmp_path / "gcps.tif", data, profile, transform=None, crs=None)
    with rasterio.open(path, "r+") as dst:
        dst.gcps = (gcps, CRS.from_epsg(4326))
    placed, plain = Imagery(path), Imagery(imagery_path)
    assert placed.bounds == pytest.approx(plain.bounds)
    for z, x, y in ((5, 16, 10), (6, 33, 22)):
        a, b = placed.cell(z, x, y, SIZE), plain.cell(z, x, y, SIZE)
        assert a.valid.all() and np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() < 2


def test_invalid_pixels_stay_zero_under_a_range_below_zero(source, tmp_path):
    """CellImage's invalid pixels are zero; int16 imagery read through -500..2050 made them the
    grey of 0 in that range (50), fed to the model at a footprint's edge as imagery."""
    data, profile = source
    path = _write(tmp_path / "int16.tif", (data.astype("int16") * 10 - 500).astype("int16"), profile)
    edge = Imagery(path, rescale=(-500, 2050)).cell(3, 4, 2, SIZE)  # 0..45 E: the crop ends at 36 E
    want = Imagery(_write(tmp_path / "uint8.tif", data, profile)).cell(3, 4, 2, SIZE)  # no overviews either
    assert edge is not None and 0.5 <= edge.valid_fraction < 1
    assert not edge.rgb[~edge.valid].any()
    assert np.abs(edge.rgb.astype(int) - want.rgb.astype(int)).max() <= 1

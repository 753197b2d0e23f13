"""A mosaic file's black border (pixels 0, 0, 0, no nodata declared, as a reprojected scene's
collar) covered the next file's pixels where they overlap: a directory's first file with a valid
pixel gives it, and GDAL paints a VRT's sources in order, so the cells there were embedded black,
silently. Precompute now refuses such a mosaic in one sentence naming the remedy."""

from __future__ import annotations

from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio

from runtime.imagery import Imagery, ImageryError, check_black_borders
from tests.conftest import precompute_args
from tests.test_cli import _fails
from tests.test_imagery_audit import _halves, _write, source  # noqa: F401  (a fixture this module uses)

SIZE = 32
COLLAR = 12  # pixels of black around the west file's imagery


@pytest.fixture(scope="module")
def collared(source, tmp_path_factory):  # noqa: F811
    """The crop as two files overlapping in its middle fifth, the west one's imagery inside a
    black collar (its east edge, and strips along its others), the east one's whole; and where in
    the overlap the collar lies (lon, lat)."""
    data, profile = source
    folder = tmp_path_factory.mktemp("collared")
    width = data.shape[2]
    west_end, east_start = width * 3 // 5, width * 2 // 5
    west = data[:, :, :west_end].copy()
    west[:, :, -COLLAR:] = west[:, :COLLAR, :] = west[:, -COLLAR:, :] = 0
    transform = profile["transform"]
    _write(folder / "a-west.tif", west, profile, width=west_end)
    east = data[:, :, east_start:]
    _write(
        folder / "b-east.tif",
        east,
        profile,
        width=east.shape[2],
        transform=transform * transform.translation(east_start, 0),
    )
    lon, lat = transform * (west_end - COLLAR / 2, data.shape[1] / 2)
    return folder, (lon, lat)


def _cell(lon: float, lat: float, level: int = 7) -> tuple[int, int, int]:
    x, y = mercantile.tile(lon, lat, level)[:2]
    return level, x, y


def test_a_black_border_over_the_next_files_pixels_is_refused_with_the_remedy(collared, imagery_path):
    folder, (lon, lat) = collared
    imagery = Imagery(folder)
    z, x, y = _cell(lon, lat)
    hidden, truth = imagery.cell(z, x, y, SIZE), Imagery(imagery_path).cell(z, x, y, SIZE)
    # The defect: the collar is read as imagery, black, where the east file has the crop's pixels.
    assert hidden is not None and hidden.valid.all() and (hidden.rgb.max(axis=2) == 0).mean() > 0.2
    assert (truth.rgb.max(axis=2) == 0).mean() < 0.01
    with pytest.raises(ImageryError) as refused:
        check_black_borders(imagery)
    west, east = str(folder / "a-west.tif"), str(folder / "b-east.tif")
    assert str(refused.value).startswith(
        f"imagery {west!r} has a black border (pixels 0, 0, 0; no nodata declared) that covers {east!r} where they "
        "overlap ("
    )
    assert str(refused.value).endswith(
        "points sampled on its edge), since a mosaic takes black for imagery: give --nodata 0 to read black as no "
        "imagery, or mask the border first (nearblack -setmask)"
    )
    # The remedy: black is no imagery, and the east file gives the overlap's pixels.
    remedied = Imagery(folder, nodata=0)
    check_black_borders(remedied)
    got = remedied.cell(z, x, y, SIZE)
    assert got.valid.all() and np.abs(got.rgb.astype(int) - truth.rgb.astype(int)).mean() < 2


def test_precompute_refuses_it_before_any_work(collared, bundle_path, tmp_path, capsys):
    folder, _ = collared
    out = tmp_path / "out" / "store"
    line = _fails(capsys, precompute_args(folder, bundle_path, "5", out, "--quiet", "--dry-run"))
    assert "has a black border" in line and "give --nodata 0" in line and not (tmp_path / "out").exists()


def test_a_border_that_hides_nothing_is_not_refused(collared, source, tmp_path):  # noqa: F811
    """Black at the edge is refused only over another file's imagery: the collared file beneath
    the other (whose pixels win), a file declaring nodata 0, files that only abut, a single file."""
    folder, _ = collared
    west, east = folder / "a-west.tif", folder / "b-east.tif"
    check_black_borders(Imagery([east, west]))
    check_black_borders(Imagery(west))
    with rasterio.open(west) as src:
        declared = _write(tmp_path / "declared.tif", src.read(), src.profile, nodata=0)
    check_black_borders(Imagery([declared, east]))
    check_black_borders(Imagery(_halves(source, tmp_path / "halves")))


def _vrt(path: Path, files: list[Path], nodata: bool) -> Path:
    """A VRT of the files in the crop's grid, painted in order, as gdalbuildvrt writes one
    (with -srcnodata 0 where `nodata`)."""
    with rasterio.open(files[0]) as first:
        transform, height = first.transform, first.height
    extents = []
    for file in files:
        with rasterio.open(file) as src:
            extents.append((round((src.transform.c - transform.c) / transform.a), src.width))
    width = max(offset + w for offset, w in extents)
    kind, extra = ("ComplexSource", "<NODATA>0</NODATA>") if nodata else ("SimpleSource", "")
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">'
        + "".join(
            f'<{kind}><SourceFilename relativeToVRT="0">{file}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{height}"/>'
            f'<DstRect xOff="{offset}" yOff="0" xSize="{w}" ySize="{height}"/>{extra}</{kind}>'
            for file, (offset, w) in zip(files, extents, strict=True)
        )
        + "</VRTRasterBand>"
        for b in (1, 2, 3)
    )
    geotransform = ", ".join(map(str, transform.to_gdal()))
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:4326</SRS>'
        f"<GeoTransform>{geotransform}</GeoTransform>{bands}</VRTDataset>",
        encoding="utf-8",
    )
    return path


def test_a_vrt_whose_later_source_has_a_black_border_is_refused(collared, imagery_path, tmp_path):
    """GDAL paints a VRT's sources in order: the collared file listed last covers the other's
    pixels, and --nodata 0 masks only what the VRT gives, so the remedy is its -srcnodata 0."""
    folder, (lon, lat) = collared
    west, east = folder / "a-west.tif", folder / "b-east.tif"
    vrt = _vrt(tmp_path / "mosaic.vrt", [east, west], nodata=False)
    z, x, y = _cell(lon, lat)
    assert (Imagery(vrt).cell(z, x, y, SIZE).rgb.max(axis=2) == 0).mean() > 0.2  # the defect, inside GDAL
    for reading in ({}, {"nodata": 0}):
        with pytest.raises(ImageryError) as refused:
            check_black_borders(Imagery(vrt, **reading))
        assert str(refused.value).startswith(f"imagery {str(west)!r} has a black border")
        assert str(refused.value).endswith(f"rebuild {str(vrt)!r} with gdalbuildvrt -srcnodata 0")
    fixed = _vrt(tmp_path / "fixed.vrt", [east, west], nodata=True)
    check_black_borders(Imagery(fixed))
    check_black_borders(Imagery(_vrt(tmp_path / "under.vrt", [west, east], nodata=False)))  # the east file on top
    truth = Imagery(imagery_path).cell(z, x, y, SIZE)
    assert np.abs(Imagery(fixed).cell(z, x, y, SIZE).rgb.astype(int) - truth.rgb.astype(int)).mean() < 2

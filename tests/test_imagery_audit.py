"""The shared imagery reader on rasters as users bring them: mosaics of files that differ in how
their pixels are to be read, rasters without georeferencing, and other real-world layouts. Each
either reads right or is refused in one sentence before any work, never read wrongly."""

from __future__ import annotations

from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from cli.main import main
from precompute.plan import Plan
from precompute.run import RunOptions, make_plan, run, run_key
from runtime.bundle import Bundle
from runtime.imagery import Imagery, ImageryError
from runtime.tiles import WORLD_BBOX, demorton
from store.reader import Store
from tests.conftest import precompute_args, reprojected
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


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # written so on purpose
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


def test_a_rotated_raster_is_refused_with_the_warp_that_reads_it(source, tmp_path, bundle_path, capsys):
    """A geotransform with rotation terms (aerial strips, some scanned maps) read no pixel through
    rio-tiler: precompute wrote a store of every cell 'without imagery' and exited 0."""
    data, profile = source
    t = profile["transform"]
    rotated = _write(tmp_path / "rotated.tif", data, profile, transform=rasterio.Affine(t.a, 0.01, t.c, 0.01, t.e, t.f))
    with pytest.raises(ImageryError, match=r"has a rotated or sheared geotransform .*\(gdalwarp IN OUT\)"):
        Imagery(rotated)
    out = tmp_path / "out" / "store"
    assert "gdalwarp" in _fails(capsys, precompute_args(rotated, bundle_path, "3", out, "--quiet"))
    assert not (tmp_path / "out").exists()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # written so on purpose
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


@pytest.fixture(scope="module")
def antimeridian(source, tmp_path_factory):
    """A 20-degree slice of the crop placed at 170 E .. 170 W: as two geographic files split at
    the antimeridian (a mosaic), as one geographic file running to 190 E, and warped into UTM
    zone 60N, whose one footprint crosses the antimeridian."""
    data, profile = source
    folder = tmp_path_factory.mktemp("antimeridian")
    res = profile["transform"].a
    width = round(10 / res)
    halves = folder / "halves"
    halves.mkdir()
    for name, west, part in (("east.tif", 170, data[:, :, :width]), ("west.tif", -180, data[:, :, width : 2 * width])):
        _write(halves / name, part, profile, width=width, transform=from_origin(west, 62, res, res))
    whole = _write(
        folder / "to190.tif",
        data[:, :, : 2 * width],
        profile,
        width=2 * width,
        transform=from_origin(170, 62, res, res),
    )
    utm = reprojected(whole, folder / "utm60.tif", "EPSG:32660")
    return halves, whole, utm


def test_a_raster_across_the_antimeridian_is_read_on_both_sides(antimeridian):
    """A UTM zone 60 scene across 180 degrees: its bounds came back west > east (168 E .. 168 W),
    one box that met no cell, so every cell was skipped and precompute refused it as not
    overlapping the world; rio-tiler reads it on both sides."""
    halves, _, utm = antimeridian
    crossing, truth = Imagery(utm), Imagery(halves)
    assert len(crossing.extent) == 2 and crossing.extent[0][2] == 180 and crossing.extent[1][0] == -180
    assert [pytest.approx(box) for box in truth.extent] == [(170, 28, 180, 62), (-180, 28, -170, 62)]
    assert crossing.bounds[0] == -180 and crossing.bounds[2] == 180
    for lon in (175.0, -175.0):
        x, y = mercantile.tile(lon, 50, 6)[:2]
        got, want = crossing.cell(6, x, y, SIZE), truth.cell(6, x, y, SIZE)
        assert got is not None and got.valid.all(), lon
        assert np.abs(got.rgb.astype(int) - want.rgb.astype(int)).mean() < 3


def test_a_geographic_raster_beyond_180_degrees_is_refused(antimeridian):
    """A geographic file running from 170 E to 190 E: rio-tiler reads no pixel beyond 180, so the
    cells west of 180 W were skipped as having no imagery, silently."""
    _, whole, _ = antimeridian
    with pytest.raises(ImageryError) as refused:
        Imagery(whole)
    assert f"imagery {str(whole)!r} spans longitudes 170..190, beyond -180..180" in str(refused.value)
    assert "cut it at the antimeridian into two files" in str(refused.value)


def test_precompute_across_the_antimeridian_stores_both_sides_and_plans_only_them(antimeridian, bundle_path, tmp_path):
    halves, _, utm = antimeridian
    for source in (utm, halves):
        imagery = Imagery(source)
        plan = make_plan(imagery, [9], WORLD_BBOX)
        sides = sum(len(Plan([9], box).level(9)) for box in imagery.extent)
        assert len(plan.level(9)) == sides < 512 * 60 // 4  # the two sides' cells, not every longitude's
        out = tmp_path / source.name
        assert main(precompute_args(source, bundle_path, "5-6", out, "--quiet")) == 0
        store = Store(out)
        assert store.bounds[0] == -180 and store.bounds[2] == 180
        for level in (5, 6):
            x, _ = demorton(store.levels[level].arrays.codes.astype(np.uint64))
            half = 1 << (level - 1)
            assert (x < half).sum() > 0 and (x >= half).sum() > 0  # cells west and east of 180 degrees


def test_a_polar_stereographic_raster_around_the_pole_has_its_own_resolution(imagery_path, tmp_path):
    """A raster in NSIDC's north polar stereographic (EPSG:3413) centred on the pole: its
    resolution was measured at its centre, the pole, where web mercator has no place, giving
    197,000 km pixels, and precompute refused every level as enlarging them."""
    size, pixel = 300, 40_000.0  # +-6000 km around the pole, 40 km pixels: Europe's crop reaches in
    transform = from_origin(-size / 2 * pixel, size / 2 * pixel, pixel, pixel)
    path = reprojected(imagery_path, tmp_path / "polar.tif", "EPSG:3413", (transform, size, size))
    imagery = Imagery(path)
    assert imagery.bounds[3] == 90 and imagery.bounds[0] == -180
    # 40 km pixels, measured where the mercator square ends (~85 N): about 40 / cos(85) km.
    assert 40_000 < imagery.resolution_m < 40_000 / np.cos(np.radians(84))
    coarsest, finest = imagery.level_range(SIZE, 8.0)
    assert coarsest <= 3 <= finest
    x, y = mercantile.tile(15, 60, 3)[:2]  # Scandinavia: from the crop, through the pole's grid
    got, want = imagery.cell(3, x, y, SIZE), Imagery(imagery_path).cell(3, x, y, SIZE)
    both = got.valid & want.valid
    assert both.mean() > 0.5 and np.abs(got.rgb[both].astype(int) - want.rgb[both].astype(int)).mean() < 12


def test_a_damaged_file_is_refused_when_opened_not_at_its_first_cell(
    imagery_path, source, tmp_path, bundle_path, capsys
):
    """A copy cut short, or a VRT naming a file since moved, opened and planned, then failed on
    its first cell with "Read failed. See previous exception for details.", a work folder left
    beside --out."""
    whole = imagery_path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole[: len(whole) * 9 // 10])
    with pytest.raises(ImageryError, match=r"^cannot read imagery '.*cut.tif', which looks damaged or cut short: "):
        Imagery(cut)
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(ImageryError, match=r"empty.tif': the file is empty \(0 bytes\)$"):
        Imagery(tmp_path / "empty.tif")
    data, profile = source
    moved = _write(tmp_path / "moved.tif", data, profile)
    vrt = tmp_path / "mosaic.vrt"  # as gdalbuildvrt writes one
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{moved}'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    geotransform = ", ".join(map(str, profile["transform"].to_gdal()))
    vrt.write_text(
        f'<VRTDataset rasterXSize="{data.shape[2]}" rasterYSize="{data.shape[1]}"><SRS>EPSG:4326</SRS>'
        f"<GeoTransform>{geotransform}</GeoTransform>{bands}</VRTDataset>",
        encoding="utf-8",
    )
    assert Imagery(vrt).cell(5, 16, 10, SIZE) is not None
    moved.rename(tmp_path / "elsewhere.tif")
    with pytest.raises(ImageryError) as refused:
        Imagery(vrt)
    assert str(refused.value) == f"imagery {str(vrt)!r} refers to {str(moved)!r}, which does not exist"
    out = tmp_path / "out" / "store"
    line = _fails(capsys, precompute_args(cut, bundle_path, "3", out, "--quiet"))
    assert "looks damaged or cut short" in line and not (tmp_path / "out").exists()


def test_a_cell_that_fails_names_the_file_and_gdals_reason(source, tmp_path):
    """A mosaic's cell that failed named the source (its directory) and rasterio's 'Read failed.
    See previous exception for details.', not the file that failed nor why."""
    folder = _halves(source, tmp_path / "halves", blockxsize=16, blockysize=16)  # blocks the opening never read
    imagery = Imagery(folder)
    east = folder / "b-east.tif"
    east.write_bytes(east.read_bytes()[:2000])  # cut short after it was opened
    x, y = mercantile.tile(30, 45, 6)[:2]
    with pytest.raises(ImageryError) as failed:
        imagery.cell(6, x, y, SIZE)
    assert str(failed.value).startswith(f"cannot read cell 6/{x}/{y} of imagery {str(east)!r}: ")
    assert "See previous exception" not in str(failed.value)


def test_a_range_in_the_units_of_the_bands_scale_is_refused_with_the_stored_one(source, tmp_path):
    """Sentinel-2 L2A since 2022 stores reflectance as v x 0.0001 - 0.1 and gdalinfo shows that
    scale and offset: --rescale 0,0.3 read as reflectance turned every stored value above 0
    white, silently. The range is in stored values; a range holding fewer than two whole values
    of integer pixels is refused, with the stored range it means."""
    data, profile = source
    stored = np.rint((data / 255 * 0.3 + 0.1) / 0.0001).astype("uint16")
    path = _write(tmp_path / "l2a.tif", stored, profile)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (0.0001,) * 3, (-0.1,) * 3
    with pytest.raises(ImageryError) as refused:
        Imagery(path, rescale=(0, 0.3))
    assert "the rescale range 0..0.3 holds fewer than two of them, so every pixel would come out black or white" in str(
        refused.value
    )
    assert str(refused.value).endswith(
        "its values v stand for v x 0.0001 - 0.1 (the bands' scale and offset), so 0..0.3 of those is 1000,4000 in "
        "stored values"
    )
    got = Imagery(path, rescale=(1000, 4000)).cell(5, 16, 10, SIZE)
    want = Imagery(_write(tmp_path / "uint8.tif", data, profile)).cell(5, 16, 10, SIZE)
    assert np.abs(got.rgb.astype(int) - want.rgb.astype(int)).max() <= 1


def test_a_measured_band_declared_alpha_is_refused_and_a_real_alpha_masks(source, tmp_path):
    """GDAL declares the 4th band of a 4-band 8-bit GeoTIFF written with its defaults alpha, so
    red, green, blue, near-infrared imagery had its infrared read as the mask: cells where it is
    0 (here the east third) skipped as having no imagery, and its values weights in the warp."""
    data, profile = source
    nir = (data[1] // 2).astype(np.uint8)
    nir[:, 2 * data.shape[2] // 3 :] = 0
    rgbn = _write(tmp_path / "rgbn.tif", np.concatenate([data, nir[None]]), profile)
    assert rasterio.open(rgbn).colorinterp[3] == ColorInterp.alpha  # as GDAL wrote it
    with pytest.raises(ImageryError) as refused:
        Imagery(rgbn)
    assert f"imagery {str(rgbn)!r} declares band 4 its alpha (transparency) band, but " in str(refused.value)
    assert "rio edit-info --colorinterp red,green,blue,undefined" in str(refused.value)
    with rasterio.open(rgbn, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    x, y = mercantile.tile(33, 45, 6)[:2]  # where the infrared is 0
    declared, plain = Imagery(rgbn).cell(6, x, y, SIZE), Imagery(_write(tmp_path / "rgb.tif", data, profile))
    assert declared is not None and declared.valid.all()
    # GDAL decimates a warped subset of bands a little otherwise than all of them: near, not equal.
    assert np.abs(declared.rgb.astype(int) - plain.cell(6, x, y, SIZE).rgb.astype(int)).mean() < 2

    alpha = np.where(np.arange(data.shape[2]) < data.shape[2] // 3, 0, 255).astype(np.uint8)
    rgba = _write(tmp_path / "rgba.tif", np.concatenate([data, np.broadcast_to(alpha, data.shape[1:])[None]]), profile)
    west, east = mercantile.tile(-8, 45, 6)[:2], mercantile.tile(20, 45, 6)[:2]
    assert Imagery(rgba).cell(6, *west, SIZE) is None and Imagery(rgba).cell(6, *east, SIZE).valid.all()
    with pytest.raises(ImageryError, match=r"declares band 4 its alpha .* cannot be read as a colour too"):
        Imagery(rgba, rgb_bands=(4, 3, 2))


def test_a_paletted_raster_is_told_to_be_expanded(source, tmp_path):
    data, profile = source
    path = _write(tmp_path / "palette.tif", (data[:1] // 32).astype(np.uint8), profile)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, {i: (i * 32, 255 - i * 32, 100, 255) for i in range(256)})
    with pytest.raises(ImageryError) as refused:
        Imagery(path)
    assert str(refused.value) == (
        f"imagery {str(path)!r} is one band of palette colours (a colour map), whose indices cannot be resampled "
        "as colours: expand it to RGB first (gdal_translate -expand rgb)"
    )


def _fine_and_backdrop(source, folder: Path) -> Path:
    """A mosaic of the 7.4 km crop (west of 36 E) and a 74 km backdrop of it east of 36 E."""
    data, profile = source
    folder.mkdir()
    _write(folder / "a-fine.tif", data, profile)
    coarse = data[:, ::10, ::10]
    res = profile["transform"].a * 10
    _write(folder / "b-backdrop.tif", coarse, profile, width=coarse.shape[2], height=coarse.shape[1],
           transform=from_origin(36, 62, res, res))  # fmt: skip
    return folder / "a-fine.tif"


def test_a_mosaics_coarse_backdrop_is_left_out_of_levels_far_finer_than_it(source, tmp_path, bundle_path):
    """The finest file of a mosaic decides its levels: a coarse backdrop beside it (here 74 km
    pixels east of the 7.4 km crop) was embedded at the crop's finest levels from pixels
    enlarged 30 times and more, silently. Precompute leaves a file out of a level that would
    enlarge it more than twice --max-upsample; the basemap still draws it."""
    folder = tmp_path / "mosaic"
    fine = _fine_and_backdrop(source, folder)
    mosaic = Imagery(folder)
    assert [a.path for a in mosaic.left_out(9, SIZE, 8.0)] == [str(folder / "b-backdrop.tif")]
    assert mosaic.left_out(7, SIZE, 8.0) == []
    east, west = mercantile.tile(40, 45, 9)[:2], mercantile.tile(33, 45, 9)[:2]
    assert mosaic.cell(9, *east, SIZE) is not None  # the basemap draws it
    assert mosaic.cell(9, *east, SIZE, max_upsample=8.0) is None
    assert np.array_equal(mosaic.cell(9, *west, SIZE, max_upsample=8.0).rgb, Imagery(fine).cell(9, *west, SIZE).rgb)

    bundle, bbox = Bundle(bundle_path), (33.0, 43.0, 39.0, 47.0)  # across the seam at 36 E
    manifest, _ = run(mosaic, bundle, [7, 9], bbox, tmp_path / "store", progress=False)
    assert manifest["left_out_beyond_upsample"] == 16.0  # in the run's key: another limit is another run
    assert "left_out_beyond_upsample" not in run_key(
        Imagery(fine), bundle, make_plan(Imagery(fine), [9], bbox), RunOptions()
    )
    store = Store(tmp_path / "store")
    for level, beyond in ((7, True), (9, False)):
        x, _ = demorton(store.levels[level].arrays.codes.astype(np.uint64))
        seam = (36 + 180) / 360 * (1 << level)
        assert (x < seam - 1).any() and bool((x > seam).any()) == beyond, level


def test_training_leaves_a_mosaics_coarse_backdrop_out_as_precompute_does(source, tmp_path):
    """A csv row's cell at a level far finer than a mosaic's backdrop was cut from the backdrop's
    enlarged pixels, where precompute leaves that file out: a model trained on cells it would
    never be served. Now the row has no imagery there, as the store has no cell."""
    from model.data import BadSample, reader
    from tests.test_own_data import write_folder

    folder = tmp_path / "mosaic"
    fine = _fine_and_backdrop(source, folder)
    root = write_folder(tmp_path / "d", 2, image=False)
    (root / "samples.csv").write_text(
        "lat,lon,audio,level\n45,40,audio/0.wav,9\n45,33,audio/1.wav,9\n", encoding="utf-8"
    )
    split = {"cell_deg": 90.0, "val_fraction": 0.0, "test_fraction": 0.0}
    rows = reader("csv")({"root": str(root), "imagery": str(folder), "split": split}, SIZE).train
    east, west = sorted(range(len(rows)), key=lambda i: -rows.rows[i].lon)
    with pytest.raises(BadSample, match="no imagery at level 9"):
        rows[east]
    assert np.array_equal(rows[west].image, Imagery(fine).cell(9, *mercantile.tile(33, 45, 9)[:2], SIZE).rgb)


def test_a_raster_packed_in_fewer_bits_is_refused_without_its_range(source, tmp_path, bundle_path, capsys):
    """A 1-bit GeoTIFF (NBITS=1) reads as uint8 values 0..1: every cell was embedded as black,
    silently. It is refused with the range that reads it, and read as 0..255 through that range."""
    data, profile = source
    bits = (data > 127).astype("uint8")
    packed = _write(tmp_path / "mask.tif", bits, profile, NBITS=1)
    with pytest.raises(ImageryError, match=r"packs its pixels in 1 bits \(NBITS=1, values 0\.\.1\).*--rescale 0,1"):
        Imagery(packed)
    out = tmp_path / "out" / "store"
    assert "--rescale 0,1" in _fails(capsys, precompute_args(packed, bundle_path, "3", out, "--quiet"))
    assert not (tmp_path / "out").exists()
    got = Imagery(packed, rescale=(0, 1)).cell(5, 16, 10, SIZE)
    want = Imagery(_write(tmp_path / "bytes.tif", bits * 255, profile)).cell(5, 16, 10, SIZE)
    assert got is not None and set(np.unique(got.rgb)) == {0, 255}  # resampled as 0..1, then spread
    assert np.abs(got.rgb.astype(int) - want.rgb.astype(int)).mean() < 8

"""The shared imagery reader on sources beyond one EPSG:4326 file: a projected (UTM) raster, a
raster with nodata, and mosaics of several files (a list or a directory)."""

import subprocess
import sys
from pathlib import Path

import mercantile
import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from precompute.run import run
from runtime.bundle import Bundle
from runtime.imagery import Imagery, ImageryError
from runtime.tiles import morton, tile_bounds, tiles_in_bbox
from store.reader import Store
from tests.conftest import reprojected

SIZE = 32

# A static file server that answers byte ranges (206), as object stores serve COGs. It runs in its
# own process: GDAL holds the GIL while it opens a URL, so an in-process server would deadlock.
RANGE_SERVER = """
import os, re, sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

class RangeHandler(SimpleHTTPRequestHandler):
    def send_head(self):
        match = re.fullmatch(r"bytes=(\\d+)-(\\d*)", self.headers.get("Range", ""))
        if not match:
            return super().send_head()
        path = self.translate_path(self.path)
        size = os.path.getsize(path)
        start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.range_left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        outputfile.write(source.read(getattr(self, "range_left", -1)))

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=sys.argv[1]))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _write(path: Path, data: np.ndarray, profile: dict, **changes) -> Path:
    profile = {**profile, **changes, "count": 3, "dtype": "uint8", "driver": "GTiff"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.build_overviews([2, 4, 8, 16], Resampling.average)
    return path


@pytest.fixture(scope="module")
def source(imagery_path):
    with rasterio.open(imagery_path) as src:
        return src.read(), src.profile


@pytest.fixture(scope="module")
def utm_path(imagery_path, tmp_path_factory) -> Path:
    """The Blue Marble crop reprojected to UTM zone 33N (EPSG:32633); corners outside the
    reprojected footprint are nodata."""
    return reprojected(imagery_path, tmp_path_factory.mktemp("utm") / "utm.tif", "EPSG:32633")


HOLE = (0, 40, 20, 50)


def _holed(imagery_path, source, out: Path, **nodata) -> Path:
    """The crop with zeros over HOLE (0..20 E, 40..50 N)."""
    data, profile = source
    data = data.copy()
    with rasterio.open(imagery_path) as src:
        (row0, col0), (row1, col1) = src.index(HOLE[0], HOLE[3]), src.index(HOLE[2], HOLE[1])
    data[:, row0:row1, col0:col1] = 0
    return _write(out, data, profile, **nodata)


@pytest.fixture(scope="module")
def holed_path(imagery_path, tmp_path_factory, source) -> Path:
    """The holed crop declaring nodata = 0."""
    return _holed(imagery_path, source, tmp_path_factory.mktemp("holed") / "holed.tif", nodata=0)


def _min_value(path: Path, box: tuple) -> int:
    """The smallest band value of the raster's pixels under box (plus a 2-pixel margin)."""
    with rasterio.open(path) as src:
        (row0, col0), (row1, col1) = src.index(box[0], box[3]), src.index(box[2], box[1])
        return int(
            src.read(
                window=Window(col0 - 2, row0 - 2, col1 - col0 + 4, row1 - row0 + 4), boundless=True, fill_value=0
            ).min()
        )


def _cells_in(z: int, box: tuple) -> list[tuple[int, int]]:
    """Cells of zoom z lying entirely inside box."""
    x, y = tiles_in_bbox(z, box)
    inside = []
    for cx, cy in zip(x.tolist(), y.tolist(), strict=True):
        w, s, e, n = tile_bounds(z, cx, cy)
        if w >= box[0] and s >= box[1] and e <= box[2] and n <= box[3]:
            inside.append((cx, cy))
    return inside


@pytest.fixture(scope="module")
def halves(imagery_path, tmp_path_factory, source) -> tuple[Path, float]:
    """A directory holding the crop cut into a west and an east file (split on a 32-pixel
    boundary so both keep the overview pixels of the whole); and the split longitude."""
    data, profile = source
    folder = tmp_path_factory.mktemp("halves")
    split = (data.shape[2] // 2) // 32 * 32
    with rasterio.open(imagery_path) as src:
        for name, window in (
            ("a-west.tif", Window(0, 0, split, src.height)),
            ("b-east.tif", Window(split, 0, src.width - split, src.height)),
        ):
            part = data[:, :, window.col_off : window.col_off + window.width]
            _write(
                folder / name,
                part,
                profile,
                width=window.width,
                height=window.height,
                transform=src.window_transform(window),
            )
        lon = src.xy(0, split, offset="ul")[0]
    return folder, lon


def test_utm_raster_gives_the_pixels_of_the_geographic_one(imagery_path, utm_path):
    geo, utm = Imagery(imagery_path), Imagery(utm_path)
    assert utm.bounds[0] < 15 < utm.bounds[2] and abs(utm.resolution_m - geo.resolution_m) / geo.resolution_m < 0.5
    x, y, z = mercantile.tile(16.4, 48.2, 5)  # Vienna: well inside the reprojected footprint
    a, b = geo.cell(z, x, y, SIZE), utm.cell(z, x, y, SIZE)
    assert b.valid.all() and b.gsd == a.gsd
    diff = np.abs(a.rgb.astype(int) - b.rgb.astype(int))
    assert diff.mean() < 6, "reprojected pixels should match up to resampling"


def test_utm_store_skips_cells_outside_the_footprint(utm_path, bundle_path, tmp_path):
    imagery = Imagery(utm_path)
    _, report = run(imagery, Bundle(bundle_path), [5], imagery.bounds, tmp_path / "store", progress=False)
    assert report.embedded[5] > 0 and report.skipped[5] > 0
    stored = set(Store(tmp_path / "store").levels[5].arrays.codes.tolist())
    x, y = tiles_in_bbox(5, imagery.bounds)
    with_imagery = {
        morton(a, b) for a, b in zip(x.tolist(), y.tolist(), strict=True) if imagery.cell(5, a, b, SIZE) is not None
    }
    assert stored == with_imagery and len(x) == report.embedded[5] + report.skipped[5]


def test_nodata_cells_are_skipped_and_counted_never_black(holed_path, imagery_path, bundle_path, tmp_path):
    holed, whole = Imagery(holed_path), Imagery(imagery_path)
    inside = _cells_in(6, HOLE)
    assert len(inside) >= 4 and all(holed.cell(6, x, y, SIZE) is None for x, y in inside)
    untouched = [
        c
        for c in _cells_in(6, whole.bounds)
        if _min_value(imagery_path, tile_bounds(6, *c)) > 0
        and (tile_bounds(6, *c)[1] > HOLE[3] + 2 or tile_bounds(6, *c)[2] < HOLE[0] - 2)
    ]
    assert len(untouched) >= 3  # no pixel of theirs is 0, so nodata = 0 leaves them valid
    for x, y in untouched:  # GDAL's nodata-aware overviews and warp kernel round a little differently
        a, b = holed.cell(6, x, y, SIZE), whole.cell(6, x, y, SIZE)
        diff = np.abs(a.rgb.astype(int) - b.rgb.astype(int))
        assert a.valid.all() and diff.mean() < 0.5 and diff.max() <= 4
    edge = holed.cell(5, 16, 10, SIZE)  # 0..11 E, 49..56 N: a sixth in the hole, kept with its hole
    assert edge is not None and 0.5 <= edge.valid_fraction < 1 and not edge.rgb[~edge.valid].any()
    _, report = run(holed, Bundle(bundle_path), [6], (-12, 28, 36, 62), tmp_path / "holed", progress=False)
    _, full = run(whole, Bundle(bundle_path), [6], (-12, 28, 36, 62), tmp_path / "whole", progress=False)
    assert report.skipped[6] - full.skipped[6] >= len(inside)
    assert report.embedded[6] + report.skipped[6] == full.embedded[6] + full.skipped[6]


def test_nodata_override_marks_a_value_invalid(imagery_path, source, tmp_path):
    undeclared = _holed(imagery_path, source, tmp_path / "undeclared.tif")
    x, y = _cells_in(6, HOLE)[0]
    assert Imagery(undeclared).cell(6, x, y, SIZE).valid.all()  # black pixels, as far as the file says
    assert Imagery(undeclared, nodata=0).cell(6, x, y, SIZE) is None


@pytest.mark.parametrize("nodata", [float("nan"), -9999.0, 300.0, 0.5, float("inf")])
def test_a_nodata_override_no_pixel_can_hold_is_one_sentence(imagery_path, nodata):
    """`--nodata nan` (or -9999) on uint8 imagery failed on the first cell with rio-tiler's `Cannot
    convert fill_value nan to dtype uint8`; 0.5 matched no pixel and was ignored without a word."""
    with pytest.raises(ImageryError) as raised:
        Imagery(imagery_path, nodata=nodata)
    assert str(raised.value) == (
        f"nodata {nodata:g} can never be a pixel of imagery {str(imagery_path)!r}, whose uint8 pixels are whole "
        "numbers 0..255: give --nodata one of those, or leave it out for the file's own nodata"
    )


def test_nan_pixels_of_a_float_raster_are_no_imagery(imagery_path, source, tmp_path):
    """A float raster's NaN pixels that the file does not declare nodata (or that a --nodata
    override replaced) were valid imagery, cast to black: cells of a hole were embedded as black."""
    data, profile = source
    data = data.astype("float32")
    with rasterio.open(imagery_path) as src:
        (row0, col0), (row1, col1) = src.index(HOLE[0], HOLE[3]), src.index(HOLE[2], HOLE[1])
    data[:, row0:row1, col0:col1] = np.nan
    path = tmp_path / "float.tif"
    with rasterio.open(path, "w", **{**profile, "dtype": "float32", "nodata": None}) as dst:
        dst.write(data)
    x, y = _cells_in(6, HOLE)[0]
    for imagery in (Imagery(path, rescale=(0, 255)), Imagery(path, nodata=0, rescale=(0, 255))):
        assert imagery.cell(6, x, y, SIZE) is None
        edge = imagery.cell(5, 16, 10, SIZE)  # 0..11 E, 49..56 N: a sixth in the hole
        assert edge is not None and 0.5 <= edge.valid_fraction < 1 and not edge.rgb[~edge.valid].any()


def _scaled(imagery_path: Path, source, path: Path, dtype: str, scale: float) -> Path:
    """The crop's pixels times `scale`, stored as `dtype` with the crop's overviews (uint16
    reflectance x 10000 and float reflectance 0..1 stand in for the imagery users bring)."""
    data, profile = source
    with rasterio.open(imagery_path) as src:
        factors = src.overviews(1)
    with rasterio.open(path, "w", **{**profile, "dtype": dtype, "nodata": None}) as dst:
        dst.write((data.astype("float64") * scale).astype(dtype))
        if factors:
            dst.build_overviews(factors, Resampling.average)
    return path


@pytest.mark.parametrize(("dtype", "scale", "rescale"), [("uint16", 10.0, (0, 2550)), ("float32", 1 / 255, (0, 1))])
def test_imagery_that_is_not_8_bit_is_read_through_its_rescale_range(
    imagery_path, source, tmp_path, dtype, scale, rescale
):
    """uint16 and float pixels were clipped to 0..255: reflectance x 10000 became near-white cells
    and reflectance 0..1 near-black ones, embedded as such. Without a range such imagery is now
    refused in one sentence; with one, its cells are the 8-bit imagery's to rounding."""
    path = _scaled(imagery_path, source, tmp_path / f"{dtype}.tif", dtype, scale)
    with pytest.raises(ImageryError) as refused:
        Imagery(path)
    assert f"has {dtype} pixels and the model reads 8-bit RGB" in str(refused.value)
    assert "--rescale LOW,HIGH" in str(refused.value) and "\n" not in str(refused.value)
    scaled, eight_bit = Imagery(path, rescale=rescale), Imagery(imagery_path)
    for z, x, y in ((5, 16, 10), (6, 33, 22), (4, 8, 5)):
        want, got = eight_bit.cell(z, x, y, SIZE), scaled.cell(z, x, y, SIZE)
        assert got is not None and want is not None and got.rgb.dtype == np.uint8
        assert np.abs(got.rgb.astype(int) - want.rgb.astype(int)).max() <= 1
    assert scaled.describe()["rescale"] == list(rescale) and "rescale" not in eight_bit.describe()
    assert Imagery(path, **scaled.reading()).describe() == scaled.describe()


@pytest.mark.parametrize("span", [(5, 5), (3000, 0), (0, float("nan")), (0, float("inf"))])
def test_a_rescale_range_needs_a_low_below_a_high(imagery_path, span):
    with pytest.raises(ValueError, match="two finite numbers, the low below the high"):
        Imagery(imagery_path, rescale=span)


def test_mosaic_of_a_directory_or_a_list_equals_the_whole(imagery_path, halves):
    folder, split_lon = halves
    whole = Imagery(imagery_path)
    for mosaic in (Imagery(folder), Imagery(sorted(folder.iterdir()))):
        assert len(mosaic.assets) == 2
        assert mosaic.bounds == pytest.approx(whole.bounds)
        cells = _cells_in(6, whole.bounds)
        assert len(cells) > 40
        for cx, cy in cells:
            west, _, east, _ = tile_bounds(6, cx, cy)
            a, b = whole.cell(6, cx, cy, SIZE), mosaic.cell(6, cx, cy, SIZE)
            assert b.valid.all()
            if east < split_lon - 1 or west > split_lon + 1:  # read from one file: the same pixels
                assert np.array_equal(a.rgb, b.rgb)
            else:  # across the seam: each side from its own file, so bilinear edges differ slightly
                assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() < 0.5


def test_mosaic_cell_outside_every_file_is_none(halves):
    assert Imagery(halves[0]).cell(6, 5, 20, SIZE) is None  # mid-Atlantic, outside both files


def test_unreadable_sources_raise_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.tif").write_text("not a raster", encoding="utf-8")
    for source, needle in (
        (tmp_path / "missing.tif", "no such file"),
        (tmp_path / "empty", "holds no raster"),
        (tmp_path / "junk.tif", "cannot read imagery"),
    ):
        with pytest.raises(ImageryError, match=needle):
            Imagery(source)


def test_upsampling_and_finest_level(imagery_path):
    imagery = Imagery(imagery_path)  # Blue Marble: 0.0667 deg = 7.4 km pixels
    assert imagery.resolution_m == pytest.approx(7421.3, rel=1e-3)
    assert imagery.upsampling(7, 64) == pytest.approx(7421.3 * 64 * 128 / 40075016.7, rel=1e-3)
    assert imagery.max_level(64, 8.0) == 9 and imagery.max_level(32, 8.0) == 10


def test_remote_raster_over_http_gives_the_local_pixels(imagery_path, bundle_path, tmp_path):
    server = subprocess.Popen(
        [sys.executable, "-c", RANGE_SERVER, str(imagery_path.parent)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/{imagery_path.name}"
        remote, local = Imagery(url), Imagery(imagery_path)
        assert remote.bounds == local.bounds and remote.describe()["path"] == url
        for x, y in _cells_in(5, local.bounds)[:4]:
            assert np.array_equal(remote.cell(5, x, y, SIZE).rgb, local.cell(5, x, y, SIZE).rgb)
        manifest, report = run(remote, Bundle(bundle_path), [3], remote.bounds, tmp_path / "store", progress=False)
        assert report.embedded[3] > 0 and manifest["imagery"]["path"] == url
    finally:
        server.kill()
        server.wait()

"""The imagery reader every part uses: a raster plus a cell (z, x, y) gives the RGB pixels the
model sees and their ground sample distance. Training, corpus, precompute and the server's
basemap all cut pixels here, so the model is served exactly the pixels it was trained on.

A source is anything rio-tiler reads (a local or remote GeoTIFF/COG in any CRS), a directory of
such rasters, or a list of them: a mosaic, where the first raster that has a valid pixel gives it.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform as transform_points
from rasterio.windows import Window
from rio_tiler.constants import WGS84_CRS
from rio_tiler.errors import EmptyMosaicError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.mosaic import mosaic_reader

from runtime.errors import UserError
from runtime.tiles import (
    EARTH_CIRCUMFERENCE_M,
    MERCATOR_LAT_LIMIT,
    ground_sample_distance,
    mercator_pixel_size,
    tile_bounds,
    tile_centres,
)

# rio-tiler clips latitudes to the mercator limit for world rasters and warns each time; expected.
warnings.filterwarnings("ignore", message="Adjusting dataset latitudes", category=UserWarning)
# A file that is not georeferenced is refused in a sentence of ours (_check_georeferenced).
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)

# A cell with less than this fraction of valid pixels has no imagery (skipped, never black).
MIN_VALID_FRACTION = 0.5
# A file of a mosaic is left out of cells that would enlarge its pixels more than this many times
# the upsampling limit (a level finer than it can serve, and more: files of one resolution at other
# latitudes differ by less, in web-mercator metres).
LEAVE_OUT_FACTOR = 2.0
# Files a directory source contributes to its mosaic.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
# Sources that are not local paths (GDAL reads them over the network).
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")
# Open datasets kept per thread; a mosaic of thousands of files must not exhaust file handles.
READERS_PER_THREAD = 32

Source = str | Path | Sequence[str | Path]


class ImageryError(UserError):
    """The imagery source cannot be opened or read."""


@dataclass(frozen=True)
class CellImage:
    """RGB pixels of one cell; invalid pixels are zero and `valid` is False there."""

    rgb: np.ndarray  # (size, size, 3) uint8
    valid: np.ndarray  # (size, size) bool
    gsd: float  # metres per pixel at the cell centre

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean())


@dataclass(frozen=True)
class Asset:
    """One raster of a source: where it is and how fine it is."""

    path: str
    # (west, south, east, north) boxes in degrees, west < east: one, or two for a file across the
    # antimeridian (its parts east of 180 W and west of 180 E).
    boxes: tuple[tuple[float, float, float, float], ...]
    count: int
    resolution_m: float  # web-mercator metres per pixel at the footprint centre (finest axis)
    # Of the bands read as red, green and blue: their pixel types, the colour interpretations the
    # file declares ('red', 'gray', 'undefined', ...) and their (scale, offset).
    dtypes: tuple[str, ...]
    declared: tuple[str, ...]
    scaling: tuple[tuple[float, float], ...]


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_PREFIXES)


def expand_source(source: Source) -> list[str]:
    """A file or URL, a directory of rasters, or a list of those -> the rasters, in mosaic order
    (list order; a directory's files sorted by name)."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    paths: list[str] = []
    for item in items:
        text = str(item)
        if not is_remote(text) and os.path.isdir(text):
            found = sorted(p for p in Path(text).iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                raise ImageryError(f"imagery directory {text!r} holds no raster ({', '.join(RASTER_SUFFIXES)})")
            paths.extend(str(p) for p in found)
        else:
            paths.append(text)
    if not paths:
        raise ImageryError("no imagery source given")
    return paths


def _mercator_steps(ds: Any, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Web-mercator metres per pixel at pixels (cols, rows), along the finer axis; inf where the
    pixel or a neighbour lies beyond the mercator square or the step cannot be measured."""
    xs, ys = ds.transform * (np.concatenate([cols, cols + 1, cols]), np.concatenate([rows, rows, rows + 1]))
    _, lats = transform_points(ds.crs, "EPSG:4326", xs, ys)
    mx, my = transform_points(ds.crs, "EPSG:3857", xs, ys)
    lat, x, y = (np.asarray(v, dtype=np.float64).reshape(3, len(cols)) for v in (lats, mx, my))
    steps = np.hypot(x[1:] - x[0], y[1:] - y[0])
    steps[~np.isfinite(steps) | (steps <= 0)] = np.inf
    finest = steps.min(axis=0)
    finest[~(np.abs(lat) < MERCATOR_LAT_LIMIT).all(axis=0)] = np.inf
    return finest


def _resolution_m(reader: Reader) -> float:
    """Web-mercator metres per source pixel at the footprint centre, along the finer axis. Where
    the centre lies beyond the mercator square (a polar stereographic raster around a pole, whose
    centre gave 197,000 km pixels and every level refused), at the pixel nearest it that does not."""
    ds = reader.dataset
    assert ds is not None  # an open Reader holds its dataset
    centre = _mercator_steps(ds, np.array([ds.width / 2]), np.array([ds.height / 2]))
    if np.isfinite(centre[0]):
        return float(centre[0])
    # A grid over the raster, nearest the centre first.
    grid = np.linspace(0.0, 1.0, 33)
    fx, fy = (a.ravel() for a in np.meshgrid(grid, grid))
    order = np.argsort((fx - 0.5) ** 2 + (fy - 0.5) ** 2, kind="stable")
    steps = _mercator_steps(ds, fx[order] * (ds.width - 1), fy[order] * (ds.height - 1))
    usable = np.flatnonzero(np.isfinite(steps))
    if len(usable):
        return float(steps[usable[0]])
    # No pixel inside the mercator square (its cells are then all refused): the centre, clamped.
    col, row = ds.width / 2, ds.height / 2
    cx, cy = [], []
    for dc, dr in ((0, 0), (1, 0), (0, 1)):
        px, py = ds.transform * (col + dc, row + dr)
        cx.append(px)
        cy.append(max(-MERCATOR_LAT_LIMIT, min(MERCATOR_LAT_LIMIT, py)) if ds.crs.is_geographic else py)
    ex, ey = transform_points(ds.crs, "EPSG:3857", cx, cy)
    return min(s for s in (math.hypot(ex[i] - ex[0], ey[i] - ey[0]) for i in (1, 2)) if s > 0)


def mercator_area(bbox: tuple[float, ...]) -> float:
    """Web-mercator square metres of a (west, south, east, north) box in degrees."""

    def y(lat: float) -> float:
        lat = max(-MERCATOR_LAT_LIMIT, min(MERCATOR_LAT_LIMIT, lat))
        return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) * EARTH_CIRCUMFERENCE_M / (2 * math.pi)

    return (bbox[2] - bbox[0]) / 360 * EARTH_CIRCUMFERENCE_M * (y(bbox[3]) - y(bbox[1]))


def _intersects(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


Box = tuple[float, float, float, float]


def _footprint(reader: Reader, dataset: Any, path: str) -> tuple[Box, ...]:
    """The file's footprint as boxes in -180..180: two for a file across the antimeridian (a UTM
    zone 1 or 60 scene, Fiji's EPSG:3460), whose bounds come back west > east, where it was one box
    that met no cell: refused as not overlapping any bbox."""
    west, south, east, north = (float(v) for v in reader.get_geographic_bounds(WGS84_CRS))
    if dataset.crs.is_geographic:
        left, right, slack = dataset.bounds.left, dataset.bounds.right, abs(dataset.transform.a)
        if left < -180 - slack or right > 180 + slack:
            raise ImageryError(
                f"imagery {path!r} spans longitudes {left:g}..{right:g}, beyond -180..180, where rio-tiler reads "
                "no pixel (the cells there would be missing): cut it at the antimeridian into two files, the part "
                "beyond given its longitudes -/+ 360 (gdal_translate -projwin, -a_ullr), and give both"
            )
        west, east = max(west, -180.0), min(east, 180.0)
    south, north = max(south, -90.0), min(north, 90.0)
    if west > east:
        return (west, south, 180.0, north), (-180.0, south, east, north)
    return ((west, south, east, north),)


def extent(boxes: Sequence[Box]) -> tuple[Box, ...]:
    """The least longitude span holding every box, as one box, or two where it crosses the
    antimeridian (then the first ends at 180 E and the second starts at 180 W)."""
    south, north = min(b[1] for b in boxes), max(b[3] for b in boxes)
    spans: list[list[float]] = []
    for west, _, east, _ in sorted(boxes):
        if spans and west <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], east)
        else:
            spans.append([west, east])
    # The widest gap between spans, the one across the antimeridian (wrap) included, is left out.
    gaps = [(spans[0][0] + 360 - spans[-1][1], -1)] + [
        (spans[i + 1][0] - spans[i][1], i) for i in range(len(spans) - 1)
    ]
    _, widest = max(gaps)
    if widest < 0:
        return ((spans[0][0], south, spans[-1][1], north),)
    return (spans[widest + 1][0], south, 180.0, north), (-180.0, south, spans[widest][1], north)


def _check_nodata(nodata: float, dtype: str, path: str) -> None:
    """Refuse a nodata override that no pixel of `dtype` can hold (NaN, -9999 or 300 on uint8,
    0.5 on integers): it would match no pixel, and rio-tiler failed on every cell with `Cannot
    convert fill_value nan to dtype uint8`. A file's own such nodata GDAL already ignores."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
            raise ImageryError(
                f"nodata {nodata:g} can never be a pixel of imagery {path!r}, whose {dtype} pixels are whole "
                f"numbers {info.min}..{info.max}: give --nodata one of those, or leave it out for the file's own nodata"
            )


def parse_rescale(text: str) -> tuple[float, float]:
    """'0,3000' -> (0.0, 3000.0): the pixel values that become 0 and 255 (ValueError otherwise)."""
    return check_rescale(text.split(","))


def check_rescale(span: Sequence[float | str]) -> tuple[float, float]:
    """A rescale range as a pair of finite floats, low below high (ValueError otherwise)."""
    try:
        low, high = (float(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(f"a rescale range is two numbers LOW,HIGH like 0,3000, not {span!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"a rescale range needs two finite numbers, the low below the high, not {low:g},{high:g}")
    return low, high


RGB_BANDS = (1, 2, 3)


def parse_bands(text: str) -> tuple[int, int, int]:
    """'3,2,1' -> (3, 2, 1): the 1-based bands read as red, green and blue (ValueError otherwise)."""
    return check_bands(text.split(","))


def check_bands(bands: Sequence[int | str]) -> tuple[int, int, int]:
    """Three 1-based band numbers, for red, green and blue (ValueError otherwise)."""
    try:
        red, green, blue = (int(b) for b in bands)
    except (TypeError, ValueError):
        red = green = blue = 0
    if min(red, green, blue) < 1:
        raise ValueError(f"bands are three band numbers (from 1) for red, green and blue like 3,2,1, not {bands!r}")
    return red, green, blue


COLOURS = ("red", "green", "blue")


def _check_band_count(bands: tuple[int, ...], dataset: Any, path: str, given: bool) -> None:
    if dataset.count == 1 and dataset.colorinterp[0].name == "palette":
        raise ImageryError(
            f"imagery {path!r} is one band of palette colours (a colour map), whose indices cannot be resampled "
            "as colours: expand it to RGB first (gdal_translate -expand rgb)"
        )
    if max(bands) > dataset.count:
        raise ImageryError(
            f"imagery {path!r} has {dataset.count} band(s), so no band {max(bands)} to read as a colour"
            if given
            else f"imagery {path!r} has {dataset.count} band(s); RGB needs 3"
        )


def _check_bands(bands: tuple[int, ...], asset: Asset, given: bool) -> None:
    """Unless the bands are given, the file does not declare them to be other colours than red,
    green and blue (a blue-green-red file was read with red and blue swapped, silently)."""
    if given:
        return
    path = asset.path
    declared = dict(zip(bands, asset.declared, strict=True))
    if set(declared.values()) & set(COLOURS) and tuple(declared.values()) != COLOURS:
        band_of = {colour: band for band, colour in declared.items()}
        hint = ",".join(str(band_of[c]) for c in COLOURS) if set(COLOURS) <= set(band_of) else "R,G,B"
        raise ImageryError(
            f"imagery {path!r} declares bands 1, 2, 3 as {', '.join(declared.values())}: say which bands are "
            f"red, green and blue (precompute --bands {hint}, a config's data.bands: [{hint.replace(',', ', ')}])"
        )


def _first_cause(exc: BaseException) -> str:
    """The message of the error at the root of `exc`'s chain (GDAL's own, under rasterio's)."""
    messages: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(messages) < 20:
        messages.append(str(seen).strip())
        seen = seen.__cause__ or seen.__context__
    return next((m for m in reversed(messages) if m), type(exc).__name__)


def _check_readable(dataset: Any, path: str, bands: tuple[int, ...]) -> None:
    """A local file's pixels can be read: the files a VRT names exist, and its last block and its
    coarsest overview decode. A truncated file (a copy cut short) or a VRT naming a moved file
    opened, planned and failed on its first cell, leaving a work folder, with rasterio's "Read
    failed. See previous exception for details." (the last block is where a cut file ends)."""
    missing = [name for name in dataset.files[1:] if not is_remote(name) and not os.path.exists(name)]
    if missing:
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise ImageryError(f"imagery {path!r} refers to {missing[0]!r}, which does not exist{more}")
    read = [b for b in bands if b <= dataset.count]
    if not read:
        return
    block_height, block_width = dataset.block_shapes[0]
    row, col = (dataset.height - 1) // block_height * block_height, (dataset.width - 1) // block_width * block_width
    try:
        dataset.read(read, window=Window(col, row, dataset.width - col, dataset.height - row))
        dataset.read(read, out_shape=(len(read), min(8, dataset.height), min(8, dataset.width)))
    except Exception as exc:  # rasterio raises several types for undecodable data
        raise ImageryError(
            f"cannot read imagery {path!r}, which looks damaged or cut short: {_first_cause(exc)}"
        ) from exc


def _check_alpha(dataset: Any, path: str, bands: tuple[int, ...]) -> None:
    """A band the file declares alpha (transparency) holds a mask: nearly all its values 0 or one
    opaque value. GDAL declares the 4th band of a 4-band 8-bit GeoTIFF written with its defaults
    alpha, so red, green, blue and near-infrared (NAIP, cropped and saved by rasterio) had its
    infrared read as the mask: its zeros no imagery and its other values weights in the warp,
    silently. Such a band is refused in one sentence, as is a colour read from the mask itself."""
    alphas = [i + 1 for i, c in enumerate(dataset.colorinterp) if c.name == "alpha"]
    for band in alphas:
        if band in bands:
            raise ImageryError(
                f"imagery {path!r} declares band {band} its alpha (transparency) band, which marks where there "
                f"is imagery: it cannot be read as a colour too (the bands are {', '.join(map(str, bands))})"
            )
        side = min(256, dataset.height), min(256, dataset.width)
        values = dataset.read(band, out_shape=side)
        between = float(((values > 0) & (values < values.max())).mean())
        if between > 0.25:
            raise ImageryError(
                f"imagery {path!r} declares band {band} its alpha (transparency) band, but {between:.0%} of its "
                "values lie between transparent and opaque, as a measured band's (near-infrared?) do, where a "
                "mask's are one or the other: GDAL declares the 4th band of a 4-band 8-bit GeoTIFF alpha unless "
                f"told otherwise; declare it what it is (rio edit-info --colorinterp red,green,blue,undefined, or "
                f"gdal_edit.py -colorinterp_{band} undefined), or give it a real mask"
            )


def _check_georeferenced(dataset: Any, path: str) -> None:
    """The file says where its pixels lie: a CRS, and a geotransform or ground control points
    (rio-tiler warps those). A file with a CRS but neither was placed with its corner at 0, 0 and
    one degree (or metre) per pixel, silently; one without a CRS failed with a Python error."""
    if dataset.crs is None:
        raise ImageryError(
            f"imagery {path!r} has no coordinate reference system, so where it lies on Earth is unknown: "
            + (
                "it carries RPCs, which need orthorectifying first (gdalwarp -rpc -t_srs EPSG:4326)"
                if dataset.rpcs is not None
                else "give it one (gdal_translate -a_srs EPSG:...)"
                if not dataset.transform.is_identity
                else "georeference it first (gdal_translate -a_srs EPSG:... -a_ullr WEST NORTH EAST SOUTH)"
            )
        )
    if dataset.transform.is_identity and not dataset.gcps[0]:
        raise ImageryError(
            f"imagery {path!r} has a coordinate reference system but no geotransform or ground control "
            "points, so where its pixels lie is unknown (they would be placed from 0, 0, one unit each): "
            "georeference it first (gdal_translate -a_ullr WEST NORTH EAST SOUTH)"
        )


def _check_eight_bit(dtype: str, path: str, rescale: tuple[float, float] | None) -> None:
    """The model reads 8-bit RGB: other pixels need the range of values that maps to 0..255, or
    uint16 reflectance (0..10000) and float reflectance (0..1) were clipped to 0..255, silently:
    near-white or near-black cells, embedded as such."""
    if dtype != "uint8" and rescale is None:
        raise ImageryError(
            f"imagery {path!r} has {dtype} pixels and the model reads 8-bit RGB: give the range of values "
            "that becomes 0..255 (precompute --rescale LOW,HIGH, a config's data.rescale: [LOW, HIGH]), "
            "e.g. 0,3000 for reflectance x 10000 or 0,0.3 for reflectance"
        )


def _check_range(dtype: str, scaling: tuple[float, float], path: str, rescale: tuple[float, float] | None) -> None:
    """A rescale range on whole-number pixels holds at least two of them. `--rescale 0,0.3` on
    uint16 reflectance x 10000 (read as what its bands' scale and offset make of the values, as
    gdalinfo shows them) turned every pixel but 0 white, silently: the range is in stored values."""
    if rescale is None or not np.issubdtype(dtype, np.integer):
        return
    low, high = rescale
    if math.floor(high) - math.ceil(low) >= 1:
        return
    scale, offset = scaling
    stored = f"{(low - offset) / scale:g},{(high - offset) / scale:g}"
    hint = (
        f"; its values v stand for {_scaling(scale, offset)} (the bands' scale and offset), so {low:g}..{high:g} "
        f"of those is {stored} in stored values"
        if (scale, offset) != (1.0, 0.0)
        else ""
    )
    raise ImageryError(
        f"imagery {path!r} has {dtype} pixels, whole numbers, and the rescale range {low:g}..{high:g} holds fewer "
        f"than two of them, so every pixel would come out black or white: the range (--rescale, data.rescale) is in "
        f"the stored values{hint}"
    )


def _scaling(scale: float, offset: float) -> str:
    """What a stored value v stands for, by a band's scale and offset ('v x 0.0001 - 0.1')."""
    sign = "-" if offset < 0 else "+"
    return ("v" if scale == 1 else f"v x {scale:g}") + (f" {sign} {abs(offset):g}" if offset else "")


def _check_one_kind(assets: Sequence[Asset], bands: tuple[int, ...]) -> None:
    """Every band read as a colour, in every file, is read one way: one --rescale range (or
    none), one --bands. A mosaic of uint8 and uint16 files read through the uint16 range made
    the uint8 files near-black, files declaring other colours in the same bands were read with
    some of them swapped, and files whose bands scale their stored values differently
    (Sentinel-2 before and after its 2022 offset) came out in other brightnesses, all silently."""

    def where(asset: Asset, i: int, values: tuple) -> str:
        return f"{asset.path!r}" if len(set(values)) == 1 else f"band {bands[i]} of {asset.path!r}"

    def first_two(kind: str) -> list[tuple[str, Any]]:
        seen: dict[Any, str] = {}
        for asset in assets:
            values = getattr(asset, kind)
            for i, value in enumerate(values):
                seen.setdefault(value, where(asset, i, values))
        return [(place, value) for value, place in seen.items()][:2]

    types = first_two("dtypes")
    if len(types) > 1:
        (a, da), (b, db) = types
        raise ImageryError(
            f"imagery {a} has {da} pixels but {b} has {db} pixels: all the imagery is read into 8-bit RGB "
            "one way (one --rescale range, or none for 8-bit), which cannot suit both; convert it to one "
            "pixel type first"
        )
    scalings = first_two("scaling")
    if len(scalings) > 1:
        (a, sa), (b, sb) = scalings
        raise ImageryError(
            f"imagery {a} has pixels v that stand for {_scaling(*sa)} but {b} for {_scaling(*sb)} (the "
            "bands' scale and offset): one --rescale range would read one brightness as two in them; "
            "convert them to one scale first"
        )
    for i, band in enumerate(bands):
        declared: dict[str, str] = {}
        for asset in assets:
            if asset.declared[i] in COLOURS:
                declared.setdefault(asset.declared[i], asset.path)
        if len(declared) > 1:
            (ca, a), (cb, b) = list(declared.items())[:2]
            raise ImageryError(
                f"imagery {a!r} declares band {band} {ca} but {b!r} declares it {cb}: one --bands cannot "
                "read both in their colours; give files of one band order"
            )


class Imagery:
    """A raster source rio-tiler reads, cut into web-mercator cells.

    One rasterio handle per thread and file: GDAL datasets are not safe to share across threads.
    `nodata` overrides the nodata value the files declare (pixels equal to it are invalid);
    `rescale` (low, high) maps those pixel values to 0 and 255, for imagery that is not 8-bit;
    `rgb_bands` names the bands read as red, green and blue (default 1, 2, 3).
    """

    def __init__(
        self,
        source: Source,
        *,
        nodata: float | None = None,
        rescale: Sequence[float] | None = None,
        rgb_bands: Sequence[int] | None = None,
    ):
        self.source = [str(s) for s in source] if not isinstance(source, (str, Path)) else str(source)
        self.path = self.source if isinstance(self.source, str) else self.source[0]
        self.nodata = nodata
        self.rescale = check_rescale(rescale) if rescale is not None else None
        self.bands = check_bands(rgb_bands) if rgb_bands is not None else None
        self._local = threading.local()
        self.assets = [self._open_asset(p) for p in expand_source(source)]
        _check_one_kind(self.assets, self.rgb_bands)
        for asset in self.assets:
            _check_bands(self.rgb_bands, asset, self.bands is not None)
            for dtype in set(asset.dtypes):
                _check_eight_bit(dtype, asset.path, self.rescale)
                _check_range(dtype, asset.scaling[0], asset.path, self.rescale)
                if self.nodata is not None:
                    _check_nodata(self.nodata, dtype, asset.path)
        # Where the imagery lies: one box, or two across the antimeridian; `bounds` holds them all.
        self.extent = extent([box for a in self.assets for box in a.boxes])
        self.bounds = (
            min(b[0] for b in self.extent),
            self.extent[0][1],
            max(b[2] for b in self.extent),
            self.extent[0][3],
        )
        self.count = min(a.count for a in self.assets)
        self.resolution_m = min(a.resolution_m for a in self.assets)

    def _open_asset(self, path: str) -> Asset:
        if not is_remote(path) and not os.path.exists(path):
            raise ImageryError(f"cannot read imagery {path!r}: no such file")
        if not is_remote(path) and os.path.isfile(path) and os.path.getsize(path) == 0:
            raise ImageryError(f"cannot read imagery {path!r}: the file is empty (0 bytes)")
        try:
            reader = self._reader(path)
            dataset = reader.dataset
            assert dataset is not None  # an open Reader holds its dataset
            _check_georeferenced(dataset, path)
            if not is_remote(path):
                _check_readable(dataset, path, self.rgb_bands)
            boxes = _footprint(reader, dataset, path)
            _check_band_count(self.rgb_bands, dataset, path, self.bands is not None)
            _check_alpha(dataset, path, self.rgb_bands)
            read = [b - 1 for b in self.rgb_bands]
            return Asset(
                path,
                boxes,
                dataset.count,
                _resolution_m(reader),
                dtypes=tuple(dataset.dtypes[i] for i in read),
                declared=tuple(dataset.colorinterp[i].name for i in read),
                scaling=tuple((float(dataset.scales[i]), float(dataset.offsets[i])) for i in read),
            )
        except ImageryError:
            raise
        except Exception as exc:  # rasterio raises several types for unreadable sources
            raise ImageryError(f"cannot read imagery {path!r}: {exc}") from exc

    @classmethod
    def as_described(cls, source: Source, described: dict) -> Imagery:
        """`source` read the way `described` (a `describe()`, as a store records it) says."""
        return cls(source, **{key: described.get(key) for key in ("nodata", "rescale", "rgb_bands")})

    @property
    def rgb_bands(self) -> tuple[int, ...]:
        """The 1-based bands read as red, green and blue."""
        return self.bands or RGB_BANDS

    def reading(self) -> dict[str, Any]:
        """How this source is read beyond its path (the nodata override, the rescale range, the
        bands): the keyword arguments that open it again the same way."""
        return {"nodata": self.nodata, "rescale": self.rescale, "rgb_bands": self.bands}

    def _reader(self, path: str) -> Reader:
        readers = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = OrderedDict()
        reader = readers.get(path)
        if reader is None:
            reader = readers[path] = Reader(path)
            while len(readers) > READERS_PER_THREAD:
                readers.popitem(last=False)[1].close()
        readers.move_to_end(path)
        return reader

    def describe(self) -> dict:
        """A JSON-able description for manifests, with how it is read where that is not the
        files' own way (a store resumed or served with another nodata or range would mix cells)."""
        read = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.reading().items() if v is not None}
        return {
            "path": self.source,
            "files": len(self.assets),
            "bounds": list(self.bounds),
            "bands": self.count,
            "resolution_m": round(self.resolution_m, 3),
            **read,
        }

    def upsampling(self, z: int, size: int) -> float:
        """How many cell pixels a source pixel spans at level z (> 1: the cell is upsampled)."""
        return self.resolution_m / mercator_pixel_size(z, size)

    def max_level(self, size: int, max_upsample: float) -> int:
        """The finest level whose `size`-pixel cells upsample the finest source by <= max_upsample."""
        level = 0
        while self.upsampling(level + 1, size) <= max_upsample and level < 30:
            level += 1
        return level

    def coarsest_level(self) -> int:
        """The coarsest level of which one cell can be at least MIN_VALID_FRACTION covered by the
        imagery's footprint (coarser cells never have imagery)."""
        area, level = sum(mercator_area(box) for box in self.extent), 0
        while level < 30 and area < MIN_VALID_FRACTION * (EARTH_CIRCUMFERENCE_M / (1 << level)) ** 2:
            level += 1
        return level

    def level_range(self, size: int, max_upsample: float) -> tuple[int, int]:
        """(coarsest, finest) levels whose `size`-pixel cells this imagery can fill: at least half
        covered, and no source pixel enlarged more than max_upsample times."""
        return self.coarsest_level(), self.max_level(size, max_upsample)

    def _read(self, path: str, x: int, y: int, z: int, size: int) -> ImageData:
        kwargs: dict[str, Any] = {"nodata": self.nodata} if self.nodata is not None else {}
        return self._reader(path).tile(
            x,
            y,
            z,
            tilesize=size,
            indexes=self.rgb_bands,
            resampling_method="bilinear",
            reproject_method="bilinear",
            **kwargs,
        )

    def _read_file(self, path: str, x: int, y: int, z: int, size: int) -> ImageData:
        """`_read`, with a failure (a corrupt block, a lost connection) named by its cell, its file
        (a mosaic's first file was named, whichever failed) and GDAL's own words (rasterio's
        'Read failed. See previous exception for details.' named nothing)."""
        try:
            return self._read(path, x, y, z, size)
        except TileOutsideBounds:
            raise
        except Exception as exc:
            raise ImageryError(f"cannot read cell {z}/{x}/{y} of imagery {path!r}: {_first_cause(exc)}") from exc

    def left_out(self, z: int, size: int, max_upsample: float) -> list[Asset]:
        """The files whose pixels `size`-pixel cells of level z would enlarge more than
        LEAVE_OUT_FACTOR x max_upsample times: a mosaic's coarse backdrop at its fine files' levels."""
        limit = LEAVE_OUT_FACTOR * max_upsample
        return [a for a in self.assets if a.resolution_m / mercator_pixel_size(z, size) > limit]

    def cell(
        self,
        z: int,
        x: int,
        y: int,
        size: int,
        min_valid: float = MIN_VALID_FRACTION,
        max_upsample: float | None = None,
    ) -> CellImage | None:
        """The cell's pixels at `size` x `size`, or None when less than `min_valid` of it has
        imagery (the model's cells need half; a basemap draws whatever part there is: 0). Given
        `max_upsample`, files the level would enlarge far beyond it are left out (`left_out`):
        the finest file decides the levels, and a coarse backdrop's cells there were embedded from
        pixels enlarged 60 times, silently."""
        box = tile_bounds(z, x, y)
        coarse = {a.path for a in self.left_out(z, size, max_upsample)} if max_upsample is not None else set()
        paths = [a.path for a in self.assets if a.path not in coarse and any(_intersects(b, box) for b in a.boxes)]
        if not paths:
            return None
        try:
            if len(paths) == 1:
                img = self._read_file(paths[0], x, y, z, size)
            else:
                img, _ = mosaic_reader(paths, self._read_file, x, y, z, size, threads=0)
        except (TileOutsideBounds, EmptyMosaicError):
            return None
        valid = img.mask > 0
        if img.data.dtype.kind == "f":  # NaN is no imagery, whether or not the file declares it nodata
            valid &= np.isfinite(img.data).all(axis=0)
        if not valid.any() or valid.mean() < min_valid:
            return None
        # Invalid pixels are zero after the rescale: a range below 0 (int16 -500..2050) made them grey.
        rgb = np.where(valid, self._eight_bit(np.where(valid, img.data, 0)), 0).transpose(1, 2, 0)
        _, lat = tile_centres(z, np.array([x]), np.array([y]))
        return CellImage(rgb=np.ascontiguousarray(rgb), valid=valid, gsd=float(ground_sample_distance(z, lat[0], size)))

    def _eight_bit(self, data: np.ndarray) -> np.ndarray:
        """uint8 pixels: 8-bit imagery as it is, other imagery through its rescale range."""
        if self.rescale is None:
            return np.clip(data, 0, 255).astype(np.uint8)
        low, high = self.rescale
        scaled = (data.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
        return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)

"""The imagery reader every part uses: a raster plus a cell (z, x, y) gives the RGB pixels the
model sees and their ground sample distance. Training, corpus, precompute and the server's
basemap all cut pixels here, so the model is served exactly the pixels it was trained on.

A source is anything rio-tiler reads (a local or remote GeoTIFF/COG in any CRS), a directory of
such rasters, or a list of them: a mosaic, where the first raster that has a valid pixel gives it.
What each file must be to be read as meant is checked as it opens (runtime.imagery_checks).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_gcps
from rasterio.warp import transform as transform_points
from rasterio.windows import Window
from rio_tiler.constants import WGS84_CRS
from rio_tiler.errors import EmptyMosaicError, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.mosaic import mosaic_reader

from runtime.imagery_checks import (
    RGB_BANDS,
    Asset,
    ImageryError,
    check_alpha,
    check_band_count,
    check_bands,
    check_declared_colours,
    check_eight_bit,
    check_georeferenced,
    check_nodata,
    check_one_kind,
    check_range,
    check_readable,
    check_rescale,
    first_cause,
    is_remote,
)
from runtime.tiles import (
    EARTH_CIRCUMFERENCE_M,
    MERCATOR_LAT_LIMIT,
    Box,
    Footprint,
    ground_sample_distance,
    mercator_pixel_size,
    tile_bounds,
    tile_centres,
)

# rio-tiler clips latitudes to the mercator limit for world rasters and warns each time; expected.
warnings.filterwarnings("ignore", message="Adjusting dataset latitudes", category=UserWarning)
# A file that is not georeferenced is refused in a sentence of ours (check_georeferenced).
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)

# A cell with less than this fraction of valid pixels has no imagery (skipped, never black).
MIN_VALID_FRACTION = 0.5
# A file of a mosaic is left out of cells that would enlarge its pixels more than this many times
# the upsampling limit (a level finer than it can serve, and more: files of one resolution at other
# latitudes differ by less, in web-mercator metres).
LEAVE_OUT_FACTOR = 2.0
# Files a directory source contributes to its mosaic.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
# Open datasets kept per thread; a mosaic of thousands of files must not exhaust file handles.
READERS_PER_THREAD = 32
# A mosaic file's edge is read at this many points a side at most, to find a black border.
EDGE_POINTS = 256
# Edge points black where a file beneath has imagery that make a border hide it (1% of a 4 x 256 edge).
HIDDEN_MIN = 10
# How a black border is declared no imagery, by what reads the mosaic: precompute's option, or,
# where imagery is read with no nodata option (a csv folder's data.imagery, the server's basemap),
# in the file itself ({file}: the file with the border).
NODATA_OPTION_REMEDY = "give --nodata 0 to read black as no imagery, or mask the border first (nearblack -setmask)"
FILE_NODATA_REMEDY = (
    "declare its black no imagery first (gdal_edit.py -a_nodata 0 {file}), or mask the border (nearblack -setmask)"
)

Source = str | Path | Sequence[str | Path]


@dataclass(frozen=True)
class CellImage:
    """RGB pixels of one cell; invalid pixels are zero and `valid` is False there."""

    rgb: np.ndarray  # (size, size, 3) uint8
    valid: np.ndarray  # (size, size) bool
    gsd: float  # metres per pixel at the cell centre

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean())


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


def _packed_bits(dataset: Any, band: int) -> int | None:
    """The band's bits per pixel where the file packs fewer than its type (GDAL's NBITS)."""
    text = dataset.tags(band, ns="IMAGE_STRUCTURE").get("NBITS", "")
    return int(text) if text.isdigit() else None


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
        check_one_kind(self.assets, self.rgb_bands)
        for asset in self.assets:
            check_declared_colours(self.rgb_bands, asset, self.bands is not None)
            for dtype, bits in set(zip(asset.dtypes, asset.packed_bits, strict=True)):
                check_eight_bit(dtype, asset.path, self.rescale, bits)
                check_range(dtype, asset.scaling[0], asset.path, self.rescale)
                if self.nodata is not None:
                    check_nodata(self.nodata, dtype, asset.path)
        # Where the imagery lies (west > east across the antimeridian), as boxes (one, or two
        # across the antimeridian) and as the one box holding them (every longitude then).
        self.footprint = Footprint.enclosing([box for a in self.assets for box in a.boxes])
        self.extent = self.footprint.boxes
        self.bounds = self.footprint.bounds
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
            check_georeferenced(dataset, path)
            if not is_remote(path):
                check_readable(dataset, path, self.rgb_bands)
            boxes = _footprint(reader, dataset, path)
            check_band_count(self.rgb_bands, dataset, path, self.bands is not None)
            check_alpha(dataset, path, self.rgb_bands)
            read = [b - 1 for b in self.rgb_bands]
            return Asset(
                path,
                boxes,
                dataset.count,
                _resolution_m(reader),
                dtypes=tuple(dataset.dtypes[i] for i in read),
                declared=tuple(dataset.colorinterp[i].name for i in read),
                scaling=tuple((float(dataset.scales[i]), float(dataset.offsets[i])) for i in read),
                packed_bits=tuple(_packed_bits(dataset, i + 1) for i in read),
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

    def file_stamps(self) -> dict[str, list[int]]:
        """Each local file's size and modification time (ns): what tells a file rewritten at the
        same path, as a reprocessed scene is, from the one read before."""
        files = [asset.path for asset in self.assets if os.path.isfile(asset.path)]
        return {path: [stat.st_size, stat.st_mtime_ns] for path, stat in zip(files, map(os.stat, files), strict=True)}

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

    def covers(self, lon: float, lat: float) -> bool:
        """Whether the point lies in the imagery's footprint: across the antimeridian, on either
        side of 180 degrees, not anywhere between (as a test against `bounds` had it)."""
        return self.footprint.covers(lon, lat)

    def describe(self) -> dict:
        """A JSON-able description for manifests, with how it is read where that is not the
        files' own way (a store resumed or served with another nodata or range would mix cells)."""
        read = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.reading().items() if v is not None}
        return {
            "path": self.source,
            "files": len(self.assets),
            "bounds": list(self.bounds),
            # Across the antimeridian the bounds span every longitude; the footprint says where it lies.
            **({"footprint": list(self.footprint)} if self.footprint.wraps else {}),
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
            raise ImageryError(f"cannot read cell {z}/{x}/{y} of imagery {path!r}: {first_cause(exc)}") from exc

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


@dataclass(frozen=True)
class _Layer:
    """A file of a mosaic as the border check reads it: where it lies, the VRT it is a source of
    (None for a file of a directory or list), and whether its own black is no imagery."""

    path: str
    boxes: tuple[Box, ...]
    vrt: str | None
    masks_black: bool


def _masks_black(dataset: Any, nodata: float | None) -> bool:
    """Whether a file's black pixels are no imagery: the nodata override or its own is 0, or it
    has a mask or alpha band (a border is what they mask)."""
    if nodata is not None:
        return nodata == 0
    flags = {flag for band in dataset.mask_flag_enums for flag in band}
    return bool(flags & {MaskFlags.per_dataset, MaskFlags.alpha}) or dataset.nodata == 0


def _vrt_sources(path: str) -> list[tuple[str, bool]]:
    """(file, whether its black is no imagery) of each source of a VRT's first band, in the order
    GDAL paints them (each on top of the ones before)."""
    band = ET.parse(path).getroot().find("VRTRasterBand")
    sources = []
    for source in [] if band is None else band:
        name = source.find("SourceFilename")
        if name is None or not name.text:
            continue
        file = os.path.join(os.path.dirname(path), name.text) if name.get("relativeToVRT") == "1" else name.text
        nodata = source.findtext("NODATA")
        masked = (source.findtext("UseMaskBand") or "").lower() == "true" or (nodata is not None and float(nodata) == 0)
        sources.append((file, masked))
    return sources


def _local_vrt(path: str) -> bool:
    return path.lower().endswith(".vrt") and not is_remote(path)


def _layers(imagery: Imagery) -> list[_Layer]:
    """The mosaic's files from the top down: a directory's or list's in order (the first with a
    valid pixel gives it), a local VRT's sources last first (GDAL paints them in order)."""
    layers = []
    for asset in imagery.assets:
        sources = _vrt_sources(asset.path) if _local_vrt(asset.path) else []
        if len(sources) < 2:
            with rasterio.open(asset.path) as dataset:
                layers.append(_Layer(asset.path, asset.boxes, None, _masks_black(dataset, imagery.nodata)))
            continue
        for file, masked in reversed(sources):
            with Reader(file) as reader:
                layers.append(_Layer(file, _footprint(reader, reader.dataset, file), asset.path, masked))
    return layers


def _hides(top: _Layer, below: _Layer, nodata: float | None) -> bool:
    """Whether the top file's black pixels cover the file below's: inside one VRT unless its
    source masks them (the nodata override masks only what the VRT gives), else unless the
    file's black, or the nodata override, is no imagery."""
    if top.vrt is not None and top.vrt == below.vrt:
        return not top.masks_black
    return not (top.masks_black or nodata == 0)


def _georeferencing(dataset: Any) -> tuple[Any, Any]:
    """(affine transform, crs) of a file's pixels: from its ground control points where it has
    no geotransform (rio-tiler warps by those)."""
    if dataset.transform.is_identity and dataset.gcps[0]:
        return from_gcps(dataset.gcps[0]), dataset.gcps[1]
    return dataset.transform, dataset.crs


def _black_edge(dataset: Any, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) of the black points (0 in every band) among points along a file's four edges,
    at most EDGE_POINTS a side (GDAL reads an overview where there is one)."""
    width, height = dataset.width, dataset.height
    across, down = min(EDGE_POINTS, width), min(EDGE_POINTS, height)
    cols_across, rows_down = (np.arange(across) + 0.5) * width / across, (np.arange(down) + 0.5) * height / down
    cols, rows, black = [], [], []
    for window, shape, col, row in (
        (Window(0, 0, width, 1), (1, across), cols_across, np.full(across, 0.5)),
        (Window(0, height - 1, width, 1), (1, across), cols_across, np.full(across, height - 0.5)),
        (Window(0, 0, 1, height), (down, 1), np.full(down, 0.5), rows_down),
        (Window(width - 1, 0, 1, height), (down, 1), np.full(down, width - 0.5), rows_down),
    ):
        values = dataset.read(bands, window=window, out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        black.append((values == 0).all(axis=0).ravel())
        cols.append(col)
        rows.append(row)
    transform, crs = _georeferencing(dataset)
    edge = np.concatenate(black)
    x, y = transform * (np.concatenate(cols)[edge], np.concatenate(rows)[edge])
    lon, lat = transform_points(crs, "EPSG:4326", np.asarray(x), np.asarray(y))
    return np.asarray(lon), np.asarray(lat)


def _imagery_at(dataset: Any, bands: list[int], lon: np.ndarray, lat: np.ndarray) -> int:
    """How many of the points (lon, lat) a file has imagery at: a valid pixel, not black."""
    transform, crs = _georeferencing(dataset)
    x, y = (np.asarray(v) for v in transform_points("EPSG:4326", crs, lon, lat))
    cols, rows = ~transform * (x, y)
    inside = (cols >= 0) & (cols < dataset.width) & (rows >= 0) & (rows < dataset.height)
    if not inside.any():
        return 0
    values = np.ma.stack(list(dataset.sample(zip(x[inside], y[inside], strict=True), indexes=bands, masked=True)))
    return int((~np.ma.getmaskarray(values).any(axis=1) & (values.filled(0) != 0).any(axis=1)).sum())


def _meets(boxes: tuple[Box, ...], lon: np.ndarray, lat: np.ndarray) -> bool:
    return any(((w <= lon) & (lon <= e) & (s <= lat) & (lat <= n)).any() for w, s, e, n in boxes)


def check_black_borders(imagery: Imagery, remedy: str = NODATA_OPTION_REMEDY) -> None:
    """Refuse a mosaic in which a file's black border (pixels 0, 0, 0 without a nodata declared)
    covers another file's imagery where they overlap: a directory's first file with a valid pixel
    gives it, and GDAL paints a VRT's sources in order, so a reprojected scene's black collar hid
    its neighbour's pixels, embedded as black, silently. Neither gdalbuildvrt nor rio-tiler's
    mosaics take black for no imagery unless told (real imagery holds black too), so this says
    how to tell them: `remedy` where the caller reads the files (its {file} the bordered one; a
    VRT's own sources are rebuilt with -srcnodata 0 whoever reads them)."""
    if len(imagery.assets) == 1 and not _local_vrt(imagery.assets[0].path):
        return  # one file: nothing beneath it
    layers = _layers(imagery)
    if len(layers) < 2:
        return
    for i, top in enumerate(layers[:-1]):
        below = [layer for layer in layers[i + 1 :] if _hides(top, layer, imagery.nodata)]
        if not below:
            continue
        with rasterio.open(top.path) as dataset:
            lon, lat = _black_edge(dataset, [b for b in imagery.rgb_bands if b <= dataset.count])
        if len(lon) < HIDDEN_MIN:
            continue
        for layer in below:
            if not _meets(layer.boxes, lon, lat):
                continue
            with rasterio.open(layer.path) as dataset:
                hidden = _imagery_at(dataset, [b for b in imagery.rgb_bands if b <= dataset.count], lon, lat)
            if hidden < HIDDEN_MIN:
                continue
            remedy = (
                f"rebuild {top.vrt!r} with gdalbuildvrt -srcnodata 0"
                if top.vrt is not None and top.vrt == layer.vrt
                else remedy.replace("{file}", top.path)
            )
            raise ImageryError(
                f"imagery {top.path!r} has a black border (pixels 0, 0, 0; no nodata declared) that covers "
                f"{layer.path!r} where they overlap ({hidden} points sampled on its edge), since a mosaic takes "
                f"black for imagery: {remedy}"
            )

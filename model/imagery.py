"""The imagery reader every part uses: a raster plus a cell (z, x, y) gives the RGB pixels the
model sees and their ground sample distance. Training, corpus, precompute and the server's
basemap all cut pixels here, so the model is served exactly the pixels it was trained on."""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.constants import WGS84_CRS
from rio_tiler.io import Reader

from model.tiles import ground_sample_distance, tile_centres

# rio-tiler clips latitudes to the mercator limit for world rasters and warns each time; expected.
warnings.filterwarnings("ignore", message="Adjusting dataset latitudes", category=UserWarning)

# A cell with less than this fraction of valid pixels has no imagery (skipped, never black).
MIN_VALID_FRACTION = 0.5


class ImageryError(Exception):
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


class Imagery:
    """A raster that rio-tiler reads (GeoTIFF/COG, any CRS), cut into web-mercator cells.

    One rasterio handle per thread: GDAL datasets are not safe to share across threads.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._local = threading.local()
        try:
            reader = self._reader()
            self.bounds = tuple(float(v) for v in reader.get_geographic_bounds(WGS84_CRS))
            self.count = reader.dataset.count
            self.minzoom, self.maxzoom = reader.minzoom, reader.maxzoom
        except Exception as exc:  # rasterio raises several types for unreadable sources
            raise ImageryError(f"cannot read imagery {self.path!r}: {exc}") from exc
        if self.count < 3:
            raise ImageryError(f"imagery {self.path!r} has {self.count} band(s); RGB needs 3")

    def _reader(self) -> Reader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = Reader(self.path)
            self._local.reader = reader
        return reader

    def describe(self) -> dict:
        """A JSON-able description for manifests."""
        return {"path": self.path, "bounds": list(self.bounds), "bands": self.count}

    def cell(self, z: int, x: int, y: int, size: int) -> CellImage | None:
        """The cell's pixels at `size` x `size`, or None when it has no imagery there."""
        try:
            img = self._reader().tile(
                x, y, z, tilesize=size, indexes=(1, 2, 3),
                resampling_method="bilinear", reproject_method="bilinear",
            )
        except TileOutsideBounds:
            return None
        valid = img.mask > 0
        if valid.mean() < MIN_VALID_FRACTION:
            return None
        rgb = np.clip(img.data, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        rgb = np.where(valid[..., None], rgb, 0).astype(np.uint8)
        _, lat = tile_centres(z, np.array([x]), np.array([y]))
        return CellImage(rgb=np.ascontiguousarray(rgb), valid=valid,
                         gsd=float(ground_sample_distance(z, lat[0], size)))

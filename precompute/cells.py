"""Cells for precompute: the pixels of runtime.imagery.Imagery, byte for byte, read with
rio-tiler's per-file set-up done once per file instead of once per cell.

For each tile, rio-tiler's `Reader.tile` first checks that the tile meets the file (a densified
`transform_bounds`) and derives the file's resolution in web mercator (`calculate_default_transform`),
then builds a WarpedVRT and reads it. The two set-up steps depend only on the file and cost more
than the warp itself for 64 px cells (profiled on the demo world: about 60% of a level-7 read).
`CellImagery` computes the resolution once per file and hands the VRT rio-tiler would build to
rio-tiler's own `reader.read`, so the warp, the resampling and the mask are rio-tiler's. A tile
that misses the file is warped to an all-invalid cell (None), as the skipped check would have
decided; tests/test_precompute_cells.py checks the pixels equal Imagery's.
"""

from __future__ import annotations

import threading

from affine import Affine
from morecantile import Tile
from rasterio import windows
from rasterio.io import DatasetReader
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rio_tiler.constants import WEB_MERCATOR_CRS, WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.models import ImageData
from rio_tiler.reader import read

from runtime.imagery import Imagery

# rio-tiler crops a geographic file to these latitudes before deriving its mercator resolution.
_LAT_LIMIT = 85.06


def mercator_resolution(dataset: DatasetReader) -> tuple[float, float] | None:
    """The file's pixel size in web mercator as rio-tiler's `get_vrt_transform` derives it, or None
    where rio-tiler takes another path (a file already in web mercator, a VRT, inverted bounds)."""
    if isinstance(dataset, WarpedVRT) or dataset.crs == WEB_MERCATOR_CRS:
        return None
    width, height, bounds = dataset.width, dataset.height, list(dataset.bounds)
    if dataset.crs == WGS84_CRS:
        if bounds[1] > _LAT_LIMIT or bounds[3] < -_LAT_LIMIT:
            return None
        if bounds[1] < -_LAT_LIMIT or bounds[3] > _LAT_LIMIT:
            bounds[1], bounds[3] = max(bounds[1], -_LAT_LIMIT), min(bounds[3], _LAT_LIMIT)
            window = windows.from_bounds(*bounds, transform=dataset.transform)
            width, height = round(window.width), round(window.height)
    transform, _, _ = calculate_default_transform(dataset.crs, WEB_MERCATOR_CRS, width, height, *bounds)
    return transform.a, transform.e


def tile_vrt(resolution: tuple[float, float], z: int, x: int, y: int, size: int) -> tuple[Affine, int, int]:
    """(transform, width, height) of the VRT rio-tiler warps tile (z, x, y) into: the file's own
    resolution, or the tile's `size` px where that is finer (upsampling)."""
    w, s, e, n = WEB_MERCATOR_TMS.xy_bounds(Tile(x=x, y=y, z=z))
    output = from_bounds(w, s, e, n, size, size)
    x_res = output.a if abs(resolution[0]) > abs(output.a) else resolution[0]
    y_res = output.e if abs(resolution[1]) > abs(output.e) else resolution[1]
    width, height = max(1, round((e - w) / x_res)), max(1, round((s - n) / y_res))
    return from_bounds(w, s, e, n, width, height), width, height


class CellImagery(Imagery):
    """An Imagery whose per-file reads skip rio-tiler's per-tile set-up (see the module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._resolutions: dict[str, tuple[float, float] | None] = {}
        self._resolutions_lock = threading.Lock()

    @classmethod
    def of(cls, imagery: Imagery) -> CellImagery:
        """The same source (read the same way: nodata, rescale) as `imagery`, read this way."""
        return imagery if isinstance(imagery, cls) else cls(imagery.source, **imagery.reading())

    def _resolution(self, path: str) -> tuple[float, float] | None:
        with self._resolutions_lock:
            if path not in self._resolutions:
                dataset = self._reader(path).dataset
                assert dataset is not None  # an open Reader holds its dataset
                self._resolutions[path] = mercator_resolution(dataset)
            return self._resolutions[path]

    def _read(self, path: str, x: int, y: int, z: int, size: int) -> ImageData:
        resolution = self._resolution(path)
        if resolution is None:
            return super()._read(path, x, y, z, size)
        dataset = self._reader(path).dataset
        assert dataset is not None
        transform, width, height = tile_vrt(resolution, z, x, y, size)
        return read(
            dataset,
            indexes=self.rgb_bands,
            width=size,
            height=size,
            nodata=self.nodata,
            vrt_options={
                "crs": WEB_MERCATOR_CRS,
                "transform": transform,
                "width": width,
                "height": height,
                "dtype": dataset.dtypes[0],
            },
            resampling_method="bilinear",
            reproject_method="bilinear",
        )

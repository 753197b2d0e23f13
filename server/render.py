"""Values to images: palette PNGs (index 0 = no data, transparent; 1..255 = the colormap over
`rescale`), encoded at a fast zlib level."""
from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image
from rio_tiler.colormap import cmap

PNG_COMPRESS_LEVEL = 1


def colormap_names() -> list[str]:
    return sorted(cmap.list())


@lru_cache(maxsize=64)
def palette(name: str) -> tuple[bytes, bytes]:
    """(RGB palette of 256 entries, tRNS alpha table) for a rio-tiler colormap name."""
    table = cmap.get(name)
    rgb = bytearray(b"\x00\x00\x00")
    alpha = bytearray(b"\x00")
    for i in range(1, 256):
        r, g, b, a = table[round((i - 1) * 255 / 254)]
        rgb += bytes((r, g, b))
        alpha.append(a)
    return bytes(rgb), bytes(alpha)


def quantise(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float values -> uint8 palette indices 1..255 over [lo, hi]; NaN -> 0."""
    scaled = (np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-12)
    idx = 1 + np.rint(np.clip(scaled, 0.0, 1.0) * 254.0).astype(np.uint8)
    idx[np.isnan(values)] = 0
    return idx


def encode_png(values: np.ndarray, lo: float, hi: float, colormap: str) -> bytes:
    rgb, alpha = palette(colormap)
    image = Image.fromarray(quantise(values, lo, hi), mode="P")
    image.putpalette(rgb)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, transparency=alpha)
    return buf.getvalue()

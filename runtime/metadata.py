"""The one metadata encoding, used by training and by serving (docs/design.md, "Metadata encoding").

It fixes two collisions of the PSM code: hours lie on a 24-hour circle (PSM divides by 23, so
0 h and 23 h coincide) and a location is a unit 3-vector (PSM's lat/90 sends both poles to one
code). Every token may be absent; absent tokens are zeros with `present = 0`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.contract import META_TOKENS
from runtime.errors import UserError

ArrayLike = float | int | Sequence[float] | np.ndarray | None


class MetadataError(UserError, ValueError):
    """A metadata value the model has no token for, or a location given by half."""


class Vocabulary:
    """Names of a categorical token (audio source, caption source) mapped to ids 0..n-1."""

    def __init__(self, names: Sequence[str]):
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate names in vocabulary {list(names)}")
        self.names = list(names)
        self._ids = {name: i for i, name in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def id(self, name: str) -> int:
        """Id of `name`; a MetadataError that lists the choices when it is unknown."""
        try:
            return self._ids[name]
        except KeyError:
            raise MetadataError(f"unknown value {name!r}; expected one of {', '.join(self.names)}") from None


def encode_location(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(N, 3) unit vectors on the sphere: no pole or dateline collision."""
    lat_r = np.radians(np.asarray(lat, dtype=np.float64))
    lon_r = np.radians(np.asarray(lon, dtype=np.float64))
    return np.stack([np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)], axis=-1).astype(
        np.float32
    )


def encode_hour(hour: np.ndarray) -> np.ndarray:
    """(N, 2) position on the 24-hour circle; fractional hours are allowed."""
    angle = 2 * np.pi * np.asarray(hour, dtype=np.float64) / 24.0
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1).astype(np.float32)


def encode_month(month: np.ndarray) -> np.ndarray:
    """(N, 2) position on the 12-month circle, months numbered 1..12."""
    angle = 2 * np.pi * (np.asarray(month, dtype=np.float64) - 1.0) / 12.0
    return np.stack([np.sin(angle), np.cos(angle)], axis=-1).astype(np.float32)


def _column(value: ArrayLike, n: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast a scalar/array/None (or an array with NaN for missing) to values and a mask."""
    if value is None:
        return np.zeros(n, dtype=dtype), np.zeros(n, dtype=bool)
    arr = np.broadcast_to(np.asarray(value), (n,))
    if arr.dtype.kind == "f":
        present = ~np.isnan(arr)
        return np.where(present, arr, 0).astype(dtype), present
    return arr.astype(dtype), np.ones(n, dtype=bool)


def encode_metadata(
    n: int,
    *,
    lat: ArrayLike = None,
    lon: ArrayLike = None,
    hour: ArrayLike = None,
    month: ArrayLike = None,
    source: ArrayLike = None,
    caption_source: ArrayLike = None,
) -> dict[str, np.ndarray]:
    """Inputs of the fuse graph (all but `sat`) for n samples.

    Each argument is a scalar (same for all), an array of n values (float NaN = unknown for that
    sample), or None (unknown for all). `source`/`caption_source` are vocabulary ids.
    """
    if (lat is None) != (lon is None):
        raise MetadataError("give both lat and lon, or neither")
    lat_v, lat_p = _column(lat, n, np.float64)
    lon_v, lon_p = _column(lon, n, np.float64)
    hour_v, hour_p = _column(hour, n, np.float64)
    month_v, month_p = _column(month, n, np.float64)
    src_v, src_p = _column(source, n, np.int64)
    cap_v, cap_p = _column(caption_source, n, np.int64)
    loc_p = lat_p & lon_p
    present = {
        "location": loc_p,
        "hour": hour_p,
        "month": month_p,
        "source": src_p,
        "caption_source": cap_p,
    }
    return {
        "location": encode_location(lat_v, lon_v) * loc_p[:, None],
        "hour": encode_hour(hour_v) * hour_p[:, None],
        "month": encode_month(month_v) * month_p[:, None],
        "source": np.where(src_p, src_v, 0).astype(np.int64),
        "caption_source": np.where(cap_p, cap_v, 0).astype(np.int64),
        "present": np.stack([present[t] for t in META_TOKENS], axis=-1).astype(np.float32),
    }

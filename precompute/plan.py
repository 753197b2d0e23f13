"""Which cells a precompute run embeds: every level's tiles over a bounding box, in quadkey
(Morton) order, which is also the store's order."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.tiles import MAX_LEVEL, morton, tiles_in_bbox

WORLD = (-180.0, -85.0511287798066, 180.0, 85.0511287798066)


@dataclass(frozen=True)
class LevelPlan:
    level: int
    codes: np.ndarray  # (N,) uint64 Morton codes, sorted
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)


def parse_levels(text: str) -> list[int]:
    """'0-6' or '3' or '2,4,5' -> sorted levels; ValueError with a sentence otherwise."""
    try:
        levels: set[int] = set()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            levels.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"levels must look like 0-6 or 2,4,5, not {text!r}") from None
    if not levels or min(levels) < 0 or max(levels) > MAX_LEVEL:
        raise ValueError(f"levels must lie in 0..{MAX_LEVEL}, got {text!r}")
    return sorted(levels)


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """'west,south,east,north' in degrees; ValueError with a sentence otherwise."""
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"bbox must be four numbers west,south,east,north, not {text!r}") from None
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise ValueError(f"bbox {text!r} is not west<east in -180..180 and south<north in -90..90")
    return west, south, east, north


def intersect(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float] | None:
    west, south = max(a[0], b[0]), max(a[1], b[1])
    east, north = min(a[2], b[2]), min(a[3], b[3])
    return (west, south, east, north) if west < east and south < north else None


def plan_level(level: int, bbox: tuple[float, float, float, float]) -> LevelPlan:
    x, y = tiles_in_bbox(level, bbox)
    codes = morton(x, y)
    order = np.argsort(codes)
    return LevelPlan(level, codes[order], x[order], y[order])

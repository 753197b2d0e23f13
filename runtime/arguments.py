"""argparse types for the numbers a command takes. A bare `type=int` or `type=float` lets 0, a
negative count, NaN or infinity through, to be taken for a default, run zero steps or fail later
with a puzzling reason; these refuse the value as argparse refuses any bad argument: exit code 2
and a sentence naming the option (`argument --port: must be an integer from 1 to 65535, not
'99999'`)."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# What a person types: ASCII digits. Python's int() and float() also take other scripts' digits
# ('٣' is 3) and underscores ('1_0' is 10), which would let a slip stand for a number; and int()
# raises on more than 4300 digits, which argparse reports without the option's range.
INTEGER = re.compile(r"\s*[+-]?[0-9]{1,30}\s*", re.ASCII)
NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)


# '0-6', '3' or '2,4-5': levels of one or two ASCII digits, so '0-99999999999' is refused before
# a set of 10**11 levels is built (precompute hung on it).
LEVEL_LIST = re.compile(r"[0-9]{1,2}(-[0-9]{1,2})?(,[0-9]{1,2}(-[0-9]{1,2})?)*", re.ASCII)


def levels_in(text: str, most: int) -> list[int]:
    """The sorted levels of '0-6', '3' or '2,4-5', each at most `most`; ValueError with a
    sentence otherwise."""
    if not LEVEL_LIST.fullmatch(text):
        raise ValueError(f"levels must look like 0-6 or 2,4,5, not {text!r}")
    levels: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ValueError(f"levels {part!r} run from high to low; write {last}-{first}")
        if last > most:
            raise ValueError(f"levels must lie in 0..{most}, got {text!r}")
        levels.update(range(first, last + 1))
    return sorted(levels)


def integer_in(least: int, most: int | None = None, note: str = "") -> Callable[[str], int]:
    """An integer from `least` to `most` (no upper end when None); `note` says what an edge
    value means, e.g. '0: every level gets an IVF index'."""
    span = f"from {least} to {most}" if most is not None else f"of at least {least}"
    said = f" ({note})" if note else ""

    def parse(text: str) -> int:
        value = int(text) if INTEGER.fullmatch(text) else None
        if value is None or value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"must be an integer {span}{said}, not {text!r}")
        return value

    return parse


# The seeds numpy and torch take alike: one outside fails late, deep in either.
MAX_SEED = 2**32 - 1


def seed_argument() -> Callable[[str], int]:
    """A random seed, 0..MAX_SEED."""
    return integer_in(0, MAX_SEED)


def number_above(least: float, what: str = "a number") -> Callable[[str], float]:
    """A finite number above `least`; `what` names it ('a number of seconds')."""

    def parse(text: str) -> float:
        value = float(text) if NUMBER.fullmatch(text) else math.nan
        if not (math.isfinite(value) and value > least):
            raise argparse.ArgumentTypeError(f"must be {what} above {least:g}, not {text!r}")
        return value

    return parse


def number_in(least: float, most: float, what: str = "a number") -> Callable[[str], float]:
    """A finite number from `least` to `most`, ends included; `what` names it ('a latitude')."""

    def parse(text: str) -> float:
        value = float(text) if NUMBER.fullmatch(text) else math.nan
        if not (math.isfinite(value) and least <= value <= most):
            raise argparse.ArgumentTypeError(f"must be {what} from {least:g} to {most:g}, not {text!r}")
        return value

    return parse


def local_hour(text: str) -> float:
    """A local hour of the day, 0 or more and below 24 (fractions allowed: 17.5 is 17:30), as the
    tile routes' hour is 0..23: 24 is the next day's 0."""
    value = float(text) if NUMBER.fullmatch(text) else math.nan
    if not (math.isfinite(value) and 0 <= value < 24):
        raise argparse.ArgumentTypeError(
            f"must be a local hour of 0 or more and below 24 (17.5 is 17:30), not {text!r}"
        )
    return value


SPECIAL_VALUES = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def pixel_value(text: str) -> float:
    """A pixel value as a raster stores it: an ASCII number, or nan, inf or -inf (float rasters'
    nodata); whether a file's pixels can hold it is the imagery's check."""
    if NUMBER.fullmatch(text):
        return float(text)
    special = SPECIAL_VALUES.get(text.strip().lower())
    if special is None:
        raise argparse.ArgumentTypeError(f"must be a number (or nan, inf, -inf), not {text!r}")
    return special


def parsed_by(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type of a parser that raises ValueError with its sentence (a rescale range,
    a list of bands): argparse then refuses the value with that sentence, not 'invalid value'."""

    def typed(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return typed

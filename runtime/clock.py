"""A place's clock: the time zone its clocks keep, by where it is. Training reads a recording's
time given at a UTC offset as the hour its place's clocks showed (model/readers/common.py), and
the server reads an instant asked of a place or a map (`datetime=`) the same way, so both take
the zone from here."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import tzfpy


def zone_at(lat: float, lon: float) -> tzinfo:
    """The time zone a place's clocks keep: its tz database zone by location (tzfpy, whose polygons
    are timezone-boundary-builder's, (c) OpenStreetMap contributors, ODbL; at sea its Etc/GMT zones)
    read by zoneinfo. Where the lookup names none (a place off the globe), or a zone this machine's
    tz database lacks: the nominal zone, UTC + longitude / 15 rounded. A lookup takes about 0.7 us,
    less than a cache keyed by place would; zoneinfo's own cache of zones takes 4 us, so named_zone
    keeps them."""
    return named_zone(tzfpy.get_tz(lon, lat)) or nominal_zone(lon)


def nominal_zone(lon: float) -> tzinfo:
    """UTC + longitude / 15 hours, rounded: the zone of a place no boundary names."""
    return timezone(timedelta(hours=_nominal_hours(lon)))


def _nominal_hours(lon: float) -> int:
    return round(((lon + 180) % 360 - 180) / 15)


@functools.cache
def named_zone(name: str) -> tzinfo | None:
    """The tz database zone `name` ("Europe/Paris"); None for no name or one this machine lacks."""
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def clock_at(when: datetime, lat: float, lon: float) -> datetime:
    """What the place's clocks show at `when`: an instant (a datetime with an offset) in the place's
    zone, daylight saving included; a wall-clock time (no offset) is the place's clock already.
    OverflowError where the instant's local date falls outside years 1..9999."""
    return when if when.tzinfo is None else when.astimezone(zone_at(lat, lon))


def clocks_at(instant: datetime, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hour (0..23) and month (1..12) each place's clocks show at `instant` (a datetime with an
    offset), as zone_at's zone reads it: a map's cells at one instant. One zone lookup a place (about
    1 us) and one conversion a zone."""
    seen: dict[str | int, tuple[int, int]] = {}
    hours, months = np.empty(len(lat), np.int64), np.empty(len(lat), np.int64)
    for i, (y, x) in enumerate(zip(np.asarray(lat, float).tolist(), np.asarray(lon, float).tolist(), strict=True)):
        name = tzfpy.get_tz(x, y)
        zone = named_zone(name)
        key = name if zone is not None else _nominal_hours(x)
        if (shown := seen.get(key)) is None:
            local = instant.astimezone(zone or nominal_zone(x))
            shown = seen[key] = (local.hour, local.month)
        hours[i], months[i] = shown
    return hours, months

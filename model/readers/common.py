"""Pieces every dataset reader shares: dates into (month, hour) at the place's clock, image bytes
into RGB, PSM's zoom crop, and the content hash of what a split reads."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import io
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import available_timezones

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model.data import BadSample
from runtime.clock import named_zone, zone_at

# An offset after GMT or UTC as people and JavaScript's Date write it ("GMT+0200 (CEST)", "UTC-5",
# "GMT+05:30"): UTC plus that offset. dateutil reads "GMT+2" the POSIX way, two hours behind UTC.
_NAMED_OFFSET = re.compile(r"\b(?:gmt|utc)\s*([+-])(\d{1,2})(?::?(\d{2}))?\b(?:\s*\([^)]*\))?", re.IGNORECASE)
# Trailing time-zone words and junk that dateutil cannot use ("EDT", "CEST"); a bare
# "UTC" or "GMT" is kept, dateutil reads it as an offset of 0.
_TZ_JUNK = re.compile(r"\s*(?:\b[A-Z]{2,5}\b|gmt[^\s]*|utc[^\s]*)\s*$", re.IGNORECASE)
_UTC = re.compile(r"\s*\b(?:utc|gmt)\s*$", re.IGNORECASE)
# Offset 0 whatever this machine's zone (dateutil reads a zone named as the local one as local time).
_UTC_NAMES = dict.fromkeys(("UTC", "GMT", "Z", "z"), UTC)
# EXIF's date (DateTimeOriginal, as cameras, recorders and exiftool write it): "2022:07:01 10:00:00",
# which dateutil reads as a time of no date.
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})(?=$|[\sT])")
_SENTINELS = (datetime(2001, 1, 1, 3, 7, 11), datetime(2002, 2, 2, 17, 41, 53))
# A tz database zone named after the time: RFC 9557's bracketed suffix ("...+02:00[Europe/Paris]",
# as Java and Temporal write it; any name; critical, "[!Europe/Paris]", or followed by tags such as
# "[u-ca=iso8601]", the calendar to show a date in, which is ISO 8601's all the same) or an
# Area/Location name of the tz database's areas after a space ("... Europe/Paris", "Etc/GMT+2"; not
# "N/A" or "Jun/12/2022").
_ZONE_AREAS = (
    "Africa|America|Antarctica|Arctic|Asia|Atlantic|Australia|Europe|Indian|Pacific|Etc|US|Canada|Brazil|Chile|Mexico"
)
_ZONE_NAME = re.compile(
    rf"\[!?([^\]\s=!]+)\](?:\[!?[\w-]+=[^\]\s]*\])*\s*$|(?:^|\s)((?:{_ZONE_AREAS})(?:/[A-Za-z][\w+-]*)+)\s*$",
    re.IGNORECASE,
)
# RFC 9557's "Z" before a zone: the UTC instant, its local offset not said (section 3.1), so no
# offset the zone could contradict ("2022-07-01T10:00Z[Europe/Paris]" is 12:00 in Paris).
_UTC_DESIGNATOR = re.compile(r"\d[Zz]$")


@dataclass(frozen=True)
class When:
    month: int | None
    hour: float | None
    # The time as an instant, where the text gives its date and UTC offset ("Z", "+02:00", "UTC"),
    # with that offset (at_place: in the place's zone); None for a wall-clock time or without a time.
    instant: datetime | None = None
    # The UTC offset of a time without a full date ("14:30+02:00"): no instant, since the offset the
    # place's clock kept that day is unknown (at_place).
    offset: timedelta | None = None
    # The date, where the text gives it whole (year, month and day).
    day: date | None = None
    # The named time zone of a time without a full date ("14:30 Europe/Paris"): no instant, as `offset`.
    zone: tzinfo | None = None


class UndatedOffset(ValueError):
    """A time at a UTC offset without a date, at a place whose clocks keep more than one offset over
    the year (or its month) and not that one, or in a named zone whose clock differs from the
    place's by more than one amount then: its hour at the place is one of two or more."""


class BadZone(ValueError):
    """A time in a named zone the tz database does not know, or at a UTC offset the zone it names
    did not keep then: which instant it is cannot be told."""


def parse_when(text: str | None, *, dayfirst: bool = False, fuzzy: bool = True) -> When:
    """Month and local hour of a free-form date string (GeoSound's formats: 'June 26th, 2010',
    '2021/10/31 3:11 PM EDT', '2011-07-26 12:46:19.0', '1/29/09 10:28'; EXIF's '2022:07:01 10:00:00').
    A date without a time gives hour None, never hour 0 (PSM counts a missing time as midnight);
    an unparseable one gives neither. `dayfirst` reads 01/05/2022 as 1 May (dateutil's own
    reading of a date whose first number is past 12, whatever it is told); `fuzzy` skips words
    dateutil does not know ('Taken 2010-06-26'), and where that leaves a month but no day while no
    month is named in English, the month is unknown: the word was likely the month's name and the
    number its day ('12 juin 2022' gave December). The hour is the clock's as written, also where the
    text gives a UTC offset or a tz database zone ('Europe/Paris', '[Europe/Paris]'): `instant` has
    it, or `offset` / `zone` without a date; at_place reads it. BadZone for a zone the tz database
    does not know, or one that did not keep the offset given beside it. A zone's abbreviation
    ("EDT") is no offset (CST is in China, the US and Cuba): such a time is a wall clock."""
    if not text or not str(text).strip():
        return When(None, None)
    text, zone = _zone_named(str(text))
    when = _parse_when(text, dayfirst, fuzzy)
    if zone is None or when.hour is None or when.instant is not None or when.offset is not None:
        _check_zone_offset(when, None if _UTC_DESIGNATOR.search(text) else zone)
        return when
    if when.day is None:
        return dataclasses.replace(when, zone=zone)
    wall = datetime.combine(when.day, time()) + timedelta(minutes=round(when.hour * 60))
    return dataclasses.replace(when, instant=wall.replace(tzinfo=zone))


def _zone_named(text: str) -> tuple[str, tzinfo | None]:
    """The text without the tz database zone named at its end, and that zone (None without one);
    BadZone for a name the tz database does not know, with the nearest name it does."""
    found = _ZONE_NAME.search(text)
    if not found:
        return text, None
    name = found[1] or found[2]
    # Looked up among the tz database's names alone ("europe/paris" too): zoneinfo reads any path
    # under its folders, and a folder ("America/Argentina"), a name too long for a file or the
    # machine's "localtime" raised OSError or read this machine's clock.
    zone = named_zone(_zone_names().get(name.lower(), ""))
    if zone is None:
        raise BadZone(_unknown_zone(name))
    return text[: found.start()].strip(), zone


@functools.lru_cache(maxsize=256)
def _unknown_zone(name: str) -> str:
    """BadZone's sentence for a name, with the nearest the tz database knows: a search of its ~600
    names (2 ms), worked out once per name, not on every row an export wrote it in."""
    close = difflib.get_close_matches(name, list(_zone_names().values()), n=1)
    return f"the tz database knows no time zone {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


@functools.cache
def _zone_names() -> dict[str, str]:
    """The tz database's zone names by their lower-case spelling (not the system's "localtime")."""
    return {name.lower(): name for name in sorted(available_timezones() - {"localtime"})}


def _check_zone_offset(when: When, zone: tzinfo | None) -> None:
    """BadZone where a dated time gives both a UTC offset and a zone that kept another then: either
    offset of a clock time the zone reads twice (02:30 on the night summer time ends) is kept."""
    if zone is None or when.instant is None:
        return
    wall = when.instant.replace(tzinfo=zone)
    kept = [wall.replace(fold=fold).utcoffset() for fold in (0, 1)]
    given = when.instant.utcoffset()
    if kept[0] is not None and given is not None and given not in kept:
        raise BadZone(
            f"the UTC offset it gives ({_utc(given)}) is not the one {str(zone)!r} kept then ({_utc(kept[0])})"
        )


def _parse_when(text: str, dayfirst: bool, fuzzy: bool) -> When:
    """parse_when of a text without a zone name."""
    from dateutil import parser

    text = _NAMED_OFFSET.sub(lambda m: f" {m[1]}{int(m[2]):02d}{m[3] or '00'}", text).strip()
    text = _EXIF_DATE.sub(r"\1-\2-\3", text)
    utc = _UTC.search(text)
    cleaned = _UTC.sub(" UTC", text)
    info = parser.parserinfo()
    if not re.search(r"\d\s*[ap]\.?m\.?$", text, re.I) and not utc:
        junk = _TZ_JUNK.search(text)
        word = junk.group().strip() if junk else ""
        if junk and info.month(word) is None and info.weekday(word) is None:  # "26 May" keeps its month
            cleaned = text[: junk.start()]
    try:
        (first, skipped_word), (second, _) = (_parse(cleaned, d, dayfirst, fuzzy) for d in _SENTINELS)
        offset = first.utcoffset()  # dateutil reads '+25:00', which datetime refuses here: no clock keeps it
    except (ValueError, OverflowError):
        return When(None, None)
    month = first.month if first.month == second.month else None
    if skipped_word and first.day != second.day and not any(info.month(w) for w in re.findall(r"[^\W\d_]+", cleaned)):
        month = None
    if first.hour != second.hour:
        return When(month, None)
    # A minute or second not written is 0, not the sentinel's: "2022-07-01T12", "6am" and "18h" give
    # their hour (dateutil fills what a text lacks from the default, the minute too), where the
    # hour was dropped as unknown.
    first = first.replace(
        minute=first.minute if first.minute == second.minute else 0,
        second=first.second if first.second == second.second else 0,
    )
    hour = first.hour + first.minute / 60.0
    day = first.date() if first.date() == second.date() else None  # else the day (or year) is a sentinel's
    if offset is None:
        return When(month, hour, day=day)
    if day is None:
        return When(month, hour, offset=offset)
    return When(month, hour, first, day=day)


def _parse(text: str, default: datetime, dayfirst: bool, fuzzy: bool) -> tuple[datetime, bool]:
    """dateutil's reading of `text` (the `default` filling what it lacks), and whether it skipped a
    word to read it (with `fuzzy` only)."""
    from dateutil import parser

    if not fuzzy:
        return parser.parse(text, default=default, dayfirst=dayfirst, tzinfos=_UTC_NAMES), False
    parsed, skipped = parser.parse(text, default=default, dayfirst=dayfirst, fuzzy_with_tokens=True, tzinfos=_UTC_NAMES)
    return parsed, any(re.search(r"[^\W\d_]", token) for token in skipped)


def at_place(when: When, lat: float | None, lon: float | None) -> When:
    """`when` as a clock at the place read it: a time given at a UTC offset is the same instant in
    the place's time zone (zone_at, daylight saving included), its month too where the date is
    known; a wall-clock time, one at an unknown place or one the calendar ends before (year 9999)
    stays as written. A time in a named zone is read as its instant in that zone. A time at an
    offset, or in a named zone, without a date: _undated_at_place."""
    if when.hour is None or lat is None or lon is None:
        return when
    if when.offset is not None or when.zone is not None:
        return _undated_at_place(when, zone_at(lat, lon))
    if when.instant is None:
        return when
    try:
        local = when.instant.astimezone(zone_at(lat, lon))
    except OverflowError:
        return when
    return When(local.month if when.month is not None else None, local.hour + local.minute / 60.0, local)


def _undated_at_place(when: When, zone: tzinfo) -> When:
    """The place's clock for a time at an offset whose day is unknown: as written where the offset
    is one the zone keeps in the time's month (any month without one: '+02:00' in Paris is its
    summer clock, '+01:00' its winter one); converted where the zone keeps a single offset then;
    otherwise UndatedOffset, since the hour would be one of two (a UTC time in Paris: 1 or 2 h on).
    A time in a named zone: _undated_in_zone."""
    assert when.hour is not None  # at_place calls it for a time at an offset or in a zone only
    if when.zone is not None:
        return _undated_in_zone(when, zone)
    assert when.offset is not None
    kept = _offsets(zone, when.month)
    if when.offset in kept:
        return When(when.month, when.hour)
    if len(kept) == 1:
        (local,) = kept
        return When(when.month, (when.hour + (local - when.offset) / timedelta(hours=1)) % 24)
    raise UndatedOffset(
        f"a time at a UTC offset ({_utc(when.offset)}) without a date, at a place whose clocks keep more than one "
        f"offset {'in that month' if when.month else 'over the year'} ({zone}: {', '.join(map(_utc, sorted(kept)))}), "
        "none of them that one: its hour there is one of those; write the date, or the place's clock"
    )


def _undated_in_zone(when: When, place: tzinfo) -> When:
    """A time in a named zone whose day is unknown, at the place's clock: shifted by the difference
    of the two clocks where it is the same all the time's month (or year): none for the place's own
    zone or Berlin's in Paris, an hour for London's; UndatedOffset where it is not (New York's in
    Paris: 6 hours, but 5 in the weeks their summer times do not share)."""
    assert when.zone is not None and when.hour is not None
    shifts = {p - z for p, z in zip(_clock(place, when.month), _clock(when.zone, when.month), strict=True)}
    if len(shifts) == 1:
        return When(when.month, (when.hour + next(iter(shifts)) / timedelta(hours=1)) % 24)
    during = "in that month" if when.month else "over the year"
    raise UndatedOffset(
        f"a time in a time zone ({when.zone}) without a date, whose clock differs from the clock at the place "
        f"({place}) by {' or '.join(sorted(map(_hours, shifts)))} {during}: its hour there depends on the day; "
        "write the date, or the place's clock"
    )


def _hours(shift: timedelta) -> str:
    """'1 h', '-5 h', '5.5 h'."""
    return f"{shift / timedelta(hours=1):g} h"


# The year whose rules give a zone's offsets for a time without a date: a recent one (today's rules).
UNDATED_YEAR = 2025


@functools.cache
def _offsets(zone: tzinfo, month: int | None) -> frozenset[timedelta]:
    """The UTC offsets `zone` keeps in `month` of UNDATED_YEAR (None: the whole year)."""
    return frozenset(_clock(zone, month))


@functools.cache
def _clock(zone: tzinfo, month: int | None) -> tuple[timedelta, ...]:
    """The UTC offset `zone` keeps in `month` of UNDATED_YEAR (None: the whole year), read twice a day."""
    start = datetime(UNDATED_YEAR, month or 1, 1, tzinfo=UTC)
    end = datetime(UNDATED_YEAR + (month or 12) // 12, (month or 12) % 12 + 1, 1, tzinfo=UTC)
    moments = (start + timedelta(hours=12 * i) for i in range(int((end - start) / timedelta(hours=12))))
    return tuple(moment.astimezone(zone).utcoffset() or timedelta(0) for moment in moments)


def _utc(offset: timedelta) -> str:
    """'UTC+02:00', 'UTC-04:00', 'UTC+05:30' as the tz database writes an offset."""
    minutes = round(offset / timedelta(minutes=1))
    return f"UTC{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# Why a place at exactly (0, 0) is taken for none: GPS loggers, cameras and exports write a missing fix
# so, and a recording of anywhere would be trained (and its cell cut) at sea off West Africa.
NULL_ISLAND = "null island in the Gulf of Guinea: a missing place written as zeros?"


def check_place(lat: float | None, lon: float | None) -> None:
    """ValueError, in the sentence every reader gives, for a place off the globe (with a hint where
    latitude and longitude swapped would be on it) or at (0, 0); a coordinate that is None is
    unknown and passes. Each reader reads its numbers its own way, then checks them here."""
    off_lat, off_lon = lat is not None and not -90 <= lat <= 90, lon is not None and not -180 <= lon <= 180
    if off_lat or off_lon:
        swapped = lat is not None and lon is not None and -90 <= lon <= 90 and -180 <= lat <= 180
        raise ValueError(
            f"latitude/longitude ({lat}, {lon}) outside the globe" + (": lat and lon swapped?" if swapped else "")
        )
    if lat == 0 and lon == 0:
        raise ValueError(f"latitude/longitude (0, 0), {NULL_ISLAND}")


# A picture with less than this share of opaque pixels is no image of the place (runtime.imagery
# skips a cell under half covered likewise).
MIN_OPAQUE_FRACTION = 0.5


def decode_image(data: bytes, where: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of encoded image bytes as a viewer shows them: turned upright by its
    EXIF orientation, 16-bit grey scaled to 8 bits (Pillow's RGB conversion clipped it: white),
    transparent pixels black (as imagery's nodata). BadSample when the bytes are not an image,
    its pixels have no fixed range (32-bit integer or float), or most of it is transparent. An
    image of the place is the user's own, no attack: Pillow's DecompressionBombWarning (a raw
    Python warning with a site-packages path, above 89 Mpx) is not printed, and past its hard limit
    the sample is skipped with a sentence that says so."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode_image(data, where)
    except Image.DecompressionBombError:
        raise BadSample(
            where,
            f"cannot decode image: it has more than the {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels Pillow decodes; "
            "save a smaller copy of it (the model sees a few hundred pixels across)",
        ) from None


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """decode_image, its warnings and its limit's error left to it."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            img = ImageOps.exif_transpose(opened)
            if img.mode.startswith("I;16"):
                return np.repeat(_eight_bits(np.asarray(img, dtype=np.uint16))[..., None], 3, axis=2)
            if img.mode in ("I", "F"):
                raise BadSample(
                    where,
                    f"cannot use a {img.mode!r} image: its 32-bit pixels have no fixed range; save it as 8 or 16 bit",
                )
            if not img.has_transparency_data:
                return np.asarray(img.convert("RGB"))
            rgba = np.asarray(img.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadSample(where, f"cannot decode image: {exc}") from None
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    if (alpha > 0).mean() < MIN_OPAQUE_FRACTION:
        raise BadSample(where, f"less than {MIN_OPAQUE_FRACTION:.0%} of the image is opaque")
    return np.round(rgba[..., :3] * alpha).astype(np.uint8)


def _eight_bits(pixels: np.ndarray) -> np.ndarray:
    """16-bit pixels over their full range 0..65535 as 0..255 (as Pillow reads 16-bit RGB)."""
    return np.round(pixels.astype(np.float32) / 257.0).astype(np.uint8)


def fit_image(rgb: np.ndarray, gsd: float, size: int, crop: int | None = None) -> tuple[np.ndarray, float]:
    """Centre-crop `crop` pixels (PSM's zoom: z x tile size; None: the largest square), resize to
    size x size (bicubic, as PSM) and return the image and its effective GSD (metres/pixel).
    The effective GSD is what the map server computes for a cell, so training and serving agree;
    PSM feeds the nominal z x GSD instead (docs/method.md, pitfall 17), off by the constant crop/size ratio."""
    h, w = rgb.shape[:2]
    side = min(h, w) if crop is None else min(crop, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top : top + side, left : left + side]
    if side != size:
        square = np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(square, dtype=np.uint8), float(gsd) * side / size


def content_hash(described: Iterable[object], files: Iterable[str]) -> str:
    """A split's `content_hash` (model.data.SampleSource): a hash of what its reader took from its
    index (rows, keys, captions, in order) and of each file it reads samples from, by the file's
    size, modification and change time. An edited row, or a file replaced, rewritten or touched
    (even `cp -p` or `tar x`, which keep the modification time, change the change time), gives
    another hash; the files cost one stat each and are never read (0.7 s for 100,000 local files)."""
    digest = hashlib.sha256()
    for item in described:
        digest.update(repr(item).encode())
        digest.update(b"\0")
    for path in files:
        digest.update(f"{path}\0{_stamp(path)}\n".encode())
    return digest.hexdigest()[:16]


def _stamp(path: str) -> str:
    """size, mtime_ns and ctime_ns of a file, or why it has none (a missing file hashes as such)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"unreadable {exc.errno}"
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"

"""`data: {kind: csv}`: a user's own recordings as a folder with one CSV row per recording
(format in docs/training.md). Each row gives where and when it was recorded, the audio file, an
optional caption and either an image file with its GSD or nothing, in which case the cell
containing the recording is cut from an imagery source by the same reader precompute uses.

Everything that can be checked without decoding is checked at start: malformed rows and rows
whose audio or image file is missing are skipped with one summary (counts per reason, the first
lines of each), and `level`, when not given, is derived from the imagery's resolution. Audio or
image files that exist but cannot be decoded are reported when read (model.data.BadSample) and
skipped by training.

The CSV is read as spreadsheets save it (csv_table.read_table: encodings, delimiters, header names), and
what a file writes alike in all its rows but a row cannot tell alone (decimal commas, longitudes
0..360, whether 01/05/2022 is in May) is read from all its rows first (conventions); anything it
cannot read as meant is refused or skipped with the reason, never read as something else."""

from __future__ import annotations

import calendar
import dataclasses
import functools
import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Self

import mercantile
import numpy as np
from pydantic import Field, field_validator, model_validator

from model.config import ConfigError, Section, Seed, from_section
from model.data import REMOTE_PREFIXES, BadSample, DataError, Sample, Splits, geographic_split, too_few_cells
from model.readers.common import When, at_place, check_place, content_hash, decode_image, fit_image, parse_when
from model.readers.csv_table import Table, read_table
from runtime.arguments import NUMBER
from runtime.audio import AudioDecodeError, SparseWave, decode_audio, non_finite
from runtime.imagery_checks import check_bands, check_rescale
from runtime.tiles import EARTH_CIRCUMFERENCE_M, MERCATOR_LAT_LIMIT, Footprint

if TYPE_CHECKING:
    from dateutil.parser import parserinfo

    from runtime.imagery import Imagery

log = logging.getLogger(__name__)
# The finest level a row may ask for enlarges the imagery's pixels at most this much (as precompute).
MAX_UPSAMPLE = 8.0
# A map tile of zoom z draws cells of level z + 4 (server.engine.CELLS_PER_TILE_LOG2).
CELLS_PER_TILE_LOG2 = 4


class SplitConfig(Section):
    """Held-out geographic cells (model.data.geographic_split)."""

    cell_deg: Annotated[float, Field(gt=0.0, le=360.0)] = 1.0
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    seed: Seed = 0

    @model_validator(mode="after")
    def _leaves_training(self) -> Self:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction {self.val_fraction:g} and test_fraction {self.test_fraction:g} leave no place to train"
            )
        return self


class CsvFolderConfig(Section):
    root: str  # the folder; paths in the CSV are relative to it
    csv: str = "samples.csv"
    imagery: str | None = None  # a raster (GeoTIFF/COG) to cut cells from for rows without `image`
    # Pixel values that become 0 and 255, for imagery that is not 8-bit (runtime.imagery).
    rescale: list[float] | None = None
    bands: list[int] | None = None  # the bands read as red, green and blue (default 1, 2, 3)
    # Web-mercator level of those cells, when a row has no `level`; None: derived from the imagery
    # (default_level).
    level: int | None = None
    # Whether dates such as 01/05/2022 put the day first (1 May); None: told by the file's dates
    # whose day is past 12 (read_rows refuses a file whose dates do not tell).
    dayfirst: bool | None = None
    split: SplitConfig = SplitConfig()

    @field_validator("rescale")
    @classmethod
    def _rescale(cls, value: list[float] | None) -> list[float] | None:
        return list(check_rescale(value)) if value is not None else None

    @field_validator("bands")
    @classmethod
    def _bands(cls, value: list[int] | None) -> list[int] | None:
        return list(check_bands(value)) if value is not None else None


@dataclass
class Row:
    line: int
    key: str
    lat: float
    lon: float
    month: int | None
    hour: float | None
    source: str | None
    audio: str
    caption: str | None
    caption_source: str | None
    image: str | None
    gsd: float | None
    level: int | None
    # The datetime gave a UTC offset other than the place's clock had then: its hour was converted (at_place).
    zone_converted: bool = False


def _optional(row: dict, name: str) -> str | None:
    value = (row.get(name) or "").strip()
    return value or None


@dataclass(frozen=True)
class Conventions:
    """How a file writes what the reader cannot tell from one row: the number columns written
    with a decimal comma ("45,5", from a spreadsheet set to a European language; only in a file
    not separated by commas), whether longitudes run 0..360 (every one >= 0, some past 180) and
    whether numeric dates put the day first."""

    delimiter: str = ","
    decimal_comma: frozenset[str] = frozenset()
    lon_360: bool = False
    dayfirst: bool = False  # day_order


NUMBER_COLUMNS = ("lat", "lon", "gsd")
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")
_DECIMAL_POINT = re.compile(r"[+-]?\d*\.\d+")
# The day zero of spreadsheets' dates (LibreOffice's, and Excel's as pandas and Access convert it):
# a time whose cell had no date comes out on it.
SPREADSHEET_DAY_ZERO = (date(1899, 12, 30), date(1899, 12, 31))
# Levels a row may name (web-mercator zooms; a cell of level 30 is 4 cm wide).
MAX_LEVEL = 30


def conventions(table: Table, path: Path, dayfirst: bool | None = None) -> Conventions:
    """The file's conventions, read from all its rows: a column is written with decimal commas
    when more of its numbers have one than a decimal point."""
    comma = set()
    if table.delimiter != ",":
        for name in NUMBER_COLUMNS:
            values = [row.get(name, "").strip() for _, row in table.rows]
            commas = sum(bool(_DECIMAL_COMMA.fullmatch(v)) for v in values)
            if commas > sum(bool(_DECIMAL_POINT.fullmatch(v)) for v in values):
                comma.add(name)
    numbers = Conventions(table.delimiter, frozenset(comma))
    lons = []
    for _, row in table.rows:
        try:
            lons.append(_number(row.get("lon", ""), "lon", numbers))
        except ValueError:
            continue
    lon_360 = bool(lons) and min(lons) >= 0 and 180 < max(lons) <= 360
    return Conventions(table.delimiter, frozenset(comma), lon_360, day_order(table, path, dayfirst))


# A date of numbers with the year last (01/05/2022, 1.5.22, 01-05-2022) or without it (5/6, 5-6)
# opening a datetime, after a weekday's name if any (not 06.30.00, a time after an ISO date).
_NUMERIC_DATE = re.compile(
    r"\s*(?:[^\W\d]+,?\s+)?(\d{1,2})([./-])(\d{1,2})(?:\2(\d{4}|\d{2})(?!\d)|(?![\d./:-]))", re.ASCII
)


def _numeric_date(text: str) -> re.Match[str] | None:
    """The numeric date opening `text`; a yearless one written with a dot is none (06.30 is a time)."""
    found = _NUMERIC_DATE.match(text)
    return None if found is None or (found[4] is None and found[2] == ".") else found


def day_order(table: Table, path: Path, dayfirst: bool | None) -> bool:
    """Whether the file's numeric dates put the day first: `dayfirst` when given (data.dayfirst),
    else what its dates whose first or second number is past 12 say (dates written with dots,
    01.05.2022, put the day first). DataError when they say both, or when none says and a date
    such as 01/05/2022 could be either: dateutil reads it month first and swaps a date it cannot
    (13/05/2022), so a day-first file had its months wrong on every day up to the 12th."""
    first: list[tuple[int, str]] = []
    second: list[tuple[int, str]] = []
    either: list[tuple[int, str, int, int]] = []
    dotted = False
    for line, row in table.rows:
        found = _numeric_date(row.get("datetime", ""))
        if not found:
            continue
        a, b = int(found[1]), int(found[3])
        if a > 12 >= b:
            first.append((line, found.group().strip()))
        elif b > 12 >= a:
            second.append((line, found.group().strip()))
        elif a != b and max(a, b) <= 12:
            either.append((line, found.group().strip(), a, b))
        dotted |= found[2] == "."
    if dayfirst is not None:
        return dayfirst
    if first and second:
        raise DataError(
            f"{path} writes dates day first ({first[0][1]!r}, line {first[0][0]}) and month first "
            f"({second[0][1]!r}, line {second[0][0]}): write them as ISO dates (2022-05-13), or set data.dayfirst "
            "to the order most have and fix the others"
        )
    if first or second or dotted:
        return bool(first) or (dotted and not second)
    if either:
        line, text, a, b = either[0]
        raise DataError(
            f"{path}: datetime {text!r} (line {line}) could be {a} {calendar.month_name[b]} or {b} "
            f"{calendar.month_name[a]}, and no date of the file has a first or second number past 12 to tell "
            "which it writes first: set data.dayfirst: true (day first) or false (month first), or write ISO "
            "dates (2022-05-01)"
        )
    return False


# A number as exports write one (runtime.arguments.NUMBER: ASCII digits, a point, an exponent as
# 1E-05). float() also reads '1_0' as 10 and other scripts' digits ('\u0664\u0665' as 45), a place
# nobody wrote.
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def _number(text: str, name: str, conv: Conventions) -> float:
    """A finite number as the file writes it; ValueError naming the value when it is none."""
    value = text.strip()
    if name in conv.decimal_comma:
        if "." in value:
            raise ValueError(
                f"{name} {value!r} has a point where the column has decimal commas: a thousands separator?"
            )
        value = value.replace(",", ".")
    elif "," in value:
        raise ValueError(
            f"{name} {value!r} has a comma: write decimals with a point, or separate values with semicolons"
            if conv.delimiter == ","
            else f"{name} {value!r} has a decimal comma where the column's numbers have points"
        )
    if not NUMBER.fullmatch(value) and not _NOT_FINITE.fullmatch(value):
        raise ValueError(f"{name} {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} {value!r} is not a finite number")
    return number


def parse_row(row: dict, line: int, cfg: CsvFolderConfig, conv: Conventions = Conventions()) -> Row:
    """One CSV row checked and typed; ValueError with the reason when it is malformed."""
    lat, lon = _number(row["lat"], "lat", conv), _number(row["lon"], "lon", conv)
    if conv.lon_360 and 180 < lon <= 360:
        lon -= 360.0
    check_place(lat, lon)
    if not _optional(row, "audio"):
        raise ValueError("no audio file")
    local, converted = _row_when(row, conv, lat, lon)
    image = _optional(row, "image")
    gsd = _number(row["gsd"], "gsd", conv) if _optional(row, "gsd") else None
    if image and (gsd is None or gsd <= 0):
        raise ValueError("an image needs a positive gsd (metres per pixel)")
    level = _whole(row, "level", 0, MAX_LEVEL)
    level = cfg.level if level is None else level
    if not image and (cfg.imagery is None or level is None):
        raise ValueError("no image file, and no data.imagery to cut its cell from")
    return Row(
        line,
        _optional(row, "key") or f"row{line}",
        lat,
        lon,
        local.month,
        local.hour,
        _optional(row, "source"),
        row["audio"].strip(),
        _optional(row, "caption"),
        _optional(row, "caption_source"),
        image,
        gsd,
        level,
        converted,
    )


def _datetime(text: str | None, conv: Conventions) -> When:
    """The row's datetime as written (parse_when); ValueError with the reason where it cannot be read
    as meant: a day-first date in a month-first file (or the other way), a Unix time, words no
    date has, a zone the tz database lacks, spreadsheets' day zero."""
    numeric = _numeric_date(text or "")
    if numeric and int(numeric[3 if conv.dayfirst else 1]) > 12:
        order = "day" if conv.dayfirst else "month"
        raise ValueError(f"datetime {text!r} is no date read {order} first, as data.dayfirst says")
    when = parse_when(text, dayfirst=conv.dayfirst and bool(numeric), fuzzy=False)
    if text and when.month is None and when.hour is None:
        if re.fullmatch(r"\d{9,}(?:\.\d*)?", text):  # seconds (or milliseconds) since 1970
            raise ValueError(f"datetime {text!r} is a number, a Unix time? write dates as ISO 8601 (2022-05-01T06:30)")
        raise ValueError(f"unreadable datetime {text!r}")
    if when.day in SPREADSHEET_DAY_ZERO:
        day = f"{when.day.day} {calendar.month_name[when.day.month]} {when.day.year}"
        raise ValueError(
            f"datetime {text!r} is dated {day}, spreadsheets' day zero: a time whose cell had no date? "
            "write the time alone, or its date"
        )
    return when


def _row_when(row: dict, conv: Conventions, lat: float, lon: float) -> tuple[When, bool]:
    """The row's month and hour at the place's clock (at_place), and whether its time was converted
    to it: its datetime's, the `month` and `hour` columns giving what the datetime lacks (field
    notes: 'May, dawn'); where both give one they must agree, the datetime read as written or at
    the place (a UTC stamp's month and hour are either). ValueError naming what is wrong."""
    text = _optional(row, "datetime")
    written = _datetime(text, conv)
    month, hour = _month(row), _whole(row, "hour", 0, 23)
    when = dataclasses.replace(
        written,
        month=month if written.month is None else written.month,
        hour=hour if written.hour is None else written.hour,
    )
    local = at_place(when, lat, lon)
    _agree("month", month, (written.month, local.month), text)
    _agree("hour", hour, (written.hour, local.hour), text)
    return local, local.hour != when.hour


# A whole number as people write one, and pandas' '5.0' (a whole-number column with gaps): ASCII
# digits alone. float() read '1e1' as 10, and int() reads '+5', '5_0' and other scripts' digits.
_WHOLE = re.compile(r"(\d+)(?:\.0+)?", re.ASCII)


def _whole(row: dict, name: str, low: int, high: int, alternative: str = "") -> int | None:
    """The whole number a column gives (pandas' '5.0' too), None where it is empty; ValueError naming
    the value when it is no whole number in low..high."""
    text = _optional(row, name)
    if text is None:
        return None
    digits = _WHOLE.fullmatch(text)
    if digits is None or not low <= int(digits[1]) <= high:
        raise ValueError(f"{name} {text!r} is not a whole number {low}..{high}{alternative}")
    return int(digits[1])


def _month(row: dict) -> int | None:
    """The `month` column: 1..12, or a month's English name or abbreviation, in any case and with
    the abbreviation's point ('May', 'Sept', 'sept.')."""
    name = (_optional(row, "month") or "").lower()
    return _month_names().month(name[:-1] if name.endswith(".") else name) or _whole(
        row, "month", 1, 12, " or a month's English name"
    )


@functools.cache
def _month_names() -> parserinfo:
    """dateutil's names of the months, in English whatever the machine's locale."""
    from dateutil import parser

    return parser.parserinfo()


def _agree(name: str, given: int | None, readings: tuple[float | None, float | None], text: str | None) -> None:
    """ValueError where a `month` or `hour` column names another than the datetime's `readings`
    (as written, at the place; an hour by its whole hour)."""
    read = {int(value) for value in readings if value is not None}
    if given is not None and read and given not in read:
        said = " or ".join(map(str, sorted(read)))
        raise ValueError(f"{name} '{given}' contradicts the datetime {text!r} ({name} {said})")


def read_rows(
    cfg: CsvFolderConfig,
    footprint: Footprint | None = None,
    levels: tuple[int, int] | None = None,
) -> list[Row]:
    """The usable rows of the CSV. Malformed rows, rows whose files are missing and rows to be cut
    from imagery outside its `footprint` (on both sides of 180 degrees only, for imagery across the
    antimeridian), or at a level outside the `levels` it can fill, are
    skipped and summarised in one warning (counts per reason, the first lines of each)."""
    path = Path(cfg.root) / cfg.csv
    rows: list[Row] = []
    skipped: dict[str, list[int]] = {}
    table = read_table(path)
    conv = conventions(table, path, cfg.dayfirst)
    for line, row in table.rows:
        try:
            if line in table.misaligned:
                raise ValueError(table.misaligned[line])
            parsed = parse_row(row, line, cfg, conv)
            root = Path(cfg.root)
            audio, image = _find(root, parsed.audio), _find(root, parsed.image) if parsed.image else None
            if (audio, image) != (parsed.audio, parsed.image):
                parsed = dataclasses.replace(parsed, audio=audio, image=image)
            if not parsed.image:
                _check_cut(parsed, footprint, levels)
            rows.append(parsed)
        except (ValueError, TypeError, KeyError) as exc:
            skipped.setdefault(_reason(exc), []).append(line)
    repeated = _repeated(rows, Path(cfg.root))
    for line, reason in repeated.items():
        skipped.setdefault(_reason(ValueError(reason)), []).append(line)
    rows = [r for r in rows if r.line not in repeated]
    if skipped and not rows:
        reason, lines = max(skipped.items(), key=lambda kv: len(kv[1]))
        raise DataError(f"{path} has no usable rows: {reason}: {len(lines)} row(s) ({_lines(path, lines)})")
    if skipped:
        log.warning(
            "%s: %d row(s) skipped, %d kept: %s",
            path,
            sum(len(v) for v in skipped.values()),
            len(rows),
            "; ".join(f"{reason}: {len(v)} ({_lines(path, v)})" for reason, v in skipped.items()),
        )
    if conv.lon_360:
        log.warning("%s: longitudes run 0..360 (none below 0): those past 180 are read as lon - 360", path)
    converted = [r.line for r in rows if r.zone_converted]
    if converted:
        log.warning(
            "%s: %d row(s) give a time at a UTC offset other than their place's clock had then (UTC time stamps?): "
            "read as the same instant at the place's local time, by its time zone (%s)",
            path,
            len(converted),
            _lines(path, converted),
        )
    return rows


def _repeated(rows: list[Row], root: Path) -> dict[int, str]:
    """The lines to skip, with why, of rows that repeat a recording: a copy of an earlier row (all
    but its key: it would train twice as often) and every row of an audio file named at more than
    one place or time (one of them is wrong, and in two held-out cells it is heard in training and
    in test). Rows of one recording with other images or levels (PSM's zooms) are kept. A file is
    known by its resolved path, so `audio/../audio/0.wav`, its absolute path or a link to it is
    the same file as `audio/0.wav`."""
    first: dict[tuple, int] = {}
    by_audio: dict[str, list[Row]] = {}
    why: dict[int, str] = {}
    for row in rows:
        audio = os.path.realpath(os.path.join(root, row.audio))
        content = dataclasses.astuple(dataclasses.replace(row, line=0, key="", audio=audio))
        if content in first:
            why[row.line] = f"the same as an earlier row (line {first[content]}): a duplicated row"
        else:
            first[content] = row.line
            by_audio.setdefault(audio, []).append(row)
    for named in by_audio.values():
        if len({(r.lat, r.lon, r.month, r.hour) for r in named}) > 1:
            lines = ", ".join(str(r.line) for r in named)
            why.update((r.line, f"its audio file is named at other places or times too (lines {lines})") for r in named)
    return why


def _find(root: Path, name: str) -> str:
    """The name under `root` of the file a row names: as written, or as written on Windows
    (backslashes) or for a folder copied from a Mac (accents decomposed, or the other way), in its
    plain form ('./audio//0.wav' as 'audio/0.wav': one file, one name, for _repeated); ValueError
    when there is none, or it is no file (a folder)."""
    for slashes in dict.fromkeys((name, name.replace("\\", "/"))):
        for candidate in dict.fromkeys((slashes, *(unicodedata.normalize(form, slashes) for form in ("NFC", "NFD")))):
            if (root / candidate).is_file():
                return PurePosixPath(candidate).as_posix()
    if (root / name).exists():
        raise ValueError(f"{name!r} is not a file")
    raise ValueError(f"file {name!r} does not exist")


def _check_cut(row: Row, footprint: Footprint | None, levels: tuple[int, int] | None) -> None:
    """ValueError when the imagery cannot give the row's cell: past web mercator's edge (a place
    the map has no cell for), outside its footprint (with a hint when lat and lon swapped would be
    inside it), at a level it cannot fill, or in a cell the footprint does not half cover (training
    would find no imagery there)."""

    def inside(lon: float, lat: float) -> bool:
        return footprint is None or footprint.covers(lon, lat)

    if abs(row.lat) > MERCATOR_LAT_LIMIT:  # mercantile would cut the cell at the edge, another place
        raise ValueError(
            f"lat ({row.lat}) is past web mercator's edge ({MERCATOR_LAT_LIMIT:.4f}): no map cell holds it"
        )
    if not inside(row.lon, row.lat):
        swapped = inside(row.lat, row.lon)
        raise ValueError("outside the imagery's bounds" + (": inside them with lat and lon swapped" if swapped else ""))
    if levels and row.level is not None and not levels[0] <= row.level <= levels[1]:
        raise ValueError(f"level {row.level} is not one the imagery can fill ({levels[0]}-{levels[1]})")
    if footprint is not None and row.level is not None:
        tile = mercantile.tile(row.lon, row.lat, row.level)
        if not half_inside(footprint, tile):
            raise ValueError(
                f"its level {row.level} cell ({tile.x}, {tile.y}) is less than half inside the imagery's footprint"
            )


def half_inside(footprint: Footprint, tile: mercantile.Tile) -> bool:
    """Whether the footprint covers at least MIN_VALID_FRACTION of the cell's web-mercator area: a
    cell less covered is never read (runtime.imagery.Imagery.cell), whatever the pixels."""
    from runtime.imagery import MIN_VALID_FRACTION

    cell = mercantile.bounds(tile)
    left, bottom, right, top = mercantile.xy_bounds(tile)
    inside = 0.0
    for box in footprint.boxes:
        west, south = max(box[0], cell.west), max(box[1], cell.south)
        east, north = min(box[2], cell.east), min(box[3], cell.north)
        if west < east and south < north:
            (x0, y0), (x1, y1) = mercantile.xy(west, south), mercantile.xy(east, north)
            inside += (x1 - x0) * (y1 - y0)
    return inside >= MIN_VALID_FRACTION * (right - left) * (top - bottom)


def usable_levels(imagery: Imagery, size: int, max_upsample: float) -> tuple[int, int]:
    """(coarsest, finest) levels of `size`-pixel cells rows can be cut at: Imagery.level_range,
    whose coarsest end compares the footprint's area with a cell's, raised to the first level of
    whose grid one cell is half inside the footprint (an area half a cell's can straddle four
    cells, none of them half covered). coarsest > finest when no level is both."""
    coarsest, finest = imagery.level_range(size, max_upsample)
    boxes = imagery.footprint.boxes
    while coarsest < MAX_LEVEL and not any(
        half_inside(imagery.footprint, t) for box in boxes for t in mercantile.tiles(*box, coarsest)
    ):
        coarsest += 1
    return coarsest, finest


def _reason(exc: Exception) -> str:
    """The skip reason with row-specific values ('...', (...)) masked, so alike rows group."""
    text = f"lack the value {exc}" if isinstance(exc, KeyError) else str(exc)
    return re.sub(r"'[^']*'|\([^)]*\)", "...", text)


def _lines(path: Path, lines: list[int], first: int = 3) -> str:
    """The first few rows as file:line, and how many more."""
    more = f" and {len(lines) - first} more" if len(lines) > first else ""
    return ", ".join(f"{path}:{n}" for n in lines[:first]) + more


def default_level(imagery, size: int) -> int:
    """The level whose `size`-pixel cells match the imagery's pixels (the finest level that does
    not enlarge them), clamped to the levels the footprint can half cover."""
    coarsest, finest = usable_levels(imagery, size, 1.0)
    return max(coarsest, finest)


class CsvFolderSource:
    """The rows of one split as samples (model.data.SampleSource)."""

    def __init__(self, rows: list[Row], cfg: CsvFolderConfig, image_size: int):
        self.rows, self.cfg, self.size = rows, cfg, image_size
        self.root = Path(cfg.root)
        self._imagery: Imagery | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        return self.get(index)

    @functools.cached_property
    def content_hash(self) -> str:
        """What these rows read (model.readers.common.content_hash): the rows as parsed (captions,
        file names, places, order, CSV line) and every audio and image file they name, and the
        imagery raster their cells are cut from, by size and times."""
        root = str(self.root)  # strings: Path objects would take longer than the stat calls
        files = sorted({os.path.join(root, name) for row in self.rows for name in (row.audio, row.image) if name})
        imagery = self.cfg.imagery
        if imagery and not imagery.startswith(REMOTE_PREFIXES) and any(not row.image for row in self.rows):
            files.append(imagery)
        return content_hash(self.rows, files)

    def metadata_values(self, name: str) -> list[str | None]:
        """Every row's `source` or `caption_source` (model.checks), read without any file."""
        return [getattr(row, name) for row in self.rows]

    def subset(self, indices: list[int]) -> CsvFolderSource:
        """The source of the rows at `indices` only."""
        return CsvFolderSource([self.rows[i] for i in indices], self.cfg, self.size)

    def get(self, index: int, without: frozenset[str] = frozenset()) -> Sample:
        row = self.rows[index]
        where = f"{self.root / self.cfg.csv}:{row.line}"
        image, gsd = self._image(row, where) if "image" not in without else (None, None)
        audio, rate = self._audio(row) if "audio" not in without else (None, None)
        return Sample(
            key=row.key,
            image=image,
            gsd=gsd,
            lat=row.lat,
            lon=row.lon,
            hour=row.hour,
            month=row.month,
            source=row.source,
            caption=row.caption,
            caption_source=row.caption_source,
            audio=audio,
            sample_rate=rate,
            level=row.level,
            path=where,
        )

    def _audio(self, row: Row) -> tuple[np.ndarray | SparseWave, int]:
        path = self.root / row.audio
        try:
            wave, rate = decode_audio(path)
        except AudioDecodeError as exc:
            raise BadSample(str(path), str(exc)) from None
        if not len(wave):  # a recording that failed: its features would be those of silence
            raise BadSample(str(path), "the audio holds no samples")
        bad = non_finite(wave)
        if bad:  # a float file can hold them; one makes every feature of the clip, and the loss, NaN
            raise BadSample(str(path), f"{bad} of its samples are NaN or infinite")
        return wave, rate

    def _image(self, row: Row, where: str) -> tuple[np.ndarray, float]:
        if row.image:
            path = self.root / row.image
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BadSample(str(path), f"cannot read image: {exc.strerror}") from None
            assert row.gsd is not None  # a row with an image has a gsd (parse_row)
            return fit_image(decode_image(data, str(path)), row.gsd, self.size)
        tile = mercantile.tile(row.lon, row.lat, row.level)
        # As precompute reads it: a mosaic's files the level would enlarge far beyond MAX_UPSAMPLE
        # are left out, so a model is trained on the pixels it will be served.
        cell = self.imagery().cell(tile.z, tile.x, tile.y, self.size, max_upsample=MAX_UPSAMPLE)
        if cell is None:
            raise BadSample(where, f"no imagery at level {row.level} cell ({tile.x}, {tile.y}) in {self.cfg.imagery}")
        return cell.rgb, cell.gsd

    def imagery(self) -> Imagery:
        if self._imagery is None:  # opened lazily: one handle per DataLoader worker
            from runtime.imagery import Imagery

            assert self.cfg.imagery is not None  # rows without an image need data.imagery (parse_row)
            self._imagery = Imagery(self.cfg.imagery, rescale=self.cfg.rescale, rgb_bands=self.cfg.bands)
        return self._imagery

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_imagery": None}


def check_level(cfg: CsvFolderConfig, imagery, image_size: int) -> CsvFolderConfig:
    """The config with `level` set: as given when the imagery can fill such cells (a ValueError
    naming the allowed range otherwise), or derived from the imagery's resolution."""
    if imagery is None:
        return cfg
    coarsest, finest = usable_levels(imagery, image_size, MAX_UPSAMPLE)
    if coarsest > finest:
        raise ConfigError(
            f"no level fits {cfg.imagery} ({imagery.resolution_m:.0f} m pixels, {image_size} px cells): "
            f"its footprint half covers cells of level {coarsest} or finer, and its pixels are enlarged at most "
            f"{MAX_UPSAMPLE:g} times at level {finest} or coarser; give imagery of finer pixels or a larger area"
        )
    if cfg.level is None:
        level = default_level(imagery, image_size)
        log.warning(
            "data.level not set: using level %d, whose %d px cells match the %.0f m pixels of %s "
            "(cells of about %.0f km; maps show them best at zoom %d)",
            level,
            image_size,
            imagery.resolution_m,
            cfg.imagery,
            EARTH_CIRCUMFERENCE_M / (1 << level) / 1000,
            max(0, level - CELLS_PER_TILE_LOG2),
        )
        return cfg.model_copy(update={"level": level})
    if not coarsest <= cfg.level <= finest:
        raise ConfigError(
            f"data.level {cfg.level} does not fit {cfg.imagery} ({imagery.resolution_m:.0f} m pixels, "
            f"{image_size} px cells): use a level in {coarsest}-{finest} "
            f"({default_level(imagery, image_size)} matches its resolution)"
        )
    return cfg


def open_csv_folder(section: dict, image_size: int) -> Splits:
    cfg = from_section(CsvFolderConfig, section, "data")
    imagery = None
    if cfg.imagery is not None:  # opened at start: a wrong path or level fails before anything else
        from runtime.imagery import FILE_NODATA_REMEDY, Imagery, check_black_borders

        imagery = Imagery(cfg.imagery, rescale=cfg.rescale, rgb_bands=cfg.bands)
        # Refused as precompute refuses it: the cells cut here are what the model learns a place
        # from. data.imagery takes no nodata, so the remedy is the file's own.
        check_black_borders(imagery, FILE_NODATA_REMEDY)
    cfg = check_level(cfg, imagery, image_size)
    rows = read_rows(
        cfg,
        imagery.footprint if imagery else None,
        usable_levels(imagery, image_size, MAX_UPSAMPLE) if imagery else None,
    )
    s = cfg.split
    lat, lon = np.array([r.lat for r in rows]), np.array([r.lon for r in rows])
    labels = geographic_split(
        lat,
        lon,
        cell_deg=s.cell_deg,
        val_fraction=s.val_fraction,
        test_fraction=s.test_fraction,
        seed=s.seed,
    )
    train, val, test = (
        CsvFolderSource([r for r, lab in zip(rows, labels, strict=True) if lab == name], cfg, image_size)
        for name in ("train", "val", "test")
    )
    return Splits(
        train,
        val,
        test,
        settled={**section, "level": cfg.level} if cfg.level is not None else None,
        why_empty=too_few_cells(lat, lon, s.cell_deg),
    )

"""A samples.csv read as a spreadsheet saves it (model.readers.csv_folder reads its rows): UTF-8
with or without a byte-order mark, or UTF-16; commas, semicolons, tabs or bars, or the delimiter
Excel's `sep=` line names; header names in any case and spacing. A column named twice, or one that
looks like a column the reader reads but the file lacks, is refused: its values would be left out."""

from __future__ import annotations

import csv
import difflib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from model.data import DataError

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("lat", "lon", "audio")


@dataclass
class Table:
    """A CSV file's data rows as {column: value} with the line each starts on; `misaligned`
    maps the line of each row with more values than the header names to why it is skipped."""

    delimiter: str
    rows: list[tuple[int, dict[str, str]]]
    misaligned: dict[int, str]


def read_table(path: Path) -> Table:
    """The rows of a samples CSV as a spreadsheet writes it: UTF-8 with or without a byte-order
    mark (or UTF-16 with one), separated by commas, semicolons or tabs (whichever makes the
    header name the required columns), header names in any case and spacing ("Lat", " lon",
    "Caption Source"). DataError, in one sentence, for a file that is not text, a column named
    twice, a column that looks like a known one the file lacks (its values would be left out:
    `Captions`, `latitude`, `date`), or quotes that do not close. Blank rows (",,,") are
    ignored; a row with more values than the header has columns (an unquoted comma in a
    caption) is kept in `misaligned`, to be skipped: its values no longer sit under their names."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    text = decode_csv(path)
    delimiter, header, sep_line = _header(text)
    columns = _columns(path, header)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, dict[str, str]]] = []
    misaligned: dict[int, str] = {}
    unnamed = {i: 0 for i, name in enumerate(header) if not name}  # values under a column without a name
    start = 1
    try:
        if sep_line:
            next(reader)
        next(reader)  # the header
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            if not any(v.strip() for v in values):
                continue
            for i in unnamed:
                unnamed[i] += int(i < len(values) and bool(values[i].strip()))
            extra = [v for v in values[len(header) :] if v.strip()]
            if extra:
                sep = _DELIMITER_NAMES.get(delimiter, repr(delimiter))
                misaligned[start] = f"more values than the header has columns: an unquoted {sep} inside a value?"
            rows.append((start, {name: values[i] if i < len(values) else "" for name, i in columns.items()}))
    except csv.Error as exc:
        raise DataError(
            f"{path}:{start}: the CSV cannot be read from this row on ({exc}): a quoted value is not closed, "
            'or a quote inside a quoted value is not doubled ("")'
        ) from None
    if not rows:
        raise DataError(f"{path} has no rows below its header")
    if any(unnamed.values()):
        log.warning(
            "%s: column(s) %s have values but no name in the header: they are not read (name them, e.g. caption)",
            path,
            ", ".join(f"{i + 1} ({n} value(s))" for i, n in unnamed.items() if n),
        )
    return Table(delimiter, rows, misaligned)


KNOWN_COLUMNS = (
    "lat",
    "lon",
    "audio",
    "datetime",
    "month",
    "hour",
    "source",
    "caption",
    "caption_source",
    "image",
    "gsd",
    "level",
    "key",
)
# Names a column of data the reader uses goes by elsewhere: a file with one of them (or a close
# misspelling) but without the column itself is refused, since its values would be left out.
COLUMN_ALIASES = {
    "latitude": "lat",
    "longitude": "lon",
    "lng": "lon",
    "long": "lon",
    "date": "datetime",
    "time": "datetime",
    "date_time": "datetime",
    "timestamp": "datetime",
    "file": "audio",
    "filename": "audio",
    "file_name": "audio",
    "path": "audio",
    "audio_file": "audio",
    "audio_path": "audio",
    "text": "caption",
    "description": "caption",
    "image_file": "image",
    "image_path": "image",
}
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}


def decode_csv(path: Path) -> str:
    """The text of a CSV file as a spreadsheet saves it: UTF-8 with or without a byte-order mark,
    or UTF-16 with one; DataError, in one sentence, for a workbook or other bytes (UTF-16 without
    the mark decodes as UTF-8 with a NUL in every other character, and its header named nothing)."""
    data = path.read_bytes()
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):  # a zip (xlsx, ods) or an OLE file (xls)
        raise DataError(f"{path} is a spreadsheet workbook, not CSV text: save it as CSV (UTF-8) and name that")
    # Excel's "Unicode text" is UTF-16 with a byte-order mark; "CSV UTF-8" has one too.
    encoding, name = ("utf-16", "UTF-16") if data.startswith((b"\xff\xfe", b"\xfe\xff")) else ("utf-8-sig", "UTF-8")
    remedy = 'save it as UTF-8 (in Excel "CSV UTF-8", in LibreOffice the character set "Unicode (UTF-8)")'
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise DataError(f"{path} is not {name} text (byte 0x{data[exc.start]:02x} on line {line}): {remedy}") from None
    if "\0" in text:  # valid UTF-8, but no CSV holds one: its names and values would match nothing
        line = text[: text.index("\0")].count("\n") + 1
        raise DataError(f"{path} holds NUL characters (line {line}): UTF-16 text without a byte-order mark? {remedy}")
    return text


def _normal(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def _header(text: str) -> tuple[str, list[str], bool]:
    """The delimiter, the normalised column names and whether a `sep=` line comes first. Excel's
    `sep=;` line names the delimiter; otherwise it is the first of comma, semicolon and tab under
    which the header names every required column, else the one naming the most known ones."""
    lines = re.split(r"\r\n|\r|\n", text, maxsplit=2)
    told = re.fullmatch(r"sep=(.)", lines[0].strip())
    first = lines[1] if told and len(lines) > 1 else lines[0]
    best: tuple[int, str, list[str]] | None = None
    for delimiter in [told[1]] if told else _DELIMITER_NAMES:
        header = [_normal(name) for name in next(csv.reader([first], delimiter=delimiter), [])]
        if told:
            return delimiter, header, True
        known = sum(name in KNOWN_COLUMNS for name in set(header))
        if all(name in header for name in REQUIRED_COLUMNS):
            return delimiter, header, False
        if best is None or known > best[0]:
            best = (known, delimiter, header)
    assert best is not None
    return best[1], best[2], False


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """Each known column's index; DataError for a column named twice, a missing required one,
    or one that looks like a known column the file lacks. Other columns are named in a warning."""
    where: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        if name:
            where.setdefault(name, []).append(i)
    twice = {name: idx for name, idx in where.items() if len(idx) > 1}
    if twice:
        raise DataError(
            f"{path} names a column more than once: "
            + "; ".join(f"{name!r} (columns {', '.join(str(i + 1) for i in idx)})" for name, idx in twice.items())
            + ": keep one of each, or rename the others"
        )
    unknown = [name for name in where if name not in KNOWN_COLUMNS]
    meant: dict[str, list[str]] = {}
    for name in unknown:
        close = difflib.get_close_matches(name, [*KNOWN_COLUMNS, *COLUMN_ALIASES], n=1, cutoff=0.85)
        target = COLUMN_ALIASES.get(name) or (COLUMN_ALIASES.get(close[0], close[0]) if close else None)
        if target and target != "key" and target not in where:
            meant.setdefault(target, []).append(name)
    if meant:
        raise DataError(
            f"{path} has "
            + "; ".join(f"column(s) {', '.join(map(repr, names))} but no {target!r}" for target, names in meant.items())
            + ": the reader would leave their values out; rename each to the column it stands for"
            + (" (merge them into one datetime: 2022-05-01T06:30)" if len(meant.get("datetime", [])) > 1 else "")
            + ", or drop it (docs/own-data.md section 1 lists the columns)"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in where]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)} (its header: {', '.join(header)})")
    if unknown:
        log.warning(
            "%s: column(s) %s are not read (the reader reads %s)", path, ", ".join(unknown), ", ".join(KNOWN_COLUMNS)
        )
    return {name: idx[0] for name, idx in where.items() if name in KNOWN_COLUMNS}

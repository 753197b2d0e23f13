"""`data: {kind: csv}`: a user's own recordings as a folder with one CSV row per recording
(format in docs/training.md). Each row gives where and when it was recorded, the audio file, an
optional caption and either an image file with its GSD or nothing, in which case the cell
containing the recording is cut from an imagery source by the same reader precompute uses.

Malformed rows are skipped at start, each logged with its file and line; unreadable audio or
image files are reported when read (model.data.BadSample) and skipped by training."""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import mercantile
import numpy as np

from model.audio import AudioDecodeError, decode_audio
from model.data import BadSample, Sample, Splits, geographic_split, register_reader
from model.nn.config import from_section
from model.readers.common import decode_image, fit_image, parse_when

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("lat", "lon", "audio")


@dataclass
class SplitConfig:
    """Held-out geographic cells (model.data.geographic_split)."""

    cell_deg: float = 1.0
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    seed: int = 0


@dataclass(kw_only=True)
class CsvFolderConfig:
    root: str  # the folder; paths in the CSV are relative to it
    csv: str = "samples.csv"
    imagery: str | None = None  # a raster (GeoTIFF/COG) to cut cells from for rows without `image`
    level: int | None = None  # web-mercator level of those cells, when a row has no `level`
    split: SplitConfig = field(default_factory=SplitConfig)


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


def _optional(row: dict, name: str) -> str | None:
    value = (row.get(name) or "").strip()
    return value or None


def parse_row(row: dict, line: int, cfg: CsvFolderConfig) -> Row:
    """One CSV row checked and typed; ValueError with the reason when it is malformed."""
    lat, lon = float(row["lat"]), float(row["lon"])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"lat/lon ({lat}, {lon}) outside the globe")
    if not _optional(row, "audio"):
        raise ValueError("no audio file")
    when_text = _optional(row, "datetime")
    when = parse_when(when_text)
    if when_text and when.month is None:
        raise ValueError(f"unreadable datetime {when_text!r}")
    image = _optional(row, "image")
    gsd = float(row["gsd"]) if _optional(row, "gsd") else None
    if image and (gsd is None or not math.isfinite(gsd) or gsd <= 0):
        raise ValueError("an image needs a positive gsd (metres per pixel)")
    level = int(row["level"]) if _optional(row, "level") else cfg.level
    if not image and (cfg.imagery is None or level is None):
        raise ValueError("no image, and no data.imagery with a level to cut one from")
    return Row(line, _optional(row, "key") or f"row{line}", lat, lon, when.month, when.hour,
               _optional(row, "source"), row["audio"].strip(), _optional(row, "caption"),
               _optional(row, "caption_source"), image, gsd, level)


def read_rows(cfg: CsvFolderConfig) -> list[Row]:
    """The well-formed rows of the CSV; each malformed one logged with its line and counted."""
    path = Path(cfg.root) / cfg.csv
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    rows, bad = [], 0
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(parse_row(row, line, cfg))
            except (ValueError, TypeError, KeyError) as exc:
                bad += 1
                log.warning("skipped malformed row %s:%d: %s", path, line, exc)
    if bad:
        log.warning("%s: %d malformed row(s) skipped, %d kept", path, bad, len(rows))
    return rows


class CsvFolderSource:
    """The rows of one split as samples (model.data.SampleSource)."""

    def __init__(self, rows: list[Row], cfg: CsvFolderConfig, image_size: int):
        self.rows, self.cfg, self.size = rows, cfg, image_size
        self.root = Path(cfg.root)
        self._imagery = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        return self.get(index)

    def get(self, index: int, without: frozenset[str] = frozenset()) -> Sample:
        row = self.rows[index]
        where = f"{self.root / self.cfg.csv}:{row.line}"
        image, gsd = self._image(row, where) if "image" not in without else (None, None)
        audio, rate = self._audio(row) if "audio" not in without else (None, None)
        return Sample(key=row.key, image=image, gsd=gsd, lat=row.lat, lon=row.lon, hour=row.hour,
                      month=row.month, source=row.source, caption=row.caption,
                      caption_source=row.caption_source, audio=audio, sample_rate=rate,
                      level=row.level, path=where)

    def _audio(self, row: Row) -> tuple[np.ndarray, int]:
        path = self.root / row.audio
        try:
            return decode_audio(path)
        except AudioDecodeError as exc:
            raise BadSample(str(path), str(exc)) from None

    def _image(self, row: Row, where: str) -> tuple[np.ndarray, float]:
        if row.image:
            path = self.root / row.image
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BadSample(str(path), f"cannot read image: {exc.strerror}") from None
            return fit_image(decode_image(data, str(path)), row.gsd, self.size)
        tile = mercantile.tile(row.lon, row.lat, row.level)
        cell = self.imagery().cell(tile.z, tile.x, tile.y, self.size)
        if cell is None:
            raise BadSample(where, f"no imagery at level {row.level} cell ({tile.x}, {tile.y}) in {self.cfg.imagery}")
        return cell.rgb, cell.gsd

    def imagery(self):
        if self._imagery is None:  # opened lazily: one handle per DataLoader worker
            from model.imagery import Imagery

            self._imagery = Imagery(self.cfg.imagery)
        return self._imagery

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_imagery": None}


def open_csv_folder(section: dict, image_size: int) -> Splits:
    cfg = from_section(CsvFolderConfig, section, "data")
    rows = read_rows(cfg)
    if not rows:
        raise ValueError(f"{Path(cfg.root) / cfg.csv} has no usable rows")
    s = cfg.split
    labels = geographic_split(np.array([r.lat for r in rows]), np.array([r.lon for r in rows]),
                              cell_deg=s.cell_deg, val_fraction=s.val_fraction,
                              test_fraction=s.test_fraction, seed=s.seed)
    return Splits(*(CsvFolderSource([r for r, lab in zip(rows, labels) if lab == name], cfg, image_size)
                    for name in ("train", "val", "test")))


register_reader("csv", open_csv_folder)

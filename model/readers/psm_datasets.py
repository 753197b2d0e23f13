"""`data: {kind: geosound}` and `data: {kind: soundingearth}`: the PSM datasets as released
(docs/method.md section 5), in either layout:

- `webdataset`: the PSM shards (`train_*.tar`, `val_*.tar` / `val.tar`, `test_*.tar` /
  `test.tar`; GeoSound under `with_<imagery>/`). Each sample is `<key>.meta.json`,
  `<key>.image.jpg` and `<key>.audio_mel1..5.pyd`: pickled CLAP fused mels (4, 1001, 64), so
  these shards train the `clap` audio tower only. `.pyd` members are Python pickles: read only
  shards you trust.
- `huggingface`: the Parquet files of the MVRL/GeoSound and MVRL/SoundingEarth datasets
  (`train-*.parquet`, `validation-*` or `val-*`, `test-*`) with raw audio (any tower) and the
  best caption already resolved (`audio_caption`, `audio_caption_source`).

The splits are the released ones (held-out geographic cells chosen by the authors). Each sample
is served once per zoom in `zooms` (its `level`): PSM's zoom crop of z x tile size pixels,
resized to the model's input, with the effective ground sample distance."""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import pickle
import random
import re
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from model.config import ConfigError, Section, from_section
from model.data import BadSample, DataError, Sample, Splits
from model.readers.common import (
    BadZone,
    UndatedOffset,
    When,
    at_place,
    check_place,
    content_hash,
    decode_image,
    fit_image,
    parse_when,
)
from model.readers.csv_table import decode_csv
from runtime.audio import AudioDecodeError, decode_audio

log = logging.getLogger(__name__)

# Nominal metres per pixel and PSM's tile size (pixels cropped at zoom 1) of each imagery.
IMAGERY = {"sentinel": (10.0, 256), "bingmap": (0.6, 300), "googleEarth": (0.2, 256)}
EMPTY_CAPTION = "This sound is a sound of something."  # PSM's caption for an empty one
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


class ReleasedConfig(Section):
    root: str
    layout: Literal["webdataset", "huggingface"] = "webdataset"
    imagery: str = "sentinel"  # GeoSound: sentinel or bingmap; SoundingEarth: googleEarth
    zooms: list[int] = [1, 3, 5]
    # webdataset: which of audio_mel1..5; "random": one of the five per training sample, the first in
    # validation and test (PSM trains on a random one and evaluates with the first).
    mel_index: int | Literal["random"] = 1
    captions: str | None = None  # CSV (sample_id, caption, caption_source) overriding the shards'
    row_group_cache: int = 4  # huggingface: Parquet row groups kept decoded per process


@dataclass(frozen=True)
class Dataset:
    """What differs between GeoSound and SoundingEarth."""

    name: str
    date_field: str
    imageries: tuple[str, ...]
    only_source: str | None = None  # SoundingEarth is all Radio Aporee

    def source(self, key: str, meta: dict) -> str:
        """The audio source: GeoSound keys are "<source>-<id>" (yfcc, iNat, aporee, freesound)."""
        return self.only_source or meta.get("source") or key.split("-", 1)[0]

    def meta_caption(self, meta: dict) -> str:
        if self.name == "soundingearth":
            # Its caption ends with "The location of the sound is: <address>", a location leak
            # (PSM's split on the capitalised phrase misses it after lower-casing, docs/method.md, pitfall 3).
            text = re.split(r"the location of the sound is", meta.get("caption") or "", flags=re.I)[0]
        else:
            text = meta.get("text") or ""
        return text.strip() or EMPTY_CAPTION


GEOSOUND = Dataset("geosound", "date", ("sentinel", "bingmap"))
SOUNDINGEARTH = Dataset("soundingearth", "date_recorded", ("googleEarth",), only_source="aporee")


def _split_of(name: str) -> str | None:
    return SPLIT_NAMES.get(re.split(r"[_\-.]", name, maxsplit=1)[0])


def _hour_if_timed(dataset_source: str, when) -> float | None:
    # freesound gives dates without reliable times (PSM: hour always invalid for freesound).
    return None if dataset_source == "freesound" else when.hour


class _Released:
    """Shared sample assembly: one entry per (record, zoom)."""

    def __init__(
        self, dataset: Dataset, cfg: ReleasedConfig, image_size: int, records: list, captions: dict, training: bool
    ):
        self.dataset, self.cfg, self.size, self.training = dataset, cfg, image_size, training
        self.records, self.captions = records, captions
        self.gsd, self.tile = IMAGERY[cfg.imagery]

    def __len__(self) -> int:
        return len(self.records) * len(self.cfg.zooms)

    def __getitem__(self, index: int) -> Sample:
        return self.get(index)

    def get(self, index: int, without: frozenset[str] = frozenset()) -> Sample:
        """Sample `index`, leaving out the `without` fields (model.data.load_sample)."""
        raise NotImplementedError

    def files(self) -> set[str]:
        """The shards or Parquet files this split's samples are read from."""
        raise NotImplementedError

    @functools.cached_property
    def content_hash(self) -> str:
        """What this split reads (model.readers.common.content_hash): the captions that override
        the files' and each file its samples come from, by size and times (the keys, order and
        members of the samples are read from those files)."""
        return content_hash(sorted(self.captions.items()), sorted(self.files()))

    def _sample(self, key: str, meta: dict, zoom: int, image: bytes | None, where: str, **audio) -> Sample:
        source = self.dataset.source(key, meta)
        lat, lon = _place(meta, where)
        # iNaturalist's dates are as the observer's app wrote them, which may give a UTC offset
        # ("Sun Jun 12 2022 07:49:32 GMT-0400 (EDT)"): the hour is the place's clock (at_place).
        try:
            when = parse_when(meta.get(self.dataset.date_field))
        except BadZone:  # a zone unknown, or not the offset beside it: unreadable, as other such dates
            when = When(None, None)
        try:
            when = at_place(when, lat, lon)
        except UndatedOffset:  # a time at an offset without a date the place's clock may be one of two
            when = When(when.month, None)
        caption, caption_source = self.captions.get(key, (None, None))
        if caption is None:
            caption = meta.get("audio_caption") or self.dataset.meta_caption(meta)
            caption_source = meta.get("audio_caption_source") or "meta"
        rgb = gsd = None
        if image is not None:
            rgb, gsd = fit_image(decode_image(image, where), self.gsd, self.size, crop=zoom * self.tile)
        return Sample(
            key=key,
            image=rgb,
            gsd=gsd,
            lat=lat,
            lon=lon,
            hour=_hour_if_timed(source, when),
            month=when.month,
            source=source,
            caption=caption,
            caption_source=caption_source,
            level=zoom,
            path=where,
            **audio,
        )


def _place(meta: dict, where: str) -> tuple[float | None, float | None]:
    """(latitude, longitude) of a sample's metadata, each None where it is missing (null, empty, or
    NaN as Parquet writes a missing float); BadSample for a value that is no number, or a place
    common.check_place refuses (off the globe, or 0, 0), in the csv reader's words."""
    place = []
    for name in ("latitude", "longitude"):
        value = meta.get(name)
        try:
            number = None if value is None or value == "" else float(value)
        except (TypeError, ValueError):
            raise BadSample(where, f"{name} {value!r} is not a number") from None
        place.append(None if number is None or math.isnan(number) else number)
    lat, lon = place
    try:
        check_place(lat, lon)
    except ValueError as exc:
        raise BadSample(where, str(exc)) from None
    return lat, lon


# ---------------------------------------------------------------------------------------------
# webdataset shards


@dataclass(frozen=True)
class Member:
    shard: str
    offset: int
    size: int


def index_shard(path: Path) -> dict[str, dict[str, Member]]:
    """{key: {extension: member}} of a webdataset tar: a member `dir/key.ext.ension` belongs to
    sample `dir/key` under extension `ext.ension`."""
    samples: dict[str, dict[str, Member]] = {}
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            directory, _, base = info.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{directory}/{stem}" if directory else stem
            samples.setdefault(key, {})[ext] = Member(str(path), info.offset_data, info.size)
    return samples


class WebDatasetSource(_Released):
    def files(self) -> set[str]:
        return {member.shard for _, members in self.records for member in members.values()}

    def get(self, index: int, without: frozenset[str] = frozenset()) -> Sample:
        key, members = self.records[index // len(self.cfg.zooms)]
        zoom = self.cfg.zooms[index % len(self.cfg.zooms)]
        where = f"{members['meta.json'].shard}:{key}" if "meta.json" in members else key
        try:
            meta = json.loads(self._read(members["meta.json"]))
            image = self._read(members["image.jpg"]) if "image" not in without else None
            features = None
            if "audio" not in without:
                features = np.asarray(
                    pickle.loads(self._read(members[f"audio_mel{self._mel_index()}.pyd"])), dtype=np.float32
                )
        except KeyError as exc:
            raise BadSample(where, f"the sample has no {exc.args[0]} member") from None
        except (json.JSONDecodeError, pickle.UnpicklingError, EOFError, UnicodeDecodeError) as exc:
            raise BadSample(where, f"unreadable member: {exc}") from None
        audio = {"audio_features": features, "audio_features_kind": "clap-fusion"} if features is not None else {}
        return self._sample(key, meta, zoom, image, where, **audio)

    def _mel_index(self) -> int:
        if self.cfg.mel_index != "random":
            return self.cfg.mel_index
        # DataLoader workers seed Python's `random` per worker and epoch from torch's seed.
        return random.randint(1, 5) if self.training else 1

    @staticmethod
    def _read(member: Member) -> bytes:
        with open(member.shard, "rb") as f:
            f.seek(member.offset)
            return f.read(member.size)


def _webdataset_records(root: Path, imagery: str) -> dict[str, list]:
    shards = sorted(root.rglob("*.tar"))
    if any(f"with_{imagery}" in p.parts for p in shards):
        shards = [p for p in shards if f"with_{imagery}" in p.parts]
    records: dict[str, list] = {"train": [], "val": [], "test": []}
    for shard in shards:
        split = _split_of(shard.name)
        if split is None:
            continue
        records[split].extend(sorted(index_shard(shard).items()))
    return records


# ---------------------------------------------------------------------------------------------
# Hugging Face Parquet


IMAGE_COLUMNS = {"sentinel": "sentinel_image", "bingmap": "bingmap_image", "googleEarth": "googleearth_image"}


class ParquetSource(_Released):
    """Metadata columns read at start; audio and image blobs read per sample from their row
    group (the last `row_group_cache` decoded row groups are kept). Sequential passes (caching,
    evaluation) read each row group once; shuffled training reads one per sample."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._groups: OrderedDict = OrderedDict()

    def files(self) -> set[str]:
        return {meta["_file"] for meta in self.records}

    def get(self, index: int, without: frozenset[str] = frozenset()) -> Sample:
        meta = self.records[index // len(self.cfg.zooms)]
        zoom = self.cfg.zooms[index % len(self.cfg.zooms)]
        where = f"{meta['_file']}:row {meta['_row']}"
        key = meta.get("sample_id") or where
        image = self._blob(meta, IMAGE_COLUMNS[self.cfg.imagery], where) if "image" not in without else None
        audio = {}
        if "audio" not in without:
            try:
                wave, rate = decode_audio(self._blob(meta, "audio", where))
            except AudioDecodeError as exc:
                raise BadSample(where, str(exc)) from None
            audio = {"audio": wave, "sample_rate": rate}
        return self._sample(key, meta, zoom, image, where, **audio)

    def _blob(self, meta: dict, column: str, where: str) -> bytes:
        table = self._group(meta["_file"], meta["_group"], column)
        value = table[meta["_in_group"]]
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise BadSample(where, f"empty {column}")
        return data

    def _group(self, path: str, group: int, column: str) -> list:
        import pyarrow.parquet as pq

        key = (path, group, column)
        if key not in self._groups:
            self._groups[key] = pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0).to_pylist()
            while len(self._groups) > max(1, self.cfg.row_group_cache):
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_groups": OrderedDict()}


BLOB_COLUMNS = {"audio", "mel_features", *IMAGE_COLUMNS.values()}


def _parquet_records(root: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    records: dict[str, list] = {"train": [], "val": [], "test": []}
    for path in sorted(root.rglob("*.parquet")):
        split = _split_of(path.name)
        if split is None:
            continue
        pf = pq.ParquetFile(path)
        columns = [c for c in pf.schema_arrow.names if c not in BLOB_COLUMNS and not c.startswith("llava_")]
        row = 0
        for group in range(pf.num_row_groups):
            for in_group, meta in enumerate(pf.read_row_group(group, columns=columns).to_pylist()):
                records[split].append({**meta, "_file": str(path), "_group": group, "_in_group": in_group, "_row": row})
                row += 1
    return records


# ---------------------------------------------------------------------------------------------


def _read_captions(path: str | None) -> dict[str, tuple[str, str]]:
    """sample_id -> (caption, caption_source) from a CSV with those columns (caption_source
    optional: 'meta' where empty), as a spreadsheet saves it (csv_table.decode_csv). A row without
    a caption, and every row of a sample_id given with different captions, is not read (the
    dataset's caption stays; a warning counts them): they replaced it with '' or with the last.
    DataError for a file that lacks the columns."""
    if not path:
        return {}
    rows = csv.DictReader(io.StringIO(decode_csv(Path(path)), newline=""))
    header = [name.strip() for name in rows.fieldnames or []]
    missing = [name for name in ("sample_id", "caption") if name not in header]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)} (its header: {', '.join(header)})")
    rows.fieldnames = header
    given: dict[str, list[tuple[int, str, str]]] = {}
    skipped: dict[str, list[int]] = {}
    for row in rows:
        caption = (row["caption"] or "").strip()
        if not caption:
            skipped.setdefault("no caption", []).append(rows.line_num)
            continue
        source = (row.get("caption_source") or "").strip() or "meta"
        given.setdefault((row["sample_id"] or "").strip(), []).append((rows.line_num, caption, source))
    captions = {}
    for key, found in given.items():
        if len({(caption, source) for _, caption, source in found}) > 1:
            skipped.setdefault("a sample_id given again with another caption", []).extend(n for n, _, _ in found)
        else:
            captions[key] = found[0][1:]
    if skipped:
        log.warning(
            "%s: %d row(s) not read, the dataset's caption kept: %s",
            path,
            sum(map(len, skipped.values())),
            "; ".join(
                f"{why}: {len(lines)} (lines {', '.join(map(str, lines[:5]))})" for why, lines in skipped.items()
            ),
        )
    return captions


def _opener(dataset: Dataset):
    def open_released(section: dict, image_size: int) -> Splits:
        cfg = from_section(ReleasedConfig, section, "data")
        if cfg.imagery not in dataset.imageries:
            raise ConfigError(f"`data.imagery` of {dataset.name} must be one of {', '.join(dataset.imageries)}")
        root = Path(cfg.root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} does not exist")
        webdataset = cfg.layout == "webdataset"
        records = _webdataset_records(root, cfg.imagery) if webdataset else _parquet_records(root)
        if not any(records.values()):
            kind = "*.tar shards" if webdataset else "*.parquet files"
            raise DataError(f"no {dataset.name} {kind} named train/val/test under {root}")
        captions = _read_captions(cfg.captions)
        source = WebDatasetSource if webdataset else ParquetSource
        log.info(
            "%s (%s): %s samples", dataset.name, cfg.layout, ", ".join(f"{k} {len(v)}" for k, v in records.items())
        )
        train, val, test = (
            source(dataset, cfg, image_size, records[s], captions, training=s == "train")
            for s in ("train", "val", "test")
        )
        return Splits(train, val, test)

    return open_released


open_geosound = _opener(GEOSOUND)
open_soundingearth = _opener(SOUNDINGEARTH)

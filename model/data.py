"""Training samples and batches, torch-free. Every data reader (user CSV folders, GeoSound and
SoundingEarth, the demo corpus) yields `Sample`s; `collate` turns a list of them into the batch
of numpy arrays that training consumes, using the model's own tokenizer and audio front end (the
ones the bundle ships), so training and serving prepare inputs identically.

A config's `data: {kind: NAME, ...}` selects a reader from the one table of them, `READERS`:
its factory gets the rest of the section and the model's image size and returns `Splits`. A
sample that cannot be read raises `BadSample`; training skips it, counts it and logs its path
(model.batches)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from model.config import ConfigError
from runtime.audio import AudioFrontEnd, SparseWave, waveform_features
from runtime.errors import UserError
from runtime.metadata import Vocabulary, encode_metadata
from runtime.text import Tokenizer


@dataclass
class Sample:
    """One paired observation; any modality or metadata field may be missing (None)."""

    key: str
    image: np.ndarray | None = None  # (S, S, 3) uint8, the cell as runtime.imagery cuts it
    gsd: float | None = None  # metres per pixel of `image`
    lat: float | None = None
    lon: float | None = None
    hour: float | None = None  # local time of day, 0 <= hour < 24
    month: int | None = None  # 1..12
    source: str | None = None  # audio source, from the model's vocabulary
    caption: str | None = None
    caption_source: str | None = None
    audio: np.ndarray | SparseWave | None = None  # mono float32 waveform (SparseWave: runtime.audio.decoding_for)
    sample_rate: int | None = None
    level: int | None = None  # imagery level (web-mercator zoom, or a dataset's zoom step)
    # Front-end features computed ahead (GeoSound's webdataset shards carry CLAP fused mels):
    audio_features: np.ndarray | None = None
    audio_features_kind: str | None = None  # runtime.audio front-end kind of audio_features
    path: str | None = None  # where the sample was read from, for skip logs


class SampleSource(Protocol):
    """A map-style dataset of samples (what every reader provides). A reader may also offer
    `get(index, without=...)` to leave out fields ("audio", "image", "caption") that training
    does not need, e.g. audio whose frozen embedding is cached, and `content_hash`, a string that
    changes whenever the data behind the same `data:` section does (the frozen-tower cache keys
    on it, so data changed in place is never read through a stale cache; a source without one
    gets no cache on disk, model.frozen_cache)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class DataError(UserError, ValueError):
    """The training data cannot be used as configured (no usable rows, a missing column, too few
    samples for a batch); the message says which and why."""


class BadSample(Exception):
    """A sample that cannot be used (corrupt file, malformed metadata); `where` names its path."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def load_sample(source: SampleSource, index: int, without: Collection[str] = ()) -> Sample:
    """source[index], leaving out `without` fields when the reader can skip reading them."""
    get = getattr(source, "get", None)
    if without and get is not None:
        return get(index, without=frozenset(without))
    return source[index]


@dataclass
class Preprocessing:
    """How samples become model input: the model's tokenizer, audio front end and
    vocabularies (exactly what a bundle ships)."""

    tokenizer: Tokenizer
    audio_spec: AudioFrontEnd
    sources: Vocabulary
    caption_sources: Vocabulary
    image_size: int | None = None

    def audio_input(self, sample: Sample) -> np.ndarray:
        """The audio graph's input for one sample (raises BadSample when unusable)."""
        if sample.audio_features is not None:
            if sample.audio_features_kind != self.audio_spec.kind:
                raise BadSample(
                    sample.path or sample.key,
                    f"carries {sample.audio_features_kind!r} audio features; this model's "
                    f"audio tower takes {self.audio_spec.kind!r}",
                )
            return np.asarray(sample.audio_features, dtype=np.float32)
        if sample.audio is None:
            raise BadSample(sample.path or sample.key, "no audio")
        if sample.sample_rate is None:
            raise BadSample(sample.path or sample.key, "audio without a sample rate")
        return waveform_features(self.audio_spec, sample.audio, sample.sample_rate)

    def check(self, sample: Sample) -> None:
        """Raise BadSample for fields the model cannot take (bad image shape, unknown source)."""
        where = sample.path or sample.key
        if sample.image is not None:
            if self.image_size and sample.image.shape != (self.image_size, self.image_size, 3):
                raise BadSample(
                    where,
                    f"image of shape {sample.image.shape}; the model takes ({self.image_size}, {self.image_size}, 3)",
                )
            if sample.gsd is None or not np.isfinite(sample.gsd) or sample.gsd <= 0:
                raise BadSample(where, f"image without a valid ground sample distance ({sample.gsd!r})")
        for value, vocab, name in (
            (sample.source, self.sources, "source"),
            (sample.caption_source, self.caption_sources, "caption_source"),
        ):
            if value is not None and value not in vocab.names:
                raise BadSample(where, f"{name} {value!r} is not in the model's vocabulary {vocab.names}")


def _optional(values: list, dtype=np.float64) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=dtype)


def collate(
    samples: Sequence[Sample],
    *,
    tokenizer: Tokenizer,
    audio_spec: AudioFrontEnd,
    sources: Vocabulary,
    caption_sources: Vocabulary,
) -> dict[str, np.ndarray]:
    """A batch dict of numpy arrays. A modality enters the batch only if every sample has it."""
    prep = Preprocessing(tokenizer, audio_spec, sources, caption_sources)
    audio = [prep.audio_input(s) for s in samples] if all(_has_audio(s) for s in samples) else None
    return stack(samples, prep, audio)


def _has_audio(sample: Sample) -> bool:
    return sample.audio is not None or sample.audio_features is not None


def stack(samples: Sequence[Sample], prep: Preprocessing, audio: Sequence[np.ndarray] | None) -> dict[str, np.ndarray]:
    """The batch of `collate` from samples whose audio input is already computed."""
    batch: dict[str, np.ndarray] = {}
    n = len(samples)
    images = [s.image for s in samples if s.image is not None]
    if len(images) == n:
        batch["image"] = np.stack(images).astype(np.uint8)
        batch["gsd"] = np.array([s.gsd for s in samples], dtype=np.float32)
        src = [None if s.source is None else prep.sources.id(s.source) for s in samples]
        cap = [None if s.caption_source is None else prep.caption_sources.id(s.caption_source) for s in samples]
        batch.update(
            encode_metadata(
                n,
                lat=_optional([s.lat for s in samples]),
                lon=_optional([s.lon for s in samples]),
                hour=_optional([s.hour for s in samples]),
                month=_optional([s.month for s in samples]),
                source=_optional(src),
                caption_source=_optional(cap),
            )
        )
    captions = [s.caption for s in samples if s.caption is not None]
    if len(captions) == n:
        batch["input_ids"], batch["attention_mask"] = prep.tokenizer.encode(captions)
    if audio is not None:
        batch["features"] = np.stack(audio).astype(np.float32)
    return batch


@dataclass
class Splits:
    """Train/validation/test sources of one dataset, split by held-out geographic cells.
    `settled`: the reader's section with the defaults it derived filled in (the csv reader's
    level), which a run records in place of the section as written."""

    train: SampleSource
    val: SampleSource
    test: SampleSource
    settled: dict | None = None
    # Why a split ("val", "test") is or can be empty, for the sentence that refuses it ("all 60
    # samples lie in 1 cell ..."): a larger split fraction, the advice otherwise, does not help then.
    why_empty: dict[str, str] = field(default_factory=dict)


# A reader factory: (the config's `data:` section without `kind`, the model's image size) -> splits.
ReaderFactory = Callable[[dict, int], Splits]


@dataclass(frozen=True)
class Reader:
    """A `data: {kind: ...}` entry: where its factory is ("module:function", imported when a
    config uses it, so reading a config loads no dataset code it does not need, and model/ never
    imports the packages above it) and which keys of its section name files or folders (resolved
    against the config file's folder)."""

    factory: str
    paths: tuple[str, ...] = ()

    def load(self) -> ReaderFactory:
        module, name = self.factory.split(":")
        return getattr(importlib.import_module(module), name)


# Every reader a config can name (docs/training.md): the one table of them.
READERS: dict[str, Reader] = {
    "csv": Reader("model.readers.csv_folder:open_csv_folder", ("root", "imagery")),  # a user's folder
    "geosound": Reader("model.readers.psm_datasets:open_geosound", ("root", "captions")),
    "soundingearth": Reader("model.readers.psm_datasets:open_soundingearth", ("root", "captions")),
    "synthetic": Reader("model.readers.synthetic:open_synthetic"),  # a generated toy set
    "demo": Reader("corpus.reader:factory"),  # the demo corpus (corpus/, the layer above model/)
}
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "az://", "/vsi")


def reader(kind: str) -> ReaderFactory:
    """The factory of reader `kind`; a ConfigError naming the known kinds for any other."""
    if not isinstance(kind, str) or kind not in READERS:
        raise ConfigError(f"unknown `data.kind` {kind!r}; known: {', '.join(sorted(READERS))}")
    return READERS[kind].load()


def resolve_paths(section: dict, base: str | Path) -> dict:
    """The `data:` section with every relative path of its reader made absolute against `base`
    (the config file's folder), so a run, and the checkpoint that records the section, work from
    any working directory."""
    out = dict(section)
    kind = section.get("kind")
    entry = READERS.get(kind) if isinstance(kind, str) else None
    for key in entry.paths if entry else ():
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith(REMOTE_PREFIXES):
            out[key] = str((Path(base) / Path(value).expanduser()).resolve())
    return out


def open_splits(section: dict | None, image_size: int) -> Splits:
    """The splits a config's `data:` section describes; an unknown kind names the known ones."""
    if not isinstance(section, dict) or "kind" not in section:
        raise ConfigError(f"the config needs a `data:` section with a `kind` (one of: {', '.join(sorted(READERS))})")
    kind = section["kind"]
    splits = reader(kind)({k: v for k, v in section.items() if k != "kind"}, image_size)
    if splits.settled is not None:
        splits.settled = {"kind": kind, **splits.settled}
    return splits


# With this many cells or more, geographic_split gives validation and test at least one each.
MIN_SPLIT_CELLS = 3


def _cells(lat: np.ndarray, lon: np.ndarray, cell_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct cell_deg x cell_deg cells the samples lie in, each sample's index into them)."""
    # Longitude 180 and -180 are one meridian: wrapped into [-180, 180) they share a cell.
    wrapped = (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0
    cells = np.stack(
        [
            np.floor(np.asarray(lat, dtype=np.float64) / cell_deg),
            np.floor(wrapped / cell_deg),
        ],
        axis=1,
    ).astype(np.int64)
    unique, inverse = np.unique(cells, axis=0, return_inverse=True)
    return unique, inverse


def too_few_cells(lat: np.ndarray, lon: np.ndarray, cell_deg: float) -> dict[str, str]:
    """Why validation and test can be empty when the samples lie in fewer than MIN_SPLIT_CELLS
    cells (Splits.why_empty), else nothing: only a smaller cell makes more cells to hold out."""
    cells = len(_cells(lat, lon, cell_deg)[0])
    if cells >= MIN_SPLIT_CELLS:
        return {}
    why = (
        f"all {len(lat)} samples lie in {cells} cell(s) of data.split.cell_deg {cell_deg:g} degrees, and "
        f"whole cells are held out (each split gets one from {MIN_SPLIT_CELLS} cells on): lower "
        "data.split.cell_deg"
    )
    return {"val": why, "test": why}


def geographic_split(
    lat: np.ndarray,
    lon: np.ndarray,
    *,
    cell_deg: float = 1.0,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """'train' / 'val' / 'test' per sample: whole cell_deg x cell_deg lat/lon cells are held
    out, never single rows, so evaluation measures places the model has not seen. With three
    or more cells (MIN_SPLIT_CELLS), val and test each get at least one."""
    unique, inverse = _cells(lat, lon, cell_deg)
    order = np.random.default_rng(seed).permutation(len(unique))
    at_least = 1 if len(unique) >= MIN_SPLIT_CELLS else 0
    n_val = max(at_least, round(val_fraction * len(unique)))
    n_test = max(at_least, round(test_fraction * len(unique)))
    label = np.full(len(unique), "train", dtype=object)
    label[order[:n_val]] = "val"
    label[order[n_val : n_val + n_test]] = "test"
    return label[inverse.reshape(-1)].astype(str)

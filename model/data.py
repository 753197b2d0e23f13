"""Training samples and batches. Every data reader (user CSV folders, GeoSound/SoundingEarth,
the demo corpus) yields `Sample`s; `collate` turns a list of them into the tensors-as-numpy
batch that `model.train` consumes, using the bundle-side tokenizer and audio features so that
training and serving prepare inputs identically."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model.audio import AudioFeatureSpec, log_mel, resample
from model.metadata import Vocabulary, encode_metadata
from model.text import HashedWordTokenizer


@dataclass
class Sample:
    """One paired observation; any modality or metadata field may be missing (None)."""

    key: str
    image: np.ndarray | None = None  # (S, S, 3) uint8, the cell as model.imagery cuts it
    gsd: float | None = None  # metres per pixel of `image`
    lat: float | None = None
    lon: float | None = None
    hour: float | None = None  # local time of day, 0 <= hour < 24
    month: int | None = None  # 1..12
    source: str | None = None  # audio source, from the model's vocabulary
    caption: str | None = None
    caption_source: str | None = None
    audio: np.ndarray | None = None  # mono float32 waveform
    sample_rate: int | None = None


class SampleSource(Protocol):
    """A map-style dataset of samples (what every reader provides)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


def _optional(values: list, dtype=np.float64) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=dtype)


def collate(samples: Sequence[Sample], *, tokenizer: HashedWordTokenizer, audio_spec: AudioFeatureSpec,
            sources: Vocabulary, caption_sources: Vocabulary) -> dict[str, np.ndarray]:
    """A batch dict of numpy arrays. A modality enters the batch only if every sample has it."""
    batch: dict[str, np.ndarray] = {}
    n = len(samples)
    if all(s.image is not None for s in samples):
        batch["image"] = np.stack([s.image for s in samples]).astype(np.uint8)
        batch["gsd"] = np.array([s.gsd for s in samples], dtype=np.float32)
        src = [None if s.source is None else sources.id(s.source) for s in samples]
        cap = [None if s.caption_source is None else caption_sources.id(s.caption_source) for s in samples]
        batch.update(encode_metadata(
            n, lat=_optional([s.lat for s in samples]), lon=_optional([s.lon for s in samples]),
            hour=_optional([s.hour for s in samples]), month=_optional([s.month for s in samples]),
            source=_optional(src), caption_source=_optional(cap)))
    if all(s.caption is not None for s in samples):
        batch["input_ids"], batch["attention_mask"] = tokenizer.encode([s.caption for s in samples])
    if all(s.audio is not None for s in samples):
        batch["features"] = np.stack([
            log_mel(resample(s.audio, s.sample_rate, audio_spec.sample_rate), audio_spec) for s in samples])
    return batch


@dataclass
class Splits:
    """Train/validation/test sources of one dataset, split by held-out geographic cells."""

    train: SampleSource
    val: SampleSource
    test: SampleSource


# A reader factory: (the config's `data:` section, the model's image size) -> splits.
ReaderFactory = Callable[[dict, int], Splits]
READERS: dict[str, ReaderFactory] = {}


def register_reader(kind: str, factory: ReaderFactory) -> None:
    """Make `data: {kind: ...}` in a config use `factory`. Packages above model/ (corpus/)
    register theirs from the composition root (cli/), so model/ never imports them."""
    READERS[kind] = factory


def geographic_split(lat: np.ndarray, lon: np.ndarray, *, cell_deg: float = 1.0,
                     val_fraction: float = 0.05, test_fraction: float = 0.1,
                     seed: int = 0) -> np.ndarray:
    """'train' / 'val' / 'test' per sample: whole lat/lon cells are held out, never single rows,
    so evaluation measures places the model has not seen."""
    cells = np.floor(np.asarray(lat) / cell_deg).astype(np.int64) * 100_000 + \
        np.floor(np.asarray(lon) / cell_deg).astype(np.int64)
    unique = np.unique(cells)
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = int(round(val_fraction * len(unique)))
    n_test = int(round(test_fraction * len(unique)))
    label = {}
    for rank, i in enumerate(order):
        label[unique[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return np.array([label[c] for c in cells])

"""Training samples and batches. Every data reader (user CSV folders, GeoSound/SoundingEarth,
the demo corpus) yields `Sample`s; `collate` turns a list of them into the tensors-as-numpy
batch that `model.train` consumes, using the bundle-side tokenizer and audio features so that
training and serving prepare inputs identically."""
from __future__ import annotations

from collections.abc import Sequence
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

"""`data: {kind: synthetic}`: a generated toy dataset of paired samples, for smoke runs, the
throughput benchmark and tests of the training machinery (memorisation, resume, DDP). It needs
no files and is the same on every machine for a given seed.

Each sample belongs to one of `classes` classes: the class decides the image (a colour and a
stripe frequency, plus per-sample noise), the audio (a chord of tones) and the caption words;
location, month and hour are drawn per sample. With classes equal to the number of samples
every sample is its own class, which a model can memorise exactly."""

from __future__ import annotations

import zlib
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from model.config import ConfigError, Section, Seed, from_section
from model.data import Sample, Splits
from runtime.files import json_sha256
from runtime.tiles import MAX_LEVEL

WORDS = [
    "birds",
    "waves",
    "wind",
    "rain",
    "traffic",
    "insects",
    "bells",
    "voices",
    "engines",
    "frogs",
    "water",
    "thunder",
    "dogs",
    "crickets",
    "trains",
    "leaves",
]


# A toy set's counts: a million samples is minutes of generating each epoch, far past a smoke run.
SampleCount = Annotated[int, Field(ge=0, le=1_000_000)]
Split = Literal["train", "val", "test"]


class SyntheticConfig(Section):
    samples: dict[Split, SampleCount] = {"train": 256, "val": 64, "test": 64}
    classes: Annotated[int, Field(ge=1, le=1_000_000)] = 16
    seed: Seed = 0
    sample_rate: Annotated[int, Field(ge=8000, le=192000)] = 16000
    duration_s: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0
    noise: Annotated[float, Field(ge=0.0, le=10.0)] = 0.1  # per-sample pixel and audio noise
    levels: Annotated[list[Annotated[int, Field(ge=0, le=MAX_LEVEL)]], Field(min_length=1)] = [3, 5]
    sources: list[str] = ["demo"]
    caption_sources: list[str] = ["template"]


class SyntheticSource:
    def __init__(self, cfg: SyntheticConfig, split: Split, image_size: int):
        self.cfg, self.split, self.size = cfg, split, image_size
        self.n = int(cfg.samples[split])
        self._classes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def content_hash(self) -> str:
        """The samples are a function of the section and the split alone (model.data.SampleSource)."""
        return json_sha256({"split": self.split, **self.cfg.model_dump()})

    def _class(self, cls: int) -> tuple[np.ndarray, np.ndarray]:
        """The clean image and audio of a class (kept: every sample of the class starts from them)."""
        if cls not in self._classes:
            self._classes[cls] = self._make_class(cls)
        return self._classes[cls]

    def _make_class(self, cls: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 7, cls])
        colour = rng.uniform(30, 225, 3)
        ramp = np.sin(np.linspace(0, 2 * np.pi * (1 + cls % 5), self.size))[None, :, None]
        image = colour + 25 * ramp + np.zeros((self.size, self.size, 3))
        t = np.arange(int(cfg.duration_s * cfg.sample_rate)) / cfg.sample_rate
        tones = rng.uniform(200, min(4000, cfg.sample_rate / 2.5), 3)
        return image, sum(np.sin(2 * np.pi * f * t) for f in tones) / 3

    def __len__(self) -> int:
        return self.n

    def metadata_values(self, name: str) -> list[str | None]:
        """Every sample's `source` or `caption_source` (model.checks), without generating it."""
        names = {"source": self.cfg.sources, "caption_source": self.cfg.caption_sources}[name]
        return [names[(i % self.cfg.classes) % len(names)] for i in range(self.n)]

    def __getitem__(self, index: int) -> Sample:
        return self.get(index)

    def get(self, index: int, without: frozenset[str] = frozenset()) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, zlib.crc32(self.split.encode()), index])
        cls = index % cfg.classes
        # Drawn first, so a sample's metadata is the same whichever fields are left out.
        lat, lon = float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))
        hour, month = float(rng.integers(0, 24)), int(rng.integers(1, 13))
        clean_image, clean_audio = self._class(cls)
        image = gsd = audio = None
        if "image" not in without:
            image = np.clip(clean_image + rng.normal(0, 255 * cfg.noise, clean_image.shape), 0, 255).astype(np.uint8)
            gsd = 1000.0 * (1 + cls % 3)
        if "audio" not in without:
            audio = (clean_audio + rng.normal(0, cfg.noise, len(clean_audio))).astype(np.float32)
        caption = f"{WORDS[cls % len(WORDS)]} and {WORDS[(cls * 7 + 3) % len(WORDS)]} number {cls}"
        return Sample(
            key=f"{self.split}-{index}",
            image=image,
            gsd=gsd,
            lat=lat,
            lon=lon,
            hour=hour,
            month=month,
            source=cfg.sources[cls % len(cfg.sources)],
            caption=caption,
            caption_source=cfg.caption_sources[cls % len(cfg.caption_sources)],
            audio=audio,
            sample_rate=cfg.sample_rate if audio is not None else None,
            level=cfg.levels[index % len(cfg.levels)],
            path=f"synthetic:{self.split}:{index}",
        )


def open_synthetic(section: dict, image_size: int) -> Splits:
    cfg = from_section(SyntheticConfig, section, "data")
    missing = {"train", "val", "test"} - set(cfg.samples)
    if missing:
        raise ConfigError(f"`data.samples` needs train, val and test counts; missing {', '.join(sorted(missing))}")
    train, val, test = (SyntheticSource(cfg, split, image_size) for split in ("train", "val", "test"))
    return Splits(train, val, test)

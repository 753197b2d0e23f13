"""From a reader's samples to training batches (torch DataLoader): deterministic global batches
that every rank slices, unreadable samples skipped and reported with their path, frozen tower
outputs taken from the cache instead of recomputed.

Determinism is what makes resume exact and DDP equal to one process: batch `step` holds
positions [b G, (b+1) G) of epoch e's permutation (e = step // batches_per_epoch, seeded by
(seed, e)), G = the global batch, and rank r takes the r-th slice of it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from model.config import ConfigError
from model.data import BadSample, DataError, Preprocessing, Sample, SampleSource, load_sample, stack
from model.stopping import ignore_in_worker
from runtime.audio import AudioDecodeError, decoding_for
from runtime.tiles import tile_index

log = logging.getLogger(__name__)
# Read errors a reader may raise for one sample; anything else is a bug and stops the run.
READ_ERRORS = (BadSample, AudioDecodeError, OSError, ValueError, KeyError, EOFError)
MAX_SUBSTITUTES = 32


@dataclass
class Prepared:
    """One sample ready to stack: its index (of the sample actually read, after substitutes), its
    fields, its audio graph input, and what was skipped to reach it ((index, where, reason) of
    each unreadable sample it replaces)."""

    index: int
    sample: Sample
    audio: np.ndarray | None
    skipped: list[tuple[int, str, str]] = field(default_factory=list)


class Examples(Dataset):
    """A split as prepared samples. An unreadable sample is replaced by the next readable one,
    so batches keep their size (DDP gathers equal shapes), and the skip is reported. Readers
    decode audio (runtime.audio.decode_audio) for the model's front end: of a long recording,
    only what it keeps."""

    def __init__(
        self,
        source: SampleSource,
        prep: Preprocessing,
        *,
        skip_audio: bool = False,
        unreadable: dict[int, tuple[str, str]] | None = None,
    ):
        """skip_audio: leave audio out (its frozen output is cached); unreadable: indices already
        known to be unusable ({index: (where, reason)}, found while caching), skipped unread."""
        self.source = source
        self.prep = prep
        self.without = ("audio",) if skip_audio else ()
        self.unreadable = unreadable or {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Prepared:
        skipped = []
        for attempt in range(MAX_SUBSTITUTES):
            i = (index + attempt) % len(self.source)
            if i in self.unreadable:
                skipped.append((i, *self.unreadable[i]))
                continue
            try:
                with decoding_for(self.prep.audio_spec):  # a long recording: only the part the front end keeps
                    sample = load_sample(self.source, i, self.without)
                self.prep.check(sample)
                has_audio = not self.without and (sample.audio is not None or sample.audio_features is not None)
                audio = self.prep.audio_input(sample) if has_audio else None
                return Prepared(i, sample, audio, skipped)
            except READ_ERRORS as exc:
                where = exc.where if isinstance(exc, BadSample) else f"sample {i}"
                skipped.append((i, where, exc.reason if isinstance(exc, BadSample) else str(exc)))
        raise DataError(
            f"{MAX_SUBSTITUTES} samples in a row from index {index} are unreadable, so the data "
            f"is mostly unusable; the last: {skipped[-1][1]}: {skipped[-1][2]}"
        )


class Collate:
    """Prepared samples -> batch of numpy arrays, with frozen tower outputs from `cached`
    ({"text": (N, D) array, "audio": (N, D) array} indexed like the split)."""

    def __init__(self, prep: Preprocessing, cached: dict[str, np.ndarray] | None = None):
        self.prep = prep
        self.cached = cached or {}

    def __call__(self, items: list[Prepared]) -> dict:
        audio = [it.audio for it in items if it.audio is not None]
        batch: dict[str, Any] = stack(
            [it.sample for it in items], self.prep, audio if len(audio) == len(items) else None
        )
        index = np.array([it.index for it in items])
        if "text" in self.cached:
            batch.pop("input_ids", None)
            batch.pop("attention_mask", None)
            batch["text_backbone"] = self.cached["text"][index]
        if "audio" in self.cached:
            batch["audio_backbone"] = self.cached["audio"][index]
        batch["index"] = index
        batch["levels"] = [it.sample.level for it in items]
        batch["captions"] = [it.sample.caption for it in items]
        batch["skipped"] = [s for it in items for s in it.skipped]
        return batch


class GlobalBatches(Sampler[list[int]]):
    """This rank's slice of global batch `step`, for step = start, start + 1, ... forever: slices
    of a shuffled epoch, or with `weights`, a batch of distinct samples drawn by weight."""

    def __init__(
        self,
        n: int,
        global_batch: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        weights: np.ndarray | None = None,
    ):
        if global_batch % world:
            raise ConfigError(f"train.batch_size {global_batch} must be a multiple of the {world} processes")
        if n < global_batch:
            raise DataError(f"the training split has {n} samples, fewer than train.batch_size {global_batch}")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world, self.start = rank, world, start
        self.per_epoch = n // global_batch  # the last partial batch of an epoch is dropped
        self.chances = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    def indices(self, step: int) -> list[int]:
        local = self.global_batch // self.world
        if self.chances is not None:
            batch = np.random.default_rng([self.seed, step]).choice(
                self.n, self.global_batch, replace=False, p=self.chances
            )
            return batch[self.rank * local : (self.rank + 1) * local].tolist()
        epoch, b = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        start = b * self.global_batch + self.rank * local
        return perm[start : start + local].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            yield self.indices(step)
            step += 1


def class_balance(classes: np.ndarray, power: float) -> np.ndarray:
    """Sampling weights from (N, C) bool `classes` (the sound classes in each sample's audio): a
    sample weighs its rarest class's frequency to the power -`power`; a sample with no class
    weighs as the commonest class. Rare sounds (aircraft in 0.6 % of the demo's training
    samples) then meet each other, and their negatives, in batches often enough to be told apart."""
    frequency = classes.mean(axis=0)
    if not (frequency > 0).any():
        return np.ones(len(classes))
    weight = np.where(frequency > 0, frequency, 1.0) ** -power  # an absent class is never read
    per_sample = np.where(classes, weight, 0.0).max(axis=1)
    return np.where(classes.any(axis=1), per_sample, weight[frequency > 0].min())


PLACE_LEVEL = 6  # the tiles place_balance counts samples in: a zoom-2 tile's cells, about 600 km


def place_balance(lat: np.ndarray, lon: np.ndarray, power: float, level: int = PLACE_LEVEL) -> np.ndarray:
    """Sampling weights from the samples' positions: a sample weighs the number of samples in its
    Web Mercator tile of `level` to the power -`power`. Where samples crowd (towns, the places a
    recordist favours), the model sees each place as often as a remote one at power 1, so how
    sure it becomes of a place (its S) need not follow how often training met it."""
    tile = tile_index(lat, lon, level)
    return np.bincount(tile)[tile].astype(np.float64) ** -power


def loader(
    examples: Examples, collate: Collate, batches: Sampler | None = None, *, batch_size: int = 64, workers: int = 0
) -> DataLoader:
    """A DataLoader over `examples`: the global batch sampler for training, sequential order in
    batches of `batch_size` otherwise (evaluation, caching)."""
    common: dict[str, Any] = dict(
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
        worker_init_fn=ignore_in_worker if workers else None,
    )
    if batches is not None:
        return DataLoader(examples, batch_sampler=batches, **common)
    return DataLoader(examples, batch_size=batch_size, shuffle=False, **common)


def to_tensors(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The model inputs of a batch as tensors on `device` (bookkeeping keys left out)."""
    return {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True)
        for k, v in batch.items()
        if isinstance(v, np.ndarray) and k != "index"
    }


class SkipLog:
    """Unreadable samples seen during a run: each logged once with its path, all counted."""

    def __init__(self, seen: list[tuple[str, str]] | None = None, count: int = 0):
        self.seen: dict[str, str] = dict(seen or [])
        self.count = count

    def add(self, records: list[tuple[int, str, str]]) -> None:
        for _, where, reason in records:
            self.count += 1
            if where not in self.seen:
                self.seen[where] = reason
                log.warning("skipped unreadable sample %s: %s", where, reason)

    def copy(self) -> SkipLog:
        return SkipLog(list(self.seen.items()), self.count)

    @property
    def files(self) -> int:
        """How many distinct samples were unreadable (count: how many times one was skipped)."""
        return len(self.seen)

    def records(self) -> list[tuple[str, str]]:
        return sorted(self.seen.items())

"""The demo corpus as training data: `factory` is the reader registered as `data: {kind: demo}`.

It reads what `soundscape corpus build` wrote, splits samples by held-out geographic cells and
yields `model.data.Sample`s whose image is the stored cell (cut by runtime.imagery) and whose
audio is the mixture recipe rendered on read: from the training recordings, or for held-out
samples (`recordings: held_out`) from recordings training never heard. Data section keys:
docs/corpus.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np

from corpus.build import FORMAT, cut_images, event_columns
from corpus.clips import load_bank
from corpus.errors import CorpusError
from corpus.mixing import Events, render
from corpus.places import Places
from corpus.rules import CLASSES, RULES
from model.config import Section, from_section
from model.data import Sample, Splits, geographic_split
from runtime.imagery import Imagery
from runtime.tiles import Footprint, tile_centres


class DemoDataConfig(Section):
    """The `data: {kind: demo, ...}` section (docs/corpus.md)."""

    path: str = "data/corpus"
    split_level: int = 4
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    seed: int = 0
    audio: bool = True
    limit: int | None = None
    # held_out: validation and test audio mixes recordings training never heard; shared: every
    # split's audio comes from the training pool (the place-held-out figure).
    recordings: Literal["held_out", "shared"] = "held_out"


# `recordings:` -> the clip pool each split's audio is rendered from (clips.split_recordings).
RECORDINGS = {
    "held_out": {"train": "train", "val": "held_out", "test": "held_out"},
    "shared": {"train": "train", "val": "train", "test": "train"},
}


class DemoCorpus:
    """A built corpus folder: the sample table, cell images, clip bank and place rasters."""

    def __init__(self, path: str | Path, image_size: int | None = None, progress: bool = True):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CorpusError(
                f"{self.path} holds no built corpus (manifest.json missing or unreadable); "
                f"run `soundscape corpus build --out {self.path}`"
            ) from None
        if self.manifest.get("format") != FORMAT:
            raise CorpusError(
                f"{self.path} holds corpus format {self.manifest.get('format')!r}, not {FORMAT!r}; "
                f"rebuild it with `soundscape corpus build --out {self.path}`"
            )
        with np.load(self.path / "samples.npz") as data:
            self.table = {k: data[k] for k in data.files}
        self.bank, self.clips, self.sample_rate = load_bank(self.path)
        self.n_frames = round(self.manifest["duration_s"] * self.sample_rate)
        self.image_size = int(image_size or self.manifest["image_size"])
        self.images, self.gsd = self._images(progress)
        self.index = np.flatnonzero(self.table["keep"])  # samples that have imagery

    def _images(self, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        """The cell images at self.image_size: stored ones, or cut now from the recorded imagery."""
        size = self.image_size
        if (self.path / f"images-{size}.npy").exists():
            return np.load(self.path / f"images-{size}.npy", mmap_mode="r"), np.load(
                self.path / f"images-{size}-gsd.npy"
            )
        source = self.manifest["imagery"]["path"]
        if not os.path.exists(source):
            raise CorpusError(
                f"the corpus has no {size}-px images and its imagery {source} is gone; "
                f"rebuild with `soundscape corpus build --out {self.path} --image-size {size}`"
            )
        return cut_images(Imagery(source), self.table["cells"], size, self.path, progress)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def footprint(self) -> Footprint:
        """Where the corpus's imagery lies, west > east across the antimeridian (manifest
        imagery.footprint); a manifest written before it recorded one gives its bounds, a box."""
        record = self.manifest["imagery"]
        return Footprint(*record.get("footprint", record["bounds"]))

    def places(self) -> Places:
        """The place rasters the rules read (for map checks of a model trained on this corpus)."""
        return Places(self.path / "places.npz")

    def events(self, row: int, pool: str = "train") -> Events:
        """The recipe of sample `row` that draws on the clip pool `pool` (clips.POOLS)."""
        prefix = event_columns(pool)
        lo, hi = self.table[f"{prefix}start"][row], self.table[f"{prefix}start"][row + 1]
        return Events(*(self.table[f"{prefix}{k}"][lo:hi] for k in ("clip", "src", "dst", "length", "gain_db")))

    def audio(self, row: int, pool: str = "train") -> np.ndarray:
        return render(self.events(row, pool), self.bank, self.clips, self.n_frames, self.sample_rate)

    def source(self, row: int) -> str:
        """The recordist of sample `row` (a name of corpus/sources.py)."""
        return self.manifest["sources"][int(self.table["source"][row])]

    def sounds(self, row: int) -> list[str]:
        """The sound classes mixed into sample `row`, loudest first."""
        return [CLASSES[c] for c in self.table["layers"][row] if c >= 0]

    def fired(self, row: int) -> dict[str, float]:
        """The rules that fired for sample `row` and their activations (the caption's provenance)."""
        weights = self.table["rule_weights"][row].astype(float)
        return {r.name: float(w) for r, w in zip(RULES, weights, strict=True) if w > 0}

    def sample(self, row: int, without: frozenset[str] = frozenset(), pool: str = "train") -> Sample:
        """Sample `row` with its audio from the clip pool `pool`; fields named in `without`
        ("audio", "image", "caption") are left out (and not rendered), e.g. audio whose
        frozen-tower embedding training has cached. The key names the pool when it is not the
        training one, since the audio differs."""
        t = self.table
        cell = int(t["cell"][row])
        image = None if "image" in without else np.asarray(self.images[cell])
        audio = None if "audio" in without else self.audio(row, pool)
        return Sample(
            key=f"demo-{row:06d}" + ("" if pool == "train" else f"-{pool}"),
            image=image,
            gsd=None if image is None else float(self.gsd[cell]),
            lat=float(t["lat"][row]),
            lon=float(t["lon"][row]),
            hour=float(t["hour"][row]),
            month=int(t["month"][row]),
            source=self.source(row),
            caption=None if "caption" in without else str(t["captions"][row]),
            caption_source=self.manifest["caption_source"],
            audio=audio,
            sample_rate=None if audio is None else self.sample_rate,
            level=int(t["level"][row]),
            path=f"{self.path}#{row}",
        )

    def split(self, split_level: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
        """'train'/'val'/'test' per kept sample: whole tiles of `split_level` are held out, so no
        image, and no place, of a held-out tile is seen in training (levels >= split_level)."""
        unit_x, unit_y = self.split_units(split_level)
        lon, lat = tile_centres(split_level, unit_x, unit_y)
        return geographic_split(
            lat, lon, cell_deg=0.01, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )

    def split_units(self, split_level: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) per kept sample of the `split_level` tile holding it: the unit `split` holds out."""
        t = self.table
        shift = t["level"][self.index].astype(np.int64) - split_level
        if (shift < 0).any():
            raise CorpusError(
                f"split_level {split_level} is finer than the corpus's coarsest level "
                f"{int(t['level'].min())}; use a split_level <= it"
            )
        return t["x"][self.index] >> shift, t["y"][self.index] >> shift


class CorpusSource:
    """One split of a DemoCorpus as a map-style `SampleSource`, its audio from clip pool `pool`."""

    def __init__(self, corpus: DemoCorpus, rows: np.ndarray, audio: bool = True, pool: str = "train"):
        self.corpus, self.rows, self.pool = corpus, rows, pool
        self.default_without = frozenset() if audio else frozenset({"audio"})

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def content_hash(self) -> str:
        """The built corpus's hash (model.data.SampleSource): a rebuild changes it."""
        return self.corpus.manifest["content_hash"]

    def get(self, index: int, without: frozenset[str] = frozenset()) -> Sample:
        """Sample `index` of this split, without the named fields."""
        if not -len(self.rows) <= index < len(self.rows):
            raise IndexError(index)
        return self.corpus.sample(int(self.rows[index]), self.default_without | without, self.pool)

    def metadata_values(self, name: str) -> list[str]:
        """Every sample's `source` or `caption_source` (model.checks), read from the table."""
        if name == "source":
            return [self.corpus.source(int(row)) for row in self.rows]
        return [self.corpus.manifest[name]] * len(self.rows)

    def sound_classes(self) -> np.ndarray:
        """(N, C) bool: which of the rules' C sound classes each sample's audio mixes
        (train.balance_classes weighs batches by them)."""
        layers = np.asarray(self.corpus.table["layers"][self.rows])
        classes = np.zeros((len(self.rows), len(CLASSES)), bool)
        rows, slots = np.nonzero(layers >= 0)
        classes[rows, layers[rows, slots]] = True
        return classes

    def __getitem__(self, index: int) -> Sample:
        return self.get(index)


def factory(data: dict, image_size: int) -> Splits:
    """The `data: {kind: demo, ...}` reader: train/val/test sources of a built corpus."""
    cfg = from_section(DemoDataConfig, {k: v for k, v in data.items() if k != "kind"}, "data")
    corpus = DemoCorpus(cfg.path, image_size)
    labels = corpus.split(cfg.split_level, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    rows = corpus.index
    if cfg.limit is not None:
        keep = np.random.default_rng(cfg.seed).permutation(len(rows))[: cfg.limit]
        keep.sort()
        rows, labels = rows[keep], labels[keep]
    pools = RECORDINGS[cfg.recordings]
    train, val, test = (
        CorpusSource(corpus, rows[labels == name], cfg.audio, pools[name]) for name in ("train", "val", "test")
    )
    return Splits(train, val, test)

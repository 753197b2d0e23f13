"""A seconds-to-train corpus for the test fixtures: imagery cells captioned from their colours
(open water, ice, desert, vegetation, coast). It teaches a tiny model's image and text towers a
real, visible relation, so server and precompute tests see maps that are not flat. (The demo
world's model is trained on the demo corpus instead: docs/demo-model.md.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from runtime.imagery import CellImage, Imagery
from runtime.metadata import encode_metadata
from runtime.text import HashedWordTokenizer
from runtime.tiles import tile_centres, tiles_in_bbox

CAPTIONS = {
    "water": ["waves on the open ocean", "the sound of the sea", "ocean waves and wind"],
    "ice": ["cold wind over snow and ice", "a blizzard on the ice", "wind on a frozen plain"],
    "desert": ["dry wind in a sandy desert", "sand blowing across the desert", "a quiet hot desert"],
    "green": ["birds singing in a green forest", "birdsong in the trees", "insects and birds in the forest"],
    "coast": ["waves breaking on the coast", "surf on a sandy beach", "gulls and waves on the shore"],
    "land": ["wind over open land", "insects in dry grassland", "a quiet countryside"],
}


def colour_class(rgb: np.ndarray) -> str:
    """The dominant surface of a cell judged from its pixels."""
    px = rgb.reshape(-1, 3).astype(np.int32)
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    bright = px.mean(axis=1)
    water = ((b > r + 8) & (bright < 110)).mean()
    ice = ((bright > 170) & (np.abs(r - b) < 30)).mean()
    desert = ((r > b + 35) & (r >= g) & (bright > 60)).mean()
    green = ((g >= r) & (g > b) & (bright < 140)).mean()
    if 0.2 < water < 0.8:
        return "coast"
    scores = {"water": water, "ice": ice, "desert": desert, "green": green}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0.4 else "land"


@dataclass
class ColourCorpus:
    images: np.ndarray  # (N, S, S, 3) uint8
    gsd: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    classes: list[str]


def build(imagery: Imagery, size: int, levels: range, n: int, seed: int = 0) -> ColourCorpus:
    """n cells drawn uniformly among the tiles of `levels` that overlap the imagery (a cell drawn
    again is read once: the coarse levels hold a few tiles each)."""
    rng = np.random.default_rng(seed)
    candidates = {z: tiles_in_bbox(z, imagery.bounds) for z in levels}
    read: dict[tuple[int, int, int], CellImage | None] = {}
    images, gsd, lat, lon, classes = [], [], [], [], []
    attempts = 0
    while len(images) < n and attempts < 20 * n:
        attempts += 1
        z = int(rng.choice(list(levels)))
        i = int(rng.integers(0, len(candidates[z][0])))
        x, y = int(candidates[z][0][i]), int(candidates[z][1][i])
        if (z, x, y) not in read:
            read[z, x, y] = imagery.cell(z, x, y, size)
        cell = read[z, x, y]
        if cell is None:
            continue
        lo, la = tile_centres(z, np.array([x]), np.array([y]))
        images.append(cell.rgb)
        gsd.append(cell.gsd)
        lat.append(la[0])
        lon.append(lo[0])
        classes.append(colour_class(cell.rgb))
    if not images:
        raise ValueError("no imagery found in the requested levels")
    return ColourCorpus(np.stack(images), np.array(gsd, np.float32), np.array(lat), np.array(lon), classes)


def batches(corpus: ColourCorpus, tokenizer: HashedWordTokenizer, batch_size: int):
    """A `model.train.train` batch source: random (cell, caption) pairs with random hour/month."""

    def stream(generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
        n = len(corpus.classes)
        while True:
            idx = rng.integers(0, n, min(batch_size, n))
            captions = [str(rng.choice(CAPTIONS[corpus.classes[i]])) for i in idx]
            ids, mask = tokenizer.encode(captions)
            meta = encode_metadata(
                len(idx),
                lat=corpus.lat[idx],
                lon=corpus.lon[idx],
                hour=rng.uniform(0, 24, len(idx)),
                month=rng.integers(1, 13, len(idx)).astype(float),
                source=0,
                caption_source=0,
            )
            batch = {
                "image": corpus.images[idx],
                "gsd": corpus.gsd[idx],
                **meta,
                "input_ids": ids,
                "attention_mask": mask,
            }
            yield {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}

    return stream

"""The precompute job: read cells through the shared imagery reader (a thread pool overlapping
reads with inference), embed them with the bundle's image graph, fuse under default metadata
(location only) and write the store."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.bundle import Bundle
from model.imagery import CellImage, Imagery
from model.metadata import encode_metadata
from model.scoring import uncertainty
from model.tiles import tile_centres
from precompute.plan import LevelPlan, intersect, plan_level
from precompute.store import LevelArrays, write_store

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    embedded: dict[int, int] = field(default_factory=dict)
    skipped: dict[int, int] = field(default_factory=dict)


def default_embeddings(bundle: Bundle, sat: np.ndarray, lonlat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, S) of cells under the store's default metadata: location known, the rest unknown."""
    meta = encode_metadata(len(sat), lat=lonlat[:, 1], lon=lonlat[:, 0])
    mu, logvar = bundle.fuse(sat, meta)
    return mu, uncertainty(logvar)


def _read_batches(imagery: Imagery, plan: LevelPlan, size: int, batch: int,
                  pool: ThreadPoolExecutor) -> Iterator[tuple[np.ndarray, list[CellImage], int]]:
    """Batches of (plan indices of the cells that have imagery, their images, cells read)."""
    for start in range(0, len(plan), batch):
        idx = range(start, min(start + batch, len(plan)))
        cells = list(pool.map(lambda i: imagery.cell(plan.level, int(plan.x[i]), int(plan.y[i]), size), idx))
        keep = [(i, c) for i, c in zip(idx, cells) if c is not None]
        yield np.array([i for i, _ in keep], dtype=np.int64), [c for _, c in keep], len(idx)


def embed_level(imagery: Imagery, bundle: Bundle, plan: LevelPlan, *, batch: int,
                pool: ThreadPoolExecutor, bar: tqdm) -> LevelArrays:
    parts: list[LevelArrays] = []
    for idx, cells, n_read in _read_batches(imagery, plan, bundle.image_size, batch, pool):
        bar.update(n_read)
        if not len(idx):
            continue
        rgb = np.stack([c.rgb for c in cells])
        gsd = np.array([c.gsd for c in cells], dtype=np.float32)
        sat = bundle.embed_images(rgb, gsd)
        lon, lat = tile_centres(plan.level, plan.x[idx], plan.y[idx])
        lonlat = np.stack([lon, lat], axis=1).astype(np.float32)
        mu, s = default_embeddings(bundle, sat, lonlat)
        parts.append(LevelArrays(plan.codes[idx], sat.astype(np.float16), mu.astype(np.float16), s, lonlat))
    if not parts:
        return LevelArrays(np.zeros(0, np.uint64), np.zeros((0, bundle.sat_dim), np.float16),
                           np.zeros((0, bundle.embed_dim), np.float16), np.zeros(0, np.float32),
                           np.zeros((0, 2), np.float32))
    return LevelArrays(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("codes", "sat", "mu", "s", "lonlat")))


def run(imagery: Imagery, bundle: Bundle, levels: list[int], bbox: tuple[float, float, float, float],
        out: Path, *, overwrite: bool = False, batch: int = 256, readers: int = 4,
        progress: bool = True) -> tuple[dict, RunReport]:
    """Embed every cell of `levels` over bbox (clipped to the imagery) and write the store."""
    area = intersect(bbox, imagery.bounds)
    if area is None:
        raise ValueError(f"bbox {bbox} does not overlap the imagery bounds {imagery.bounds}")
    plans = [plan_level(level, area) for level in levels]
    report = RunReport()
    results: dict[int, LevelArrays] = {}
    with ThreadPoolExecutor(readers) as pool, tqdm(total=sum(len(p) for p in plans), unit="cell",
                                                   desc="precompute", disable=not progress) as bar:
        for plan in plans:
            results[plan.level] = embed_level(imagery, bundle, plan, batch=batch, pool=pool, bar=bar)
            report.embedded[plan.level] = len(results[plan.level].codes)
            report.skipped[plan.level] = len(plan) - report.embedded[plan.level]
    if not any(report.embedded.values()):
        raise ValueError(f"no cell of levels {levels} has imagery inside {area}")
    manifest = write_store(out, bundle.id, results, imagery=imagery.describe(), bounds=area,
                           overwrite=overwrite)
    return manifest, report

"""`soundscape precompute --dry-run`: cell counts, storage and time of a plan, the time measured
by embedding a small sample of its cells (spread over its levels in proportion) exactly as the
run would."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from precompute.device import bundle_device, default_batch
from precompute.plan import Plan
from precompute.run import RunOptions, batch_rows, check_levels, read_ahead
from runtime.bundle import Bundle
from runtime.imagery import Imagery
from store.format import fusion_sets

SAMPLE = 256  # cells timed
WARMUP = 8  # cells embedded first, untimed (session creation, caches)


@dataclass
class Estimate:
    cells: dict[int, int]  # per level, this shard
    valid_fraction: float  # of the sampled cells, those with imagery
    bytes_per_cell: dict[int, int]  # stored bytes per cell with imagery, per level
    cells_per_s: float
    sampled: int
    device: str

    @property
    def total_cells(self) -> int:
        return sum(self.cells.values())

    @property
    def storage_bytes(self) -> float:
        return sum(n * self.valid_fraction * self.bytes_per_cell[lv] for lv, n in self.cells.items())

    @property
    def seconds(self) -> float:
        return self.total_cells / self.cells_per_s if self.cells_per_s else float("inf")

    def lines(self) -> list[str]:
        out = [f"{'level':>5} {'cells':>12}"] + [f"{lv:>5} {n:>12,}" for lv, n in self.cells.items()]
        out += [
            f"{'total':>5} {self.total_cells:>12,}",
            f"imagery: {self.valid_fraction:.0%} of {self.sampled} sampled cells have it "
            f"(about {self.total_cells * self.valid_fraction:,.0f} stored cells)",
            f"storage: about {self.storage_bytes / 1e6:,.1f} MB",
            f"time: about {_duration(self.seconds)} at {self.cells_per_s:,.0f} cells/s on {self.device} "
            f"(measured on {self.sampled} cells)",
        ]
        return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _bytes_per_cell(bundle: Bundle, fused: bool, kinds: list[str]) -> int:
    d, s = bundle.embed_dim, bundle.sat_dim
    row = 8 + 2 * s + 2 * d + 4 + 8 + 4 * (d + 1)  # codes, sat, mu, S, centre, index vector
    return row + (len(fusion_sets(kinds)) * (2 * d + 4) if fused else 0)


def _sample(plan: Plan, ranges: dict[int, tuple[int, int]], size: int) -> dict[int, np.ndarray]:
    """Plan positions per level, evenly spread, in proportion to the level's cells."""
    total = sum(stop - start for start, stop in ranges.values())
    picks = {}
    for level, (start, stop) in ranges.items():
        k = min(stop - start, max(1, round(size * (stop - start) / total))) if stop > start else 0
        picks[level] = np.unique(np.linspace(start, stop - 1, k).astype(np.int64)) if k else np.zeros(0, np.int64)
    return picks


def estimate(imagery: Imagery, bundle: Bundle, plan: Plan, options: RunOptions, sample: int = SAMPLE) -> Estimate:
    check_levels(imagery, plan, bundle.image_size, options.max_upsample)
    batch = options.batch or default_batch(bundle)
    ranges = {lv: plan.level(lv).shard(*options.shard, batch) for lv in plan.levels}
    fused_levels = set(options.fusion_levels)
    kinds = list(options.fusions)
    sampled = with_imagery = 0
    elapsed = 0.0
    with ThreadPoolExecutor(options.readers) as pool:
        for warm, size in ((True, WARMUP), (False, sample)):
            for level, positions in _sample(plan, ranges, size).items():
                codes, x, y = plan.level(level).at(positions)
                batches = [
                    (0, codes[i : i + batch], x[i : i + batch], y[i : i + batch]) for i in range(0, len(codes), batch)
                ]
                sets = fusion_sets(kinds) if level in fused_levels else []
                started = time.perf_counter()
                for item, cells in read_ahead(batches, imagery, level, bundle.image_size, pool):
                    batch_rows(bundle, level, item, cells, sets)
                    if not warm:
                        with_imagery += sum(c is not None for c in cells)
                if not warm:
                    elapsed += time.perf_counter() - started
                    sampled += len(codes)
    return Estimate(
        cells={lv: stop - start for lv, (start, stop) in ranges.items()},
        valid_fraction=with_imagery / sampled if sampled else 0.0,
        bytes_per_cell={lv: _bytes_per_cell(bundle, lv in fused_levels, kinds) for lv in plan.levels},
        cells_per_s=sampled / elapsed if elapsed else 0.0,
        sampled=sampled,
        device=f"{bundle_device(bundle)}, batches of {batch}",
    )

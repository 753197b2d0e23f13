"""`soundscape precompute --dry-run`: cell counts, storage and time of a plan, the time measured
by embedding a small sample of its cells (spread over its levels in proportion) exactly as the
run would; per level the bytes of the default embeddings and of the precomputed fusions, and
which levels store them (`--fusion-levels`, or the coarsest that fit `--fusion-budget`)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from precompute.device import bundle_device, default_batch
from precompute.plan import Plan, PlanError
from precompute.run import RunOptions, batch_rows, check_levels, read_ahead
from runtime.bundle import Bundle
from runtime.imagery import Imagery
from store.format import fusion_sets
from store.index import index_bytes_per_cell

SAMPLE = 256  # cells timed
WARMUP = 8  # cells embedded first, untimed (session creation, caches)


@dataclass
class Estimate:
    cells: dict[int, int]  # per level, this shard
    valid_fraction: float  # of the sampled cells, those with imagery
    default_bytes: dict[int, int]  # stored bytes per cell with imagery, per level: arrays and index row
    fusion_bytes: int  # stored bytes per cell with imagery of one precomputed fusion (one hour or month)
    fusion_sets: int  # precomputed fusions per cell of a fusion level (24 hours + 12 months by default)
    fusion_levels: tuple[int, ...]
    cells_per_s: float
    sampled: int
    device: str
    budget: int | None = None  # --fusion-budget, bytes

    @property
    def total_cells(self) -> int:
        return sum(self.cells.values())

    def level_bytes(self, level: int) -> tuple[float, float]:
        """(default, all fusions) bytes the level would store, whether or not its fusions are planned."""
        stored = self.cells[level] * self.valid_fraction
        return stored * self.default_bytes[level], stored * self.fusion_bytes * self.fusion_sets

    @property
    def storage_bytes(self) -> float:
        return sum(d + (f if lv in self.fusion_levels else 0.0) for lv, (d, f) in self._bytes().items())

    def _bytes(self) -> dict[int, tuple[float, float]]:
        return {lv: self.level_bytes(lv) for lv in self.cells}

    @property
    def seconds(self) -> float:
        return self.total_cells / self.cells_per_s if self.cells_per_s else float("inf")

    def lines(self) -> list[str]:
        sizes = self._bytes()
        out = [f"{'level':>5} {'cells':>12}"] + [f"{lv:>5} {n:>12,}" for lv, n in self.cells.items()]
        out += [
            f"{'total':>5} {self.total_cells:>12,}",
            f"imagery: {self.valid_fraction:.0%} of {self.sampled} sampled cells have it "
            f"(about {self.total_cells * self.valid_fraction:,.0f} stored cells)",
            f"{'level':>5} {'default MB':>12} {'1 fusion MB':>12} {'fusions MB':>12}  fusions",
        ]
        out += [
            f"{lv:>5} {default / 1e6:>12,.1f} {fused / max(self.fusion_sets, 1) / 1e6:>12,.1f} {fused / 1e6:>12,.1f}  "
            + ("stored" if lv in self.fusion_levels else "fused at query time")
            for lv, (default, fused) in sizes.items()
        ]
        stored = sum(sizes[lv][1] for lv in self.fusion_levels)
        budget = f" of the --fusion-budget {self.budget / 1e9:,.1f} GB" if self.budget is not None else ""
        out += [
            f"fusions: {self.fusion_sets} per cell stored at levels {_listed(self.fusion_levels)}: "
            f"{stored / 1e6:,.1f} MB{budget}; other levels fuse hour=/month= at query time",
            f"storage: about {self.storage_bytes / 1e6:,.1f} MB",
            f"time: about {_duration(self.seconds)} at {self.cells_per_s:,.0f} cells/s on {self.device} "
            f"(measured on {self.sampled} cells)",
        ]
        return out


def _listed(levels: tuple[int, ...]) -> str:
    return ", ".join(map(str, levels)) if levels else "none"


def parse_size(text: str) -> int:
    """Bytes of a size such as '50GB', '750 MB', '1.5TB' or '0' (decimal units); PlanError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b?)\s*", text.lower())
    if match is None:
        raise PlanError(f"--fusion-budget must be a size such as 50GB or 750MB, not {text!r}")
    unit = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[match.group(2).rstrip("b")]
    return int(float(match.group(1)) * unit)


def fusion_bytes_per_cell(embed_dim: int) -> int:
    """One precomputed fusion of one cell: mu float16 and S float32."""
    return 2 * embed_dim + 4


def levels_within_budget(cells: dict[int, int], embed_dim: int, kinds: list[str], budget: int) -> tuple[int, ...]:
    """The levels whose fusions are stored under a disk budget: coarsest first, as long as the
    fusions of all levels chosen so far fit. A tile fuses the same 256 cells at any level, so
    each level saves the same work per tile while storing 4x the previous level's bytes; and the
    coarse levels are the ones every visit starts on."""
    per_cell = fusion_bytes_per_cell(embed_dim) * len(fusion_sets(kinds))
    chosen, used = [], 0
    for level in sorted(cells):
        used += cells[level] * per_cell
        if used > budget:
            break
        chosen.append(level)
    return tuple(chosen)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _default_bytes_per_cell(bundle: Bundle, cells: int, flat_max: int) -> int:
    """Codes, sat, mu, S, centre, and the index row of the kind a level of `cells` gets."""
    d, s = bundle.embed_dim, bundle.sat_dim
    return 8 + 2 * s + 2 * d + 4 + 8 + index_bytes_per_cell(cells, d + 1, flat_max)


def _sample(plan: Plan, ranges: dict[int, tuple[int, int]], size: int) -> dict[int, np.ndarray]:
    """Plan positions per level, evenly spread, in proportion to the level's cells."""
    total = sum(stop - start for start, stop in ranges.values())
    picks = {}
    for level, (start, stop) in ranges.items():
        k = min(stop - start, max(1, round(size * (stop - start) / total))) if stop > start else 0
        picks[level] = np.unique(np.linspace(start, stop - 1, k).astype(np.int64)) if k else np.zeros(0, np.int64)
    return picks


def estimate(
    imagery: Imagery,
    bundle: Bundle,
    plan: Plan,
    options: RunOptions,
    sample: int = SAMPLE,
    budget: int | None = None,
) -> Estimate:
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
                for item, images in read_ahead(batches, imagery, level, bundle.image_size, pool, options.max_upsample):
                    batch_rows(bundle, level, item, images, sets)
                    if not warm:
                        with_imagery += sum(c is not None for c in images)
                if not warm:
                    elapsed += time.perf_counter() - started
                    sampled += len(codes)
    cells = {lv: stop - start for lv, (start, stop) in ranges.items()}
    return Estimate(
        cells=cells,
        valid_fraction=with_imagery / sampled if sampled else 0.0,
        default_bytes={lv: _default_bytes_per_cell(bundle, n, options.index_flat_max) for lv, n in cells.items()},
        fusion_bytes=fusion_bytes_per_cell(bundle.embed_dim),
        fusion_sets=len(fusion_sets(kinds)),
        fusion_levels=tuple(sorted(fused_levels)),
        cells_per_s=sampled / elapsed if elapsed else 0.0,
        sampled=sampled,
        device=f"{bundle_device(bundle)}, batches of {batch}",
        budget=budget,
    )

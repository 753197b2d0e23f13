"""The cells and storage of a worldwide land-only store (docs/scale.md, "A worked plan"): land cells
per level counted with `--land-only`'s mask (precompute/landmask.py) up to --measured-max, within
a latitude band (Sentinel-2's: 56 S to 84 N), and for finer levels derived as the level above x 4 x
the ratio of the last two measured land shares; bytes per level from the store's layout, the
index kind store/index.py picks, and the fusion plan of `--fusion-budget`.

    python benchmarks/land_cells.py [--levels 0-14] [--measured-max 11] [--budget 50GB]

Prints a markdown table and the totals.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precompute.estimate import fusion_bytes_per_cell, levels_within_budget, parse_size
from precompute.landmask import LandMask
from precompute.plan import parse_levels
from runtime.tiles import tile_centres
from store.format import fusion_sets
from store.index import FLAT_MAX, IVF_FLAT_MAX, index_bytes_per_cell

EMBED, SAT = 64, 96  # the demo bundle's dimensions
ROW_BYTES = 8 + 2 * SAT + 2 * EMBED + 4 + 8  # codes, sat, mu, S, centre (store/format.py)


def land_cells(mask: LandMask, level: int, south: float, north: float) -> int:
    """Cells of the level holding land whose centre lies in [south, north], row band by row band."""
    n, count = 1 << level, 0
    step = max(1, n // 16)
    for y0 in range(0, n, step):
        x, y = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(y0, min(n, y0 + step))))
        keep = mask.any_land(level, x, y)
        _, lat = tile_centres(level, x[keep], y[keep])
        count += int(((lat >= south) & (lat <= north)).sum())
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="0-14")
    parser.add_argument("--measured-max", type=int, default=11, help="finest level counted (4^L cells)")
    parser.add_argument("--band", default="-56,84", help="south,north latitudes of the imagery")
    parser.add_argument("--budget", default="50GB", help="--fusion-budget")
    args = parser.parse_args()
    south, north = (float(v) for v in args.band.split(","))
    mask, cells, source = LandMask(), {}, {}
    for level in parse_levels(args.levels):
        if level <= args.measured_max:
            cells[level], source[level] = land_cells(mask, level, south, north), "measured"
        else:
            m = args.measured_max
            ratio = (cells[m] / 4**m) / (cells[m - 1] / 4 ** (m - 1))
            cells[level], source[level] = round(cells[level - 1] * 4 * ratio), "derived"
    stored = levels_within_budget(cells, EMBED, ["hour", "month"], parse_size(args.budget))
    per_fusion = len(fusion_sets(["hour", "month"])) * fusion_bytes_per_cell(EMBED)
    print("| level | cells | | index | default GB | fusions GB | fusions |\n|---|---|---|---|---|---|---|")
    total = fused = 0.0
    for level, n in cells.items():
        default = n * (ROW_BYTES + index_bytes_per_cell(n, EMBED + 1))
        kind = "flat" if n <= FLAT_MAX else "IVF-Flat" if n <= IVF_FLAT_MAX else "IVF-SQfp16"
        total += default
        fused += n * per_fusion if level in stored else 0
        plan = "stored" if level in stored else "query time"
        sizes = f"{default / 1e9:,.2f} | {n * per_fusion / 1e9:,.2f}"
        print(f"| {level} | {n:,} | {source[level]} | {kind} | {sizes} | {plan} |")
    print(f"total {sum(cells.values()):,} cells; default {total / 1e9:,.1f} GB; stored fusions {fused / 1e9:,.1f} GB")


if __name__ == "__main__":
    main()

"""What finding a bbox's cells costs `/search?bbox=` on a planet-scale level: `engine.rows_within`
(the runs of sorted Morton codes under the box's tiles) beside a scan of every cell's centre
(what it did before, the baseline), on every cell of a synthetic level, in process, one thread;
and the bound that refuses a whole-world box before any row is listed.

    python benchmarks/bbox_rows.py [--level 12] [--repeat 15] [--json benchmarks/results/bbox_rows.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import emit, provenance
from runtime.tiles import demorton, tile_centres
from server.engine import cells_certainly_within, centres_in_box, rows_within

BOXES = {
    "a city (8,47,9,48)": (8.0, 47.0, 9.0, 48.0),
    "Europe (-10,35,30,60)": (-10.0, 35.0, 30.0, 60.0),
    "across the antimeridian (170,-20,-170,0)": (170.0, -20.0, -170.0, 0.0),
}


def scan(lonlat: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Every centre tested: the baseline (what rows_within did before)."""
    return np.flatnonzero(centres_in_box(lonlat, bbox))


def median_ms(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--level", type=int, default=12, help="the synthetic level: all 4**level cells (default 12)")
    p.add_argument("--repeat", type=int, default=15, help="timed runs of each, median reported (default 15)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    codes = np.arange(4**args.level, dtype=np.uint64)
    x, y = demorton(codes)
    lonlat = np.stack(tile_centres(args.level, x.astype(np.int64), y.astype(np.int64)), axis=1).astype(np.float32)
    del x, y
    level = SimpleNamespace(level=args.level, arrays=SimpleNamespace(codes=codes, lonlat=lonlat))
    boxes = {}
    for name, box in BOXES.items():
        rows = rows_within(level, box)
        if not np.array_equal(rows, scan(lonlat, box)):
            raise SystemExit(f"rows_within and the scan disagree for {name}")
        within, every = (
            median_ms(lambda b=box: rows_within(level, b), args.repeat),
            median_ms(lambda b=box: scan(lonlat, b), args.repeat),
        )
        boxes[name] = {"cells": len(rows), "rows_within_ms": within, "scan_ms": every, "ratio": within / every}
    world = (-180.0, -90.0, 180.0, 90.0)  # over any limit: refused from the bound, no row listed
    bound = {
        "cells_at_least": cells_certainly_within(level, world),
        "ms": median_ms(lambda: cells_certainly_within(level, world), args.repeat),
    }
    result = {"level": args.level, "cells": len(codes), "repeat": args.repeat, "boxes": boxes, "world_bound": bound}
    emit({**provenance(), **result}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

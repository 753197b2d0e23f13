"""CPU time of bundles' fuse graphs side by side (issue 13): one run of a tile's cells (324: 16 x 16
and the ring bilinear sampling reads) under default metadata, hour=, and hour+month+source, each
bundle's session as the server makes it (runtime.bundle.Bundle, one intra-op thread), runs
interleaved so a load change hits every bundle alike. Prints one JSON object: the median CPU ms
per run, and each bundle's largest difference from the first bundle's mu (the same weights
exported another way should agree within the export tolerance).

    python benchmarks/fuse_graph.py BUNDLE [BUNDLE ...] [--cells 324] [--repeat 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.bundle import Bundle
from runtime.metadata import encode_metadata

CASES = {"default": {}, "hour": {"hour": 6}, "hour+month+source": {"hour": 6, "month": 3, "source": 0}}


def fuse_inputs(bundle: Bundle, cells: int, meta: dict) -> dict[str, np.ndarray]:
    """Random sat features at random land-like places, under `meta` (one value for every cell)."""
    rng = np.random.default_rng(0)
    encoded = encode_metadata(cells, lat=rng.uniform(-60, 60, cells), lon=rng.uniform(-180, 180, cells), **meta)
    return {"sat": rng.standard_normal((cells, bundle.sat_dim)).astype(np.float32), **encoded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--cells", type=int, default=324)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    bundles = [Bundle(path, threads=1) for path in args.bundles]
    result: dict = {"cells": args.cells, "repeat": args.repeat, "load_before": os.getloadavg()[0], "cases": {}}
    for case, meta in CASES.items():
        feeds = [fuse_inputs(b, args.cells, meta) for b in bundles]
        first = [b.run("fuse", **f)[0] for b, f in zip(bundles, feeds, strict=True)]  # warm, and the outputs
        cpu: list[list[float]] = [[] for _ in bundles]
        for _ in range(args.repeat):
            for i, (b, f) in enumerate(zip(bundles, feeds, strict=True)):
                start = time.process_time()
                b.run("fuse", **f)
                cpu[i].append(time.process_time() - start)
        result["cases"][case] = {
            str(path): {
                "cpu_ms": round(1000 * statistics.median(c), 3),
                "max_mu_diff_from_first": float(np.abs(mu - first[0]).max()),
            }
            for path, c, mu in zip(args.bundles, cpu, first, strict=True)
        }
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

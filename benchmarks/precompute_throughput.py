"""Precompute figures for BENCHMARKS.md (docs/design.md, "Targets": the demo world store, levels 0..7,
built in <= 5 minutes).

    python benchmarks/precompute_throughput.py --data-dir data/demo [--repeats 3]

Measures, each as the median of --repeats runs from scratch into a temporary directory:
- cells/s of the whole pipeline (read through the shared imagery reader, image graph, default
  fusion, streaming write) on level 7 of the world (16384 cells), without precomputed fusions,
  with the onnxruntime sessions already created;
- wall time of the demo-world store as `soundscape demo` builds it (levels 0..7, hourly and
  monthly fusions at levels 0..6), index, checksums and manifest included.
Prints one JSON object with the machine, the device precompute chose and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cli.demo import DEMO_FUSION_LEVELS, DEMO_LEVELS  # noqa: E402
from precompute.device import open_bundle, select_device  # noqa: E402
from precompute.run import run  # noqa: E402
from runtime.imagery import Imagery  # noqa: E402
from runtime.tiles import WORLD_BBOX  # noqa: E402


def _timed_run(
    imagery: Path, bundle_path: Path, levels: list[int], fusion_levels: tuple[int, ...]
) -> tuple[float, float]:
    """(wall seconds of a run from scratch, its pipeline cells/s)."""
    device = select_device(bundle_path)
    bundle = open_bundle(bundle_path, device)
    for graph in ("image", "fuse"):  # session creation is start-up, not throughput
        bundle.session(graph)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        _, report = run(
            Imagery(str(imagery)),
            bundle,
            levels,
            WORLD_BBOX,
            Path(tmp) / "store",
            progress=False,
            fusion_levels=fusion_levels,
            readers=device.readers,
        )
        return time.perf_counter() - started, report.cells_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/demo", help="demo files (soundscape demo --build-only)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = Path(args.data_dir)
    imagery, bundle = data / "imagery" / "bluemarble.tif", data / "bundle"
    device = select_device(bundle)
    rates, builds, loads = [], [], []
    for _ in range(args.repeats):
        loads.append(os.getloadavg()[0])
        rates.append(_timed_run(imagery, bundle, [7], ())[1])
        builds.append(_timed_run(imagery, bundle, DEMO_LEVELS, DEMO_FUSION_LEVELS)[0])
    print(
        json.dumps(
            {
                "date": date.today().isoformat(),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "device": f"{device.kind}, {device.precision}, batch {device.batch}, {device.readers} readers",
                "bundle": json.loads((bundle / "manifest.json").read_text())["id"],
                "level7_cells_per_s": {
                    "median": round(statistics.median(rates), 1),
                    "runs": [round(r, 1) for r in rates],
                },
                "demo_store_s": {
                    "median": round(statistics.median(builds), 1),
                    "runs": [round(b, 1) for b in builds],
                    "levels": f"{DEMO_LEVELS[0]}..{DEMO_LEVELS[-1]}",
                    "fusion_levels": f"{DEMO_FUSION_LEVELS[0]}..{DEMO_FUSION_LEVELS[-1]}",
                },
                "load_average_before_runs": [round(v, 2) for v in loads],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

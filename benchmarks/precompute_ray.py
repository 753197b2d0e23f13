"""The Ray engine's overhead against the local engine, for docs/scale.md ("Precompute on a Ray cluster").

    python benchmarks/precompute_ray.py --imagery data/demo/imagery/bluemarble.tif --bundle data/demo/bundle \
        [--levels 0-5] [--shards 2] [--repeats 2]

Runs `soundscape precompute` alternately with the local engine and with `--engine ray` (a local Ray
instance the command starts itself, `--shards` tasks of 1 CPU each), each from scratch in its own
process, and reports both medians of the command's wall time, their ratio and whether every store
had the same content id. On one machine the Ray engine cannot be faster (the local engine already
uses every core); the difference is its fixed cost: starting Ray, each task opening the bundle and
enumerating the plan, and the merge. Prints one JSON object with the machine and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def timed(argv: list[str], out: Path) -> tuple[float, str]:
    """(wall seconds, store id) of one `soundscape precompute` run into `out`."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "precompute", *argv, "--out", str(out), "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"precompute {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((out / "manifest.json").read_text(encoding="utf-8"))["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imagery", required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--levels", default="0-5")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    common = ["--imagery", str(Path(args.imagery).resolve()), "--bundle", str(Path(args.bundle).resolve())]
    common += ["--levels", args.levels, "--device", "cpu"]
    engines = {
        "local": common,
        "ray": [*common, "--engine", "ray", "--ray-workers", str(args.shards), "--ray-cpus", "1"],
    }
    runs: dict[str, list[tuple[float, str]]] = {name: [] for name in engines}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, argv in engines.items():
                loads.append(round(os.getloadavg()[0], 2))
                runs[name].append(timed(argv, Path(tmp) / f"{name}-{repeat}"))
    medians = {name: statistics.median(s for s, _ in r) for name, r in runs.items()}
    print(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="minutes"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                "levels": args.levels,
                "ray_shards": args.shards,
                "seconds": {name: [round(s, 1) for s, _ in r] for name, r in runs.items()},
                "median_s": {name: round(m, 1) for name, m in medians.items()},
                "ratio_ray_to_local": round(medians["ray"] / medians["local"], 2),
                "same_store": len({i for r in runs.values() for _, i in r}) == 1,
                "load_average_before_runs": loads,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

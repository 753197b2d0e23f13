"""Precompute figures for BENCHMARKS.md (issue 13: the demo world's store in <= 0.5 of the time the
code took before, measured side by side in one run).

    python benchmarks/precompute_throughput.py --data-dir data/demo [--repeats 3]
        [--baseline REV [--baseline-data-dir DIR]] [--out FILE]

Measures the wall time of the demo-world store as `soundscape demo` builds it (levels 0..7,
hourly and monthly fusions at levels 0..6, indexes, checksums and manifest), each run from
scratch in its own process with the onnxruntime sessions already created. With --baseline, the
same run of the code at git revision REV (exported with `git archive` into a temporary
directory) alternates with this tree's, run for run, so both see the same load; the result
gives both medians and their ratio, of wall time and of CPU time (every thread of the run's
process: load from other work inflates it less than wall time). The baseline reads the bundle
in --data-dir too, unless --baseline-data-dir names a demo data dir REV's own `soundscape demo
--build-only` made: an export change (a leaner graph in the bundle) only shows when each tree
runs the bundle its own export produced. The result records each side's bundle id and whether
every pair of stores had the same content id (same id: the same bytes in every array and index,
docs/store.md; never with two bundles, since a store names its bundle). Prints one JSON object
with the machine, the device precompute chose, the commits and the load average (and writes it
to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# One run, in a fresh interpreter whose code comes from the tree it runs in (argv: tree, imagery,
# bundle, out). Only APIs the baseline revisions share: precompute.run.run, precompute.device, Imagery.
RUN_ONE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from cli.demo import DEMO_FUSION_LEVELS, DEMO_LEVELS
from precompute.device import open_bundle, select_device
from precompute.run import run
from runtime.imagery import Imagery
from runtime.tiles import WORLD_BBOX
device = select_device(sys.argv[3])
bundle = open_bundle(sys.argv[3], device)
for graph in ("image", "fuse"):  # session creation is start-up, not throughput
    bundle.session(graph)
started, cpu = time.perf_counter(), time.process_time()
manifest, report = run(Imagery(sys.argv[2]), bundle, DEMO_LEVELS, WORLD_BBOX, sys.argv[4], progress=False,
                       fusion_levels=DEMO_FUSION_LEVELS, readers=device.readers)
print(json.dumps({"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
                  "cells_per_s": report.cells_per_s,
                  "id": manifest["id"], "device": report.device}))
"""


def timed_run(tree: Path, imagery: Path, bundle: Path) -> dict:
    """One demo-world store from scratch with the code in `tree`: seconds, CPU seconds, cells/s, store id."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", RUN_ONE, str(tree), str(imagery), str(bundle), str(Path(tmp) / "store")],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_revision(revision: str, into: Path) -> str:
    """The code of `revision` written into `into` (git archive); its short commit."""
    commit = _git("rev-parse", "--short", revision)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _summary(runs: list[dict]) -> dict:
    return {
        "median_s": round(statistics.median(r["seconds"] for r in runs), 1),
        "runs_s": [round(r["seconds"], 1) for r in runs],
        "median_cpu_s": round(statistics.median(r["cpu_seconds"] for r in runs), 1),
        "runs_cpu_s": [round(r["cpu_seconds"], 1) for r in runs],
        "cells_per_s": [round(r["cells_per_s"], 1) for r in runs],
        "store_ids": sorted({r["id"] for r in runs}),
    }


def data_files(data_dir: str) -> tuple[Path, Path]:
    """The imagery and bundle of a demo data dir, checked before minutes of runs, not after."""
    data = Path(data_dir).resolve()
    imagery, bundle = data / "imagery" / "bluemarble.tif", data / "bundle"
    if not imagery.is_file() or not (bundle / "manifest.json").is_file():
        raise ValueError(
            f"{data} holds no imagery/bluemarble.tif and bundle/manifest.json "
            f"(make them with: soundscape demo --build-only --data-dir {data_dir})"
        )
    return imagery, bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/demo", help="demo files (soundscape demo --build-only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="git revision to run alternately with this tree")
    parser.add_argument(
        "--baseline-data-dir",
        metavar="DIR",
        help="demo files REV's own `soundscape demo --build-only` made (default: --data-dir's)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args()
    if args.baseline_data_dir and not args.baseline:
        parser.error("--baseline-data-dir needs --baseline REV, the code that made it.")
    if (
        args.baseline
        and subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.baseline}^{{commit}}"], cwd=REPO, capture_output=True
        ).returncode
    ):
        parser.error(f"--baseline {args.baseline} is no commit of this repository (a shallow clone may lack it).")
    try:
        data = {"current": data_files(args.data_dir)}
        if args.baseline:
            data["baseline"] = data_files(args.baseline_data_dir or args.data_dir)
    except ValueError as error:
        parser.error(str(error))
    bundles = {
        name: json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["id"]
        for name, (_, bundle) in data.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"current": REPO}
        commits = {
            "current": _git("rev-parse", "--short", "HEAD") + (" (modified)" if _git("status", "--short") else "")
        }
        if args.baseline:
            trees["baseline"] = Path(tmp)
            commits["baseline"] = export_revision(args.baseline, Path(tmp))
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        loads = []
        for _ in range(args.repeats):
            for name, tree in trees.items():
                loads.append(round(os.getloadavg()[0], 2))
                runs[name].append(timed_run(tree, *data[name]))
    result = {
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "device": runs["current"][0]["device"],
        "bundles": bundles,
        "data_dirs": {name: str(imagery.parent.parent) for name, (imagery, _) in data.items()},
        "commits": commits,
        "demo_store": {name: _summary(r) for name, r in runs.items()},
        "load_average_before_runs": loads,
    }
    if args.baseline:
        store = result["demo_store"]
        result["ratio_current_to_baseline"] = round(store["current"]["median_s"] / store["baseline"]["median_s"], 3)
        result["cpu_ratio_current_to_baseline"] = round(
            store["current"]["median_cpu_s"] / store["baseline"]["median_cpu_s"], 3
        )
        result["same_bundle"] = len(set(bundles.values())) == 1
        result["same_store"] = len({r["id"] for rs in runs.values() for r in rs}) == 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""/statistics over HTTP on a live server, beside /search of the same cells and metadata (a route
that reads them the same way) in the same run.

    python benchmarks/statistics_latency.py --bundle data/demo/bundle --store data/demo/store \
        [--repeat 7] [--json FILE]

One `soundscape serve` worker; each figure is the median of `--repeat` requests timed by curl (a
new connection each, the last byte included), every request a text never asked before (its
embedding included) unless named. Cases: the whole finest level by default metadata; a bbox; a
level the store holds an hour's fusions of; the finest level under an hour with no stored fusion,
the first request (which fuses the level) and the next ones (which read it kept); an instant in
a bbox; and POST of GeoJSON ellipses over Europe of 100, 10,000 and 99,999 vertices. Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import emit, provenance
from benchmarks.run import running, soundscape, timed_gets

BOX = "-10,35,30,60"
INSTANT = "2024-05-01T04:00:00Z"
CURL = ["curl", "--silent", "--show-error", "--fail", "--output", os.devnull, "--write-out", "%{time_total}"]


def gets(base: str, path: str, repeat: int, tag: str) -> list[float]:
    """`path` (its `{i}` a new word each time) asked `repeat` times."""
    return timed_gets(base, [path.format(i=f"{tag}{i}") for i in range(repeat)])


def ellipse(vertices: int) -> bytes:
    """A GeoJSON Polygon over Europe (10 E 48 N, 45 by 30 degrees) of that many vertices."""
    ring = [
        [10 + 22.5 * math.cos(2 * math.pi * k / vertices), 48 + 15 * math.sin(2 * math.pi * k / vertices)]
        for k in range(vertices)
    ]
    return json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}).encode()


def posts(base: str, body: bytes, repeat: int, tag: str) -> list[float]:
    """POST /statistics of `body` under hour=6, `repeat` times, as curl times it."""
    with tempfile.NamedTemporaryFile(suffix=".geojson") as file:
        file.write(body)
        file.flush()
        times = []
        for i in range(repeat):
            url = f"{base}/statistics?q=birdsong+{tag}{i}&hour=6"
            out = subprocess.run(
                [*CURL, "-H", "Content-Type: application/geo+json", "--data-binary", f"@{file.name}", url],
                check=True,
                capture_output=True,
                text=True,
            )
            times.append(float(out.stdout))
    return times


def measure(base: str, repeat: int) -> dict:
    median = statistics.median
    run = str(time.time_ns())[-6:]  # texts no earlier run of this server asked
    cases = {
        "whole finest level, default metadata": (
            "/statistics?q=birdsong+{i}",
            "/search?k=10&exact=true&q=birdsong+{i}",
        ),
        "bbox, default metadata": (
            f"/statistics?bbox={BOX}&q=birdsong+{{i}}",
            f"/search?k=10&bbox={BOX}&q=birdsong+{{i}}",
        ),
        "level 6, hour=6 (stored fusions)": (
            "/statistics?level=6&hour=6&q=birdsong+{i}",
            "/search?k=10&level=6&hour=6&exact=true&q=birdsong+{i}",
        ),
        "bbox at an instant": (
            f"/statistics?bbox={BOX}&datetime={INSTANT}&q=birdsong+{{i}}",
            f"/search?k=10&bbox={BOX}&datetime={INSTANT}&q=birdsong+{{i}}",
        ),
    }
    found: dict = {}
    for name, (stats, search) in cases.items():
        found[name] = {
            "statistics_s": median(gets(base, stats, repeat, f"s{run}")),
            "search_s": median(gets(base, search, repeat, f"k{run}")),
        }
        found[name]["ratio"] = found[name]["statistics_s"] / found[name]["search_s"]
    first = gets(base, "/statistics?hour=7&q=birdsong+{i}", 1, f"f{run}")[0]  # fuses the finest level at hour 7
    kept = median(gets(base, "/statistics?hour=7&q=birdsong+{i}", repeat, f"g{run}"))
    found["whole finest level, hour=7 (no stored fusion)"] = {"first_s": first, "kept_s": kept}
    for vertices in (100, 10_000, 99_999):
        body = ellipse(vertices)
        found[f"POST, {vertices} vertices"] = {
            "bytes": len(body),
            "statistics_s": median(posts(base, body, repeat, f"p{vertices}x{run}")),
        }
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("data/demo/bundle"), help="default: data/demo/bundle")
    p.add_argument("--store", type=Path, default=Path("data/demo/store"), help="default: data/demo/store")
    p.add_argument("--repeat", type=int, default=7, help="requests a figure is the median of (default 7)")
    p.add_argument("--json", type=Path, help="also write the result here (default: stdout only)")
    args = p.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as scratch,
        running(soundscape(args.bundle, args.store, 1, Path(scratch) / "q.sqlite"), "/readyz") as (base, _),
    ):
        load_before = os.getloadavg()[0]
        measures = measure(base, args.repeat)
    emit(
        {**provenance(), "load_before": load_before, "load_after": os.getloadavg()[0], "measures": measures}, args.json
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

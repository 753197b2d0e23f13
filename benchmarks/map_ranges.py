"""A large map's values read as GIS clients read them, from outside: GDAL's `/vsicurl/` (QGIS
opening a URL) reads a GeoTIFF map in byte ranges, beside one plain GET of the same kind of map
(curl, one drawing, one body: the least a new map can cost). Each read is of a new map (a new
hour), so nothing is cached; reads take turns. The ranges GDAL asked are counted from its own
debug output (`VSICURL: Downloading FIRST-LAST`).

    python benchmarks/map_ranges.py [--bundle data/demo/bundle --store data/demo/store] [--repeat 7]
        [--json benchmarks/results/map-ranges.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import dumps, provenance
from benchmarks.run import load, p50_ms, running, soundscape, timed_gets

MAP = "/collections/contrast/map?q=birdsong&bbox=-12,34,32,60&width=2048&f=tif&hour={hour}"


def gdal_read(base: str, url: str, out: Path) -> tuple[float, int]:
    """Seconds gdal_translate takes to copy the GeoTIFF at `url` through /vsicurl/, and the byte
    ranges it asked."""
    env = {**os.environ, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_DEBUG": "ON"}
    began = time.perf_counter()
    done = subprocess.run(
        ["gdal_translate", "-q", f"/vsicurl/{base}{url}", str(out)], check=True, env=env, capture_output=True, text=True
    )
    return time.perf_counter() - began, done.stderr.count("VSICURL: Downloading")


def measure(base: str, repeat: int, out: Path) -> dict:
    """Each round: a new map read by GDAL (and the ranges it asked), then a new map by one GET."""
    gdal, whole, ranges = [], [], []
    for i in range(repeat):
        seconds, asked = gdal_read(base, MAP.format(hour=(2 * i) % 24), out)
        gdal.append(seconds)
        ranges.append(asked)
        whole += timed_gets(base, [MAP.format(hour=(2 * i + 1) % 24)])
    return {
        "gdal_p50_ms": p50_ms(gdal),
        "get_p50_ms": p50_ms(whole),
        "gdal_over_get": round(p50_ms(gdal) / p50_ms(whole), 2),
        "ranges_per_read": ranges,
        "gdal_s": gdal,
        "get_s": whole,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("data/demo/bundle"))
    parser.add_argument("--store", type=Path, default=Path("data/demo/store"))
    parser.add_argument("--repeat", type=int, default=7, help="new maps read each way (at most 12: one per hour)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/map-ranges.json"))
    args = parser.parse_args()
    if not 1 <= args.repeat <= 12:
        parser.error(f"--repeat must be 1..12 (each read a new hour of 24), not {args.repeat}")
    result: dict = {**provenance(), "map": MAP, "load_before": load()}
    with tempfile.TemporaryDirectory() as tmp:
        command = soundscape(args.bundle, args.store, 2, Path(tmp) / "queries.db")
        with running(command, "/readyz") as (base, _):
            result |= measure(base, args.repeat, Path(tmp) / "map.tif")
    result["load_after"] = load()
    print(
        f"GDAL's read of a new map p50 {result['gdal_p50_ms']} ms in {result['ranges_per_read']} requests; "
        f"one GET of a new map p50 {result['get_p50_ms']} ms ({result['gdal_over_get']}x)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""One map image (OGC API - Maps) against the tiles it is drawn from, from outside: what a client
pays for `GET /collections/contrast/map` of the harness's viewport (the 20 tiles of zoom 3 that
benchmarks/run.py's viewport measure fetches, 1280 x 1024 pixels, Web Mercator) beside fetching
those 20 tiles as a browser does (curl, at most 6 connections), for a new query each time and for
one whose tiles are cached. Requests alternate map and tiles, so load changes hit both alike.

    python benchmarks/map_image.py [--bundle data/demo/bundle --store data/demo/store] [--repeat 7]
        [--json benchmarks/results/map-image.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import mercantile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import dumps, provenance
from benchmarks.run import VIEWPORT, load, p50_ms, running, soundscape, timed_gets, viewport_once

ZOOM = VIEWPORT[0][0]
COLUMNS = sorted({x for _, x, _ in VIEWPORT})
ROWS = sorted({y for _, _, y in VIEWPORT})


def viewport_box() -> tuple[float, float, float, float]:
    """The viewport's tiles' box in Web Mercator metres (west, south, east, north)."""
    first, last = mercantile.xy_bounds(COLUMNS[0], ROWS[0], ZOOM), mercantile.xy_bounds(COLUMNS[-1], ROWS[-1], ZOOM)
    return first.left, last.bottom, last.right, first.top


def map_url(query: str) -> str:
    """The map of the viewport's box at its tiles' own pixel size: drawn from the same 20 tiles."""
    box = ",".join(f"{v:.3f}" for v in viewport_box())
    width, height = 256 * len(COLUMNS), 256 * len(ROWS)
    return (
        f"/collections/contrast/map?q={query}&bbox={box}&bbox-crs=EPSG:3857&crs=EPSG:3857&width={width}&height={height}"
    )


def measure(base: str, salt: str, repeat: int) -> dict:
    """p50 (ms) of a new query's map and viewport, alternating, and of each once cached."""
    maps, tiles = [], []
    for i in range(repeat):
        maps += timed_gets(base, [map_url(f"map+{salt}+{i}")])
        tiles.append(viewport_once(base, f"tiles+{salt}+{i}"))
    timed_gets(base, [map_url(f"map+{salt}+cached")])
    viewport_once(base, f"tiles+{salt}+cached")
    maps_cached, tiles_cached = [], []
    for _ in range(repeat):
        # the same map again is replayed as first sent (server/fastpath.py; no If-None-Match: no 304)
        maps_cached += timed_gets(base, [map_url(f"map+{salt}+cached")])
        tiles_cached.append(viewport_once(base, f"tiles+{salt}+cached"))
    return {
        "new_query": {"map_p50_ms": p50_ms(maps), "tiles_p50_ms": p50_ms(tiles), "map_s": maps, "tiles_s": tiles},
        "cached": {
            "map_p50_ms": p50_ms(maps_cached),
            "tiles_p50_ms": p50_ms(tiles_cached),
            "map_s": maps_cached,
            "tiles_s": tiles_cached,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("data/demo/bundle"))
    parser.add_argument("--store", type=Path, default=Path("data/demo/store"))
    parser.add_argument("--repeat", type=int, default=7, help="new queries (and cached repeats) of each")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/map-image.json"))
    args = parser.parse_args()
    result: dict = {
        **provenance(),
        "map": map_url("QUERY"),
        "tiles": f"{len(VIEWPORT)} tiles of zoom {ZOOM}, curl, at most 6 connections",
        "load_before": load(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        command = soundscape(args.bundle, args.store, 2, Path(tmp) / "queries.db")
        with running(command, "/readyz") as (base, _):
            result |= measure(base, str(time.time_ns()), args.repeat)
    result["load_after"] = load()
    for case in ("new_query", "cached"):
        r = result[case]
        r["map_over_tiles"] = round(r["map_p50_ms"] / r["tiles_p50_ms"], 2)
        print(f"{case}: map p50 {r['map_p50_ms']} ms, its 20 tiles p50 {r['tiles_p50_ms']} ms ({r['map_over_tiles']}x)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

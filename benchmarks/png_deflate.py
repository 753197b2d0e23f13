"""PNG tiles' deflate, in process: libdeflate at level 1 (what server/render.py uses) beside the
standard library's zlib at the same level (the baseline every Python has) and ISA-L's (`isal`, what
the server used before, measured where it is installed), over the image data of demo tiles as
served (each row Sub-filtered); per encoder the median time a tile, the mean bytes, and whether
fresh processes deflate every tile to the same bytes as this one.

    python benchmarks/png_deflate.py [--bundle data/demo/bundle --store data/demo/store]
        [--tiles 40] [--repeat 9] [--json benchmarks/results/png-deflate.json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import emit, provenance
from benchmarks.server_latency import tiles_of

QUERIES = ("birdsong", "busy traffic in a city street", "waves on a beach")
ZOOMS = (2, 3, 4, 5)
# Each encoder: the module it imports and its expression of `data` (bytes), so this process and
# a fresh one run the same code.
ENCODERS = {
    "libdeflate": ("deflate", "bytes(deflate.zlib_compress(data, 1))"),
    "zlib": ("zlib", "zlib.compress(data, 1)"),
    "isal": ("isal.isal_zlib", "isal.isal_zlib.compress(data, 1)"),
}


def image_data(png: bytes) -> bytes:
    """A PNG's image data before deflate: its IDAT chunk inflated (one IDAT, as render writes)."""
    start = png.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[start : start + 4])
    return zlib.decompress(png[start + 8 : start + 8 + length])


def served_tiles(bundle: Path, store: Path, count: int) -> list[bytes]:
    """The image data of `count` tiles of each zoom and query, as the server draws them."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    db = Path(tempfile.mkdtemp(prefix="png-deflate-")) / "queries.sqlite"
    app = create_app(Settings(bundle=str(bundle), store=str(store), query_db=str(db)))
    store_of = app.state.service.store
    with TestClient(app) as client:
        return [
            image_data(client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": q}).content)
            for q in QUERIES
            for zoom in ZOOMS
            for z, x, y in tiles_of(store_of, zoom, count)
        ]


def digest_in_fresh_process(name: str, data_file: Path) -> str:
    """SHA-256 of every tile's deflated bytes, deflated by `name` in a new Python process (the
    tiles are the rows of the .npy file `data_file`)."""
    module, expression = ENCODERS[name]
    script = (
        f"import hashlib, numpy as np, {module}\nh = hashlib.sha256()\n"
        f"for row in np.load({str(data_file)!r}):\n"
        f"    data = row.tobytes()\n    h.update({expression})\nprint(h.hexdigest())"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()


def measure(name: str, tiles: list[bytes], repeat: int, data_file: Path, processes: int) -> dict:
    module, expression = ENCODERS[name]
    scope: dict = {}
    exec(f"import {module}", scope)
    encode = eval(f"lambda data: {expression}", scope)
    outs = [encode(t) for t in tiles]
    assert all(zlib.decompress(o) == t for o, t in zip(outs, tiles, strict=True)), f"{name} does not round-trip"
    per_tile = []
    for _ in range(repeat):
        began = time.perf_counter()
        for t in tiles:
            encode(t)
        per_tile.append((time.perf_counter() - began) / len(tiles) * 1e6)
    here = hashlib.sha256(b"".join(outs)).hexdigest()
    fresh = [digest_in_fresh_process(name, data_file) for _ in range(processes)]
    return {
        "us_per_tile_p50": round(statistics.median(per_tile), 1),
        "mean_bytes": round(sum(map(len, outs)) / len(outs)),
        "fresh_processes_same_bytes": sum(f == here for f in fresh),
        "fresh_processes": processes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("data/demo/bundle"))
    parser.add_argument("--store", type=Path, default=Path("data/demo/store"))
    parser.add_argument("--tiles", type=int, default=40, help="tiles of each zoom (2-5) and query")
    parser.add_argument("--repeat", type=int, default=9, help="timed passes over all tiles")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes that deflate every tile again")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    tiles = served_tiles(args.bundle, args.store, args.tiles)
    with tempfile.TemporaryDirectory() as folder:
        data_file = Path(folder) / "tiles.npy"
        np.save(data_file, np.stack([np.frombuffer(t, np.uint8) for t in tiles]))  # one tile size: rows alike
        installed = [n for n, (module, _) in ENCODERS.items() if importlib.util.find_spec(module.split(".")[0])]
        results = {n: measure(n, tiles, args.repeat, data_file, args.processes) for n in installed}
    base = results["zlib"]["us_per_tile_p50"]
    for result in results.values():
        result["time_of_zlib"] = round(result["us_per_tile_p50"] / base, 2)
    emit(
        {
            **provenance(),
            "tiles": len(tiles),
            "raw_bytes_mean": round(sum(map(len, tiles)) / len(tiles)),
            "encoders": results,
        },
        args.json,
    )


if __name__ == "__main__":
    main()

"""In-process latencies of the tile server on the demo world (docs/design.md, "Targets").

    python benchmarks/server_latency.py --data-dir data/demo [--repeat 60]

Measures, through the server's own service (thread-pool hops, caches and encoding included, HTTP
excluded): a cold heatmap tile with default metadata, a cold tile with `hour=`, a text query,
a 10 s audio query. Baseline in the same process: rio-tiler reading and rendering the same tile
of the imagery at its defaults (the per-tile work TiTiler does). Prints one JSON object. With
--instant, cold tiles at an instant (`datetime=`) against tiles of one hour and month instead.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.bundle import Bundle
from server.app import warm_up
from server.cache import named_key
from server.engine import QueryMetadata
from server.params import TileParams, tile_request
from server.service import SoundscapeService
from server.settings import Settings
from store.reader import Store


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


class CpuClock:
    """CPU time of this process (all threads) per item: the cost of the work itself, which other
    processes on a shared machine do not inflate the way they inflate wall time."""

    def __enter__(self) -> CpuClock:
        self.start = time.process_time()
        return self

    def per_item_ms(self, count: int) -> float:
        return round((time.process_time() - self.start) * 1000 / count, 3)

    def __exit__(self, *exc) -> None:
        pass


def tiles_of(store: Store, zoom: int, count: int) -> list[tuple[int, int, int]]:
    """`count` distinct tiles of `zoom` that hold cells (so none is a cheap blank)."""
    codes = np.asarray(store.levels[store.maxlevel].arrays.codes)
    from runtime.tiles import demorton

    xs, ys = demorton(codes)
    shift = store.maxlevel - zoom
    tiles = sorted({(zoom, int(x) >> shift, int(y) >> shift) for x, y in zip(xs, ys, strict=True)})
    rng = np.random.default_rng(0)
    return [tiles[i] for i in rng.permutation(len(tiles))[:count]]


async def time_tiles(service: SoundscapeService, tiles, repeat: int, keep_fused: bool = False, **params) -> list[float]:
    """Each request cold: the tile and fused-block caches are emptied before it. keep_fused: only
    the tiles are, so a tile with hour= finds its cells fused (a new query at an hour seen before)."""
    samples = []
    for i in range(repeat):
        z, x, y = tiles[i % len(tiles)]
        request, text = tile_request(service, "WebMercatorQuad", z, x, y, "png", TileParams(q="birdsong", **params))
        service.tiles.local.drop(named_key("tile", "") if keep_fused else "")
        start = time.perf_counter()
        await service.tile(request, text)
        samples.append(time.perf_counter() - start)
    return samples


def ten_second_clips(count: int, rate: int = 44100) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        soundfile.write(buf, (0.1 * rng.standard_normal(rate * 10)).astype(np.float32), rate, format="WAV")
        out.append(buf.getvalue())
    return out


async def measure(service: SoundscapeService, repeat: int) -> dict:
    await service.text_query("birdsong")  # the query embedding is cached; tiles are not
    zoom = service.store.maxlevel - 4  # a tile of 16 x 16 cells of the finest level
    tiles = tiles_of(service.store, zoom, repeat)
    cpu = {}
    with CpuClock() as clock:
        default = await time_tiles(service, tiles, repeat)
    cpu["cold_tile_default"] = clock.per_item_ms(repeat)
    with CpuClock() as clock:
        hour = await time_tiles(service, tiles, repeat, hour=6)
    cpu["cold_tile_hour"] = clock.per_item_ms(repeat)
    text = []
    with CpuClock() as clock:
        for i in range(repeat):
            start = time.perf_counter()
            await service.text_query(f"birdsong number {i}")
            text.append(time.perf_counter() - start)
    cpu["text_query"] = clock.per_item_ms(repeat)
    audio = []
    clips = ten_second_clips(max(5, repeat // 4))
    with CpuClock() as clock:
        for clip in clips:
            start = time.perf_counter()
            await service.audio_query(clip)
            audio.append(time.perf_counter() - start)
    cpu["audio_query_10s"] = clock.per_item_ms(len(clips))
    return {
        "cold_tile_default_ms": median_ms(default),
        "cold_tile_hour_ms": median_ms(hour),
        "text_query_ms": median_ms(text),
        "audio_query_10s_ms": median_ms(audio),
        "cpu_ms_per_item": cpu,
        "load_average_1min": os.getloadavg()[0],
        "tiles": len(tiles),
        "zoom": zoom,
        "repeat": repeat,
        "renders": service.stats["renders"],
        "fusions": service.stats["fusions"],
        "text_encodings": service.stats["text_encodings"],
        "audio_encodings": service.stats["audio_encodings"],
    }


def served(bundle: str, store: str) -> SoundscapeService:
    """The service as `soundscape serve` builds it (one BLAS thread, as create_app sets; its
    onnxruntime threads), warmed up."""
    threadpool_limits(1, user_api="blas")
    settings = Settings(bundle=bundle, store=store)
    service = SoundscapeService(Bundle(bundle, threads=settings.ort_threads), Store(store), settings)
    warm_up(service)
    return service


def unfused_zoom(service: SoundscapeService) -> int:
    """The zoom whose tiles draw the finest level without stored fusions for hour=6."""
    unfused = [lv for lv, level in service.store.levels.items() if level.precomputed(6, None, None) is None]
    return max(0, max(unfused or [service.store.maxlevel]) - 4)  # tiles of zoom z draw level z + 4


def hour_versus_default(bundle: str, store: str, repeat: int) -> dict:
    """benchmarks/run.py's hour_tile measure: cold tiles with hour=6 and with default metadata,
    interleaved in one process, on the finest level without stored fusions."""
    service = served(bundle, store)
    zoom = unfused_zoom(service)

    async def run() -> dict:
        await service.text_query("birdsong")
        tiles = tiles_of(service.store, zoom, repeat)
        await time_tiles(service, tiles, 2, hour=6)  # the scale of hour=6 (a sample fusion) is not the tile's cost
        await time_tiles(service, tiles, 2)
        wall: dict[str, list[float]] = {"default": [], "hour": [], "hour_seen": []}
        cpu = dict.fromkeys(wall, 0.0)
        for i in range(0, repeat, 5):  # interleaved, so a load change hits all three
            part = tiles[i : i + 5]
            for name, params in (("default", {}), ("hour", {"hour": 6}), ("hour_seen", {"hour": 6})):
                primed = name == "hour_seen"
                if primed:  # the part's cells fused and cached (the "hour" pass cleared all but its last)
                    await time_tiles(service, part, len(part), keep_fused=True, **params)
                start = time.process_time()
                wall[name] += await time_tiles(service, part, len(part), keep_fused=primed, **params)
                cpu[name] += time.process_time() - start
        d, h, seen = (median_ms(wall[name]) for name in wall)
        return {
            "level": zoom + 4,
            "zoom": zoom,
            "tiles": repeat,
            "cold_tile_default_ms": d,
            "cold_tile_hour_ms": h,
            "ratio": round(h / d, 1),
            # the fused cells of this hour cached: a new query's tile at an hour seen before
            "cold_tile_hour_seen_ms": seen,
            "ratio_hour_seen": round(seen / d, 1),
            # CPU time of the process per tile: what load on a shared machine inflates least
            "cpu_ms_per_tile": {name: round(1000 * cpu[name] / len(wall[name]), 3) for name in cpu},
            "cpu_ratio": round(cpu["hour"] / cpu["default"], 1),
        }

    return asyncio.run(run())


INSTANT = "2024-05-01T04:00:00Z"  # dawn in Europe and Africa, night in the Americas


def instant_versus_hour(bundle: str, store: str, repeat: int) -> dict:
    """Cold tiles at an instant (`datetime=`: each cell at its place's clock, one fusion with a
    clock a cell) against cold tiles of one hour and month (one fusion of one clock), interleaved
    in one process: on the finest level without stored fusions, and the zoom-0 world tile (every
    clock of the level). The colour scale of the instant is cached, as every tile but its first
    finds it; `first_tile_of_new_instant_ms`: a tile of an instant never asked, its scale included."""
    service = served(bundle, store)
    zoom = unfused_zoom(service)
    fixed = {"hour": 6, "month": 5}

    async def run() -> dict:
        await service.text_query("birdsong")
        tiles = tiles_of(service.store, zoom, repeat)
        for params in (fixed, {"datetime": INSTANT}):
            await time_tiles(service, tiles, 2, **params)  # the scale and the first uses
            await time_tiles(service, [(0, 0, 0)], 1, **params)
        wall: dict[str, list[float]] = {"hour_month": [], "instant": [], "world_hour_month": [], "world_instant": []}
        for i in range(0, repeat, 5):  # interleaved, so a load change hits all
            part = tiles[i : i + 5]
            wall["hour_month"] += await time_tiles(service, part, len(part), **fixed)
            wall["instant"] += await time_tiles(service, part, len(part), datetime=INSTANT)
            wall["world_hour_month"] += await time_tiles(service, [(0, 0, 0)], 1, **fixed)
            wall["world_instant"] += await time_tiles(service, [(0, 0, 0)], 1, datetime=INSTANT)
        firsts = [f"2024-05-01T04:{m:02d}:00Z" for m in range(1, 6)]  # each a new instant: its scale too
        first = [(await time_tiles(service, tiles[:1], 1, datetime=moment))[0] for moment in firsts]
        p50 = {name: median_ms(samples) for name, samples in wall.items()}
        return {
            "zoom": zoom,
            "tiles": repeat,
            **{f"cold_tile_{name}_ms": ms for name, ms in p50.items()},
            "ratio": round(p50["instant"] / p50["hour_month"], 1),
            "world_ratio": round(p50["world_instant"] / p50["world_hour_month"], 1),
            "first_tile_of_new_instant_ms": median_ms(first),
            "load_average_1min": os.getloadavg()[0],
        }

    return asyncio.run(run())


def search_in_process(bundle: str, store: str, repeat: int) -> dict:
    """benchmarks/run.py's search measure without HTTP: the service's search for the k = 10 best
    cells of the finest level under a new (hour, month) each time (candidates ranked), each
    followed by the same search with exact=True (the whole level fused), in one process."""
    service = served(bundle, store)
    level = service.level(None)
    pairs = [QueryMetadata(hour=i % 24, month=1 + (i + i // 24) % 12) for i in range(1, repeat + 2)]

    async def run() -> dict:
        _, query = await service.text_query("birdsong")
        await service.search(level, pairs[0], query, 10)  # a process's first fusion pays for first uses
        wall: dict[str, list[float]] = {"candidates": [], "exact": []}
        cpu = dict.fromkeys(wall, 0.0)
        for meta in pairs[1:]:  # interleaved, so a load change hits both
            for name in wall:
                began, clock = time.perf_counter(), time.process_time()
                await service.search(level, meta, query, 10, exact=name == "exact")
                wall[name].append(time.perf_counter() - began)
                cpu[name] += time.process_time() - clock
        return {
            "level": level.level,
            "searches": repeat,
            "p50_ms": median_ms(wall["candidates"]),
            "exact_p50_ms": median_ms(wall["exact"]),
            # CPU time of the process (every thread) per search
            "cpu_ms": round(1000 * cpu["candidates"] / repeat, 3),
            "exact_cpu_ms": round(1000 * cpu["exact"] / repeat, 3),
        }

    return asyncio.run(run())


def rio_tiler_baseline(imagery: str, tiles) -> float:
    from rio_tiler.io import Reader

    samples = []
    with Reader(imagery) as src:
        for z, x, y in tiles:
            start = time.perf_counter()
            src.tile(x, y, z).render(img_format="PNG")
            samples.append(time.perf_counter() - start)
    return median_ms(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/demo")
    parser.add_argument("--repeat", type=int, default=60)
    parser.add_argument(
        "--instant",
        action="store_true",
        help="time tiles at an instant (datetime=) against tiles of one hour and month instead (default: off)",
    )
    args = parser.parse_args()
    data = Path(args.data_dir)
    if args.instant:
        print(json.dumps(instant_versus_hour(str(data / "bundle"), str(data / "store"), args.repeat), indent=2))
        return
    service = served(str(data / "bundle"), str(data / "store"))
    result = asyncio.run(measure(service, args.repeat))
    imagery = service.imagery.path if service.imagery else None
    if imagery:
        result["baseline_rio_tiler_tile_ms"] = rio_tiler_baseline(
            imagery, tiles_of(service.store, service.store.maxlevel - 4, args.repeat)
        )
        result["ratio_baseline_over_cold_default"] = round(
            result["baseline_rio_tiler_tile_ms"] / result["cold_tile_default_ms"], 2
        )
    result.update(
        {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
            "bundle": service.bundle.id,
            "store": service.store.id,
        }
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

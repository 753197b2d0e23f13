"""The performance harness (issue 13): every figure side by side with its baseline in one run, so
ratios hold on a shared, loaded machine. Writes a JSON result and the "Performance harness"
table of BENCHMARKS.md from it.

    python benchmarks/run.py [--bundle data/demo/bundle --store data/demo/store] [--duration 4 --rounds 3]
        [--json benchmarks/results/performance.json] [--markdown BENCHMARKS.md]
        [--flamegraphs benchmarks/flamegraphs] [--only warm,cold,...]
        [--precompute-baseline REV --precompute-baseline-data-dir DIR --precompute-repeats N]

Measures (HTTP ones load `soundscape serve --workers 2` with wrk, 2 threads, 32 connections, in
rounds interleaved with its baselines, which run beside it under the same uvicorn options,
benchmarks/baseline_apps.py):
- warm: tiles/s of cache hits (the 341 tiles of zooms 0-4, q=birdsong&hour=6) vs a bare ASGI
  app and a bare FastAPI route answering the same URLs with the same bytes;
- cold: tiles/s when every request is a query never seen (a user typing) vs TiTiler rendering
  the store's GeoTIFF (no cache: every tile is its work); where the bundle has an int8 text
  graph, also a second server running it (`--precision int8`); and the first server drawing the
  same tiles of a text it embedded before, a new rescale= each request: the part of a cold
  tile no text tower can remove;
- hour_tile: in process, a cold tile with hour= on a level without stored fusions vs the
  default-metadata tile (benchmarks/server_latency.py's timing);
- hour_http: the same from outside: tiles/s of zoom 3 (level 7) for a known text, each request
  a new (tile, hour, month) whose window is fused, vs the same tiles under default metadata, each
  a new rescale=, on the same server in interleaved rounds;
- search: /search with hour and month on the finest level (first request, and p50 of repeats)
  vs /search without metadata; a new hour and month each request (candidates ranked, x3 samples:
  its p50 is one of the issue's targets) vs the same search with exact=true (the whole level
  fused), requests interleaved; each request timed by curl on a new connection; and the same
  pair of searches in process, through the service (benchmarks/server_latency.py's
  search_in_process: no HTTP), wall and CPU;
- viewport: a new query's 20 tiles of zoom 3 fetched by curl over at most 6 connections (as a
  browser), first request to last byte, p50 over new queries, vs the same viewport cached; and
  the same as <img> loads in headless Chromium (its first viewport, which starts the browser's
  connections, left out), with the CPU its processes and the server's spent per viewport (from
  /proc, in clock ticks of 10 ms): the browser shares this box's cores with the server.
- floor: in process, the least CPU the `hour=` tile's fusion and a new text's embedding can take
  on one core here: their graphs' matrix products at the best rate this core reaches for one
  (benchmarks/gemm_floor.py); with hour_tile and cold in the same run, the table sets it against
  the targets' room.
- precompute: the demo world's store from scratch (levels 0..7, fusions at 0..6) by this tree
  and by the code of --precompute-baseline (3484b32, before issue 13's changes), run for run
  (benchmarks/precompute_throughput.py); with --precompute-baseline-data-dir each tree runs the
  bundle its own export made.
Every measure records the 1-minute load average before and after it. `--flamegraphs` records
py-spy flame graphs of the server during warm, cold and hour= loads (after the measures, so
sampling does not slow them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.provenance import provenance  # noqa: E402
from benchmarks.server_throughput import (  # noqa: E402
    READ_URLS,
    free_port,
    run_wrk,
    serve,
    stop,
    tile_paths,
    wait_ready,
)
from runtime.bundle import Bundle, default_providers  # noqa: E402
from server.service import store_imagery  # noqa: E402
from store.reader import Store  # noqa: E402

QUERY = "birdsong"
WARM_QUERY = f"q={QUERY}&hour=6"  # as benchmarks/server_throughput.py and the run
PRECOMPUTE_BASELINE = "3484b32"  # the precompute code when issue 13 was filed (BENCHMARKS.md, "Precompute")
VIEWPORT = [(3, x, y) for x in range(2, 7) for y in range(1, 5)]  # 20 tiles of zoom 3, as a browser asks
# Each request a text never seen: the thread's id and a counter, after a per-run salt.
NEW_QUERY_SCRIPT = (
    READ_URLS
    + """local salt = os.getenv("SALT")
local threads = 0
function setup(thread) thread:set("id", threads); threads = threads + 1 end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", urls[(i * 7919) % #urls + 1] .. "&q=" .. salt .. "t" .. id .. "n" .. i)
end
"""
)
# The same tiles of one text embedded before (q=birdsong), each request a new rescale= (span
# 0.5-1, 4 decimals: server/params.py keys a tile by them), so every request draws a tile but
# runs neither the text graph nor the text's colour scale: the ceiling for a new text's tile,
# whatever its text tower. Span and low end step through 5000 x 10000 pairs from a per-run
# offset, one range per thread.
KNOWN_TEXT_SCRIPT = (
    READ_URLS
    + """local offset = tonumber(string.sub(os.getenv("SALT"), 1, 6), 16)
local threads = 0
function setup(thread) thread:set("id", threads); threads = threads + 1 end
local i = 0
request = function()
  i = i + 1
  local n = offset + id * 20000000 + i
  local low = -0.5 + (n % 10000) / 10000
  local span = 0.5 + (math.floor(n / 10000) % 5000) / 10000
  return wrk.format("GET", urls[(n * 7919) % #urls + 1] ..
                    string.format("&q=birdsong&rescale=%.4f,%.4f", low, low + span))
end
"""
)
# The tiles of zoom 3 (drawn from level 7, which holds no stored fusions in the demo) for a text
# embedded before, each request a (tile, hour, month) not asked before, so every request fuses
# its window's cells (up to 324); a fixed rescale= keeps the colour scale's own fusion out. The
# tiles x 24 hours x 12 months are cut into six ranges, one per thread of each of three rounds
# (ROUND), as the harness runs them.
HOUR_MONTH_SCRIPT = (
    READ_URLS
    + """local round = tonumber(os.getenv("ROUND"))
local total = #urls * 24 * 12
local range = math.floor(total / 6)
local threads = 0
function setup(thread) thread:set("id", threads); threads = threads + 1 end
local i = 0
request = function()
  i = i + 1
  local n = ((round * 2 + id) * range + i % range) % total
  local tile = n % #urls
  local combo = math.floor(n / #urls)
  return wrk.format("GET", urls[tile + 1] .. string.format("&q=birdsong&rescale=0,1&hour=%d&month=%d",
                                                         combo % 24, 1 + math.floor(combo / 24) % 12))
end
"""
)
# hour= on zoom 3 (drawn from level 7, which holds no stored fusions in the demo): 64 tiles x 24 hours.
HOUR_SCRIPT = """
local i = 0
request = function()
  i = i + 1
  local t = (i * 7919) % 1536
  return wrk.format("GET", string.format("/tiles/3/%d/%d.png?q=birdsong&hour=%d", t % 8, math.floor(t / 8) % 8,
                                         math.floor(t / 64)))
end
"""


# py-spy is installed beside this Python (the `bench` extra), whether or not its bin is on PATH.
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def load() -> float:
    return round(os.getloadavg()[0], 2)


@contextmanager
def measured(result: dict, name: str) -> Iterator[dict]:
    """A measure's entry with the load average before and after it and its wall time."""
    entry = result.setdefault("measures", {}).setdefault(name, {})
    entry["load_before"], began = load(), time.monotonic()
    yield entry
    entry["load_after"], entry["wall_s"] = load(), round(time.monotonic() - began, 1)


@contextmanager
def running(cmd: list[str], ready: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """A server process group until the block ends; yields (base URL, pid)."""
    port = free_port()
    proc = serve([*cmd, "--port", str(port)], env or {}, REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + ready)
        yield base, proc.pid
    finally:
        stop(proc)


def soundscape(bundle: Path, store: Path, workers: int, query_db: Path, precision: str = "fp32") -> list[str]:
    return [
        sys.executable,
        "-m",
        "cli.main",
        "serve",
        "--bundle",
        str(bundle),
        "--store",
        str(store),
        "--workers",
        str(workers),
        "--query-db",
        str(query_db),
        "--precision",
        precision,
    ]


def baseline(name: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.baseline_apps", name, "--workers", str(workers)]


def fetch_all(base: str, urls: list[str], rounds: int = 4) -> dict[str, httpx.Response]:
    """Every URL `rounds` times, each on a new connection, so each worker (with its own caches)
    likely gets each URL: one keep-alive connection reaches one worker only. The last answers."""
    answers = {}
    with httpx.Client(base_url=base, timeout=120, headers={"Connection": "close"}) as http:
        for _ in range(rounds):
            for url in urls:
                answers[url] = http.get(url)
                answers[url].raise_for_status()
    return answers


def write_tiles(answers: dict[str, httpx.Response], folder: Path) -> None:
    """The bytes each URL was answered with, for the bare baselines (baseline_apps.recorded_tiles)."""
    index = {}
    for i, (url, response) in enumerate(answers.items()):
        (folder / f"{i}.bin").write_bytes(response.content)
        index[url] = (response.headers["content-type"], f"{i}.bin")
    (folder / "index.json").write_text(json.dumps(index), encoding="utf-8")


def p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


def timed_gets(base: str, urls: list[str]) -> list[float]:
    """Seconds each GET took, one after another, as curl times it: a new connection, the
    request, the last byte (a browser's first request). A Python client on this 2-core box adds
    its own milliseconds to each (BENCHMARKS.md, thirteenth pass)."""
    curl = ["curl", "--silent", "--show-error", "--fail", "--output", os.devnull, "--write-out", "%{time_total}"]
    return [
        float(subprocess.run([*curl, base + url], check=True, capture_output=True, text=True).stdout) for url in urls
    ]


def viewport_once(base: str, query: str, ratio: str = "") -> float:
    """First request to last byte of the viewport's tiles, fetched as a browser does: a native
    client (curl) with at most 6 connections to the host, each opened at the first request. A
    Python client on this 2-core box adds tens of ms of its own to 20 requests. `ratio` "@2x":
    the 512 px tiles the viewer asks for on a high-DPI screen."""
    urls = [f"{base}/tiles/{z}/{x}/{y}{ratio}.png?q={query}" for z, x, y in VIEWPORT]
    began = time.perf_counter()
    subprocess.run(
        ["curl", "--silent", "--fail", "--parallel", "--parallel-max", "6", "--parallel-immediate"]
        + [arg for url in urls for arg in ("--output", os.devnull, url)],
        check=True,
    )
    return time.perf_counter() - began


def viewports(base: str, salt: str, repeat: int, ratio: str = "") -> tuple[list[float], list[float]]:
    """`viewport_once` of `repeat` new queries, and `repeat` times of one query whose tiles were
    fetched once before (cached: the client's own floor)."""
    viewport_once(base, f"viewport+{salt}+cached", ratio)
    cached = [viewport_once(base, f"viewport+{salt}+cached", ratio) for _ in range(repeat)]
    label = ratio.lstrip("@") or "1x"
    return [viewport_once(base, f"viewport+{salt}+{label}+{i}", ratio) for i in range(repeat)], cached


# In a page of the server: the viewport's tiles as <img> loads, first request to last decoded image.
LOAD_IMAGES = """async (urls) => {
    const began = performance.now();
    await Promise.all(urls.map((url) => new Promise((done, failed) => {
        const image = new Image();
        image.onload = done;
        image.onerror = () => failed(new Error(url));
        image.src = url;
    })));
    return performance.now() - began;
}"""


def processes() -> Iterator[tuple[str, list[str]]]:
    """(command name, the fields after it in /proc/PID/stat: state, ppid, pgrp, ..., utime,
    stime) of every live process."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                head, _, tail = Path(entry.path, "stat").read_text(encoding="utf-8", errors="replace").rpartition(")")
            except OSError:  # gone meanwhile
                continue
            yield head.partition("(")[2], tail.split()


def group_cpu_s(groups: set[int]) -> float:
    """CPU seconds (user + system) so far of the live processes in the process groups `groups`."""
    ticks = sum(int(f[11]) + int(f[12]) for _, f in processes() if int(f[2]) in groups)
    return ticks / os.sysconf("SC_CLK_TCK")


def chromium_groups() -> set[int]:
    """Process groups of the running Chromium processes (each browser leads its own)."""
    return {int(f[2]) for name, f in processes() if name == "chromium"}


def browser_viewports(base: str, queries: list[str], server_group: int) -> list[dict] | str:
    """Per query, in one headless Chromium (its own limit of 6 connections per host): the
    viewport's seconds, and the CPU seconds the browser's processes and the server's (process
    group `server_group`) spent meanwhile, which share this box's cores; a sentence instead when
    no Chromium is installed."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return "not run: no chromium (apt-get install -y chromium)"
    from playwright.sync_api import sync_playwright

    before = chromium_groups()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(f"{base}/healthz")  # the page is the server's, as the viewer's
        ours = chromium_groups() - before
        samples = []
        for query in queries:
            urls = [f"/tiles/{z}/{x}/{y}.png?q={query}" for z, x, y in VIEWPORT]
            browser_cpu, server_cpu = group_cpu_s(ours), group_cpu_s({server_group})
            seconds = page.evaluate(LOAD_IMAGES, urls) / 1000
            samples.append(
                {
                    "s": seconds,
                    "browser_cpu_s": group_cpu_s(ours) - browser_cpu,
                    "server_cpu_s": group_cpu_s({server_group}) - server_cpu,
                }
            )
        browser.close()
    return samples


def browser_entry(loads: list[dict], fresh: int) -> dict:
    """The viewport's browser figures: p50 of the new queries' viewports (the first left out: it
    opens the connections) and of the cached ones after them, each with the CPU per viewport of
    the browser and of the server (median, ms)."""

    def p50(rows: list[dict], key: str) -> float:
        return p50_ms([r[key] for r in rows])

    new, cached = loads[1:fresh], loads[fresh + 1 :]
    return {
        "p50_ms": p50(new, "s"),
        "cached_p50_ms": p50(cached, "s"),
        "browser_cpu_ms": p50(new, "browser_cpu_s"),
        "server_cpu_ms": p50(new, "server_cpu_s"),
        "cached_browser_cpu_ms": p50(cached, "browser_cpu_s"),
        "cached_server_cpu_ms": p50(cached, "server_cpu_s"),
    }


def flamegraph(pid: int, out: Path, seconds: int, load_fn: Callable[[], object]) -> None:
    """py-spy's flame graph of the server (all workers) while `load_fn` runs."""
    spy = subprocess.Popen(
        [
            PY_SPY,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "flamegraph",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # py-spy attaches
    load_fn()
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode()[-500:]}")


# Measures ------------------------------------------------------------------------------------


def answered(name: str, run: dict) -> dict:
    """`run` (run_wrk's), if every response was a success: a server answering errors is not
    serving tiles, however fast (the bare FastAPI baseline once answered 422 to every request)."""
    if run["non_2xx"]:
        raise RuntimeError(f"{name} answered {run['non_2xx']} requests with an error status under wrk")
    return run


def interleaved(servers: dict[str, tuple[str, list[str], str | None]], args) -> dict:
    """wrk on each server (base URL, paths, Lua script or None) in turn, `args.rounds` times (so a
    change of load hits every server), `args.duration` seconds each; per server the median round
    and the rounds' tiles/s."""
    runs: dict[str, list[dict]] = {name: [] for name in servers}
    for round_ in range(args.rounds):
        for name, (base, paths, lua) in servers.items():
            extra = {"lua": lua, "env": {"SALT": secrets.token_hex(4), "ROUND": str(round_)}} if lua else {}
            runs[name].append(answered(name, run_wrk(base, paths, args.duration, args.connections, **extra)))
    out = {}
    for name, rounds in runs.items():
        median = sorted(rounds, key=lambda r: r["tiles_per_s"])[len(rounds) // 2]
        out[name] = {**median, "rounds_tiles_per_s": [r["tiles_per_s"] for r in rounds]}
    return out


def measure_http(args, result: dict, tiles_dir: Path, flames: Path | None) -> None:
    """warm, search, viewport and cold against one `soundscape serve`, its baselines running beside it."""
    warm_urls = [f"/tiles/{z}/{x}/{y}.png?{WARM_QUERY}" for z, x, y in tile_paths(4)]
    cold_urls = [f"/tiles/{z}/{x}/{y}.png?layer=heatmap" for z, x, y in tile_paths(4)]
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        base, pid = stack.enter_context(
            running(soundscape(args.bundle, args.store, args.workers, Path(tmp) / "q.sqlite"), "/healthz")
        )
        answers = fetch_all(base, warm_urls)
        write_tiles(answers, tiles_dir)
        # What fetch_all missed, under the measure's own load: warm means every worker has every tile.
        result["warm_up"] = answered("soundscape", run_wrk(base, warm_urls, 3, args.connections))
        if "warm" in args.only:
            bare = {
                name: stack.enter_context(
                    running(baseline(name, args.workers), warm_urls[0], {"BASELINE_TILES": str(tiles_dir)})
                )[0]
                for name in ("bare_asgi", "bare_fastapi")
            }
            with measured(result, "warm") as entry:
                entry.update(
                    interleaved(
                        {
                            "soundscape": (base, warm_urls, None),
                            **{name: (url, warm_urls, None) for name, url in bare.items()},
                        },
                        args,
                    )
                )
                ours = entry["soundscape"]["tiles_per_s"]
                entry["ratio_to_bare_asgi"] = round(ours / entry["bare_asgi"]["tiles_per_s"], 2)
                entry["ratio_to_bare_fastapi"] = round(ours / entry["bare_fastapi"]["tiles_per_s"], 2)
        if "search" in args.only:
            with measured(result, "search") as entry:
                entry["level"] = max(Store(args.store).levels)
                entry["client"] = "curl, a new connection per request"
                plain = [f"/search?q={QUERY}&k=10"] * args.repeat
                entry["without_metadata_p50_ms"] = p50_ms(timed_gets(base, plain))
                first = timed_gets(base, [f"/search?q={QUERY}&hour=6&month=3&k=10"] * (args.repeat + 1))
                entry["with_hour_month_first_ms"] = round(first[0] * 1000, 1)
                entry["with_hour_month_repeat_p50_ms"] = p50_ms(first[1:])
                # Baseline: the same search with exact=true, a fusion of the whole level on every
                # thread (the search before candidates), each after the candidate search of its pair.
                fresh = [
                    f"/search?q={QUERY}&hour={h % 24}&month={1 + h % 12}&k=10" for h in range(7, 7 + 3 * args.repeat)
                ]
                ours, exact = [], []
                for url in fresh:  # interleaved, so a load change hits both
                    ours += timed_gets(base, [url])
                    exact += timed_gets(base, [url + "&exact=true"])
                entry["with_new_hour_month_p50_ms"] = p50_ms(ours)
                entry["with_new_hour_month_requests"] = len(ours)
                entry["with_new_hour_month_exact_p50_ms"] = p50_ms(exact)
                entry["in_process"] = in_subprocess("search_in_process", args, 3 * args.repeat)
        if "viewport" in args.only:
            with measured(result, "viewport") as entry:
                salt = secrets.token_hex(3)
                samples, cached = viewports(base, salt, args.repeat)
                entry.update(
                    {
                        "tiles": len(VIEWPORT),
                        "zoom": 3,
                        "connections": 6,
                        "client": "curl --parallel --parallel-max 6",
                        "p50_ms": p50_ms(samples),
                        "max_ms": round(max(samples) * 1000, 1),
                        "runs": len(samples),
                        "cached_p50_ms": p50_ms(cached),
                    }
                )
                samples_2x, cached_2x = viewports(base, salt, args.repeat, "@2x")
                entry["at_2x"] = {"p50_ms": p50_ms(samples_2x), "cached_p50_ms": p50_ms(cached_2x)}
                # New queries, then one query cached by the server under URLs new to the browser
                # (trailing spaces are normalised away): the browser's own floor on this box.
                fresh = [f"viewport+{salt}+browser+{i}" for i in range(args.repeat + 1)]
                again = [f"viewport+{salt}+browser" + "+" * k for k in range(args.repeat + 1)]
                loads = browser_viewports(base, fresh + again, pid)
                entry["browser"] = loads if isinstance(loads, str) else browser_entry(loads, len(fresh))
        if "hour_http" in args.only:
            with measured(result, "hour_http") as entry:
                zoom3 = [f"/tiles/3/{x}/{y}.png?layer=heatmap" for x in range(8) for y in range(8)]
                entry.update(
                    interleaved(
                        {
                            "hour_month": (base, zoom3, HOUR_MONTH_SCRIPT),
                            "default": (base, zoom3, KNOWN_TEXT_SCRIPT),
                        },
                        args,
                    )
                )
                entry["zoom"], entry["tiles"] = 3, len(zoom3)
                entry["ratio"] = round(entry["default"]["tiles_per_s"] / entry["hour_month"]["tiles_per_s"], 1)
        if "cold" in args.only:
            imagery = store_imagery(Store(args.store))
            with measured(result, "cold") as entry:
                servers = {
                    "soundscape": (base, cold_urls, NEW_QUERY_SCRIPT),  # every request a new query
                    "soundscape_known_text": (base, cold_urls, KNOWN_TEXT_SCRIPT),  # the same server
                }
                if "int8" in Bundle(args.bundle, verify=False).manifest.get("precisions", []):
                    # The same server with the bundle's int8 text graph (docs/bundle.md)
                    int8 = soundscape(args.bundle, args.store, args.workers, Path(tmp) / "q8.sqlite", "int8")
                    servers["soundscape_int8"] = (
                        stack.enter_context(running(int8, "/healthz"))[0],
                        cold_urls,
                        NEW_QUERY_SCRIPT,
                    )
                if isinstance(imagery, str):
                    url = stack.enter_context(running(baseline("titiler", args.workers), "/docs"))[0]
                    theirs = [f"/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={imagery}" for z, x, y in tile_paths(4)]
                    fetch_all(url, theirs[:5], rounds=1)  # GDAL opens the file in each worker
                    servers["titiler"] = (url, theirs, None)
                else:
                    entry["titiler"] = f"not run: the store's imagery is {imagery!r}, TiTiler needs one raster"
                entry.update(interleaved(servers, args))
                if "titiler" in servers:
                    for name, key in (
                        ("soundscape", "ratio_to_titiler"),
                        ("soundscape_int8", "int8_ratio_to_titiler"),
                        ("soundscape_known_text", "known_text_ratio_to_titiler"),
                    ):
                        if name in entry:
                            entry[key] = round(entry[name]["tiles_per_s"] / entry["titiler"]["tiles_per_s"], 1)
        if flames is not None:
            seconds = max(8, 2 * args.duration)
            # Warm again: in one run (load 9.9) fusions were 27 % of the "warm" graph's samples
            # after the other measures; the cause was not found (a rerun under hour= and cold
            # loads logged no worker restart), so the graph is drawn only once every tile is hot.
            fetch_all(base, warm_urls, rounds=2)
            run_wrk(base, warm_urls, 2, args.connections)
            flamegraph(
                pid, flames / "warm.svg", seconds, lambda: run_wrk(base, warm_urls, seconds - 2, args.connections)
            )
            flamegraph(
                pid,
                flames / "cold.svg",
                seconds,
                lambda: run_wrk(
                    base, cold_urls, seconds - 2, args.connections, NEW_QUERY_SCRIPT, {"SALT": secrets.token_hex(4)}
                ),
            )
            flamegraph(
                pid,
                flames / "hour.svg",
                seconds,
                lambda: run_wrk(base, ["/"], seconds - 2, args.connections, HOUR_SCRIPT),
            )


def measure_precompute(args, result: dict) -> None:
    """The demo world's store from scratch by this tree and by the code of
    `--precompute-baseline` (the issue's "today"), run for run (benchmarks/precompute_throughput.py,
    in its own processes); a sentence in the entry instead when it cannot run."""
    with measured(result, "precompute") as entry, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "precompute.json"
        cmd = [
            *(sys.executable, str(REPO / "benchmarks" / "precompute_throughput.py")),
            *("--data-dir", str(args.bundle.parent), "--repeats", str(args.precompute_repeats)),
            *("--baseline", args.precompute_baseline, "--out", str(out)),
        ]
        if args.precompute_baseline_data_dir:
            cmd += ["--baseline-data-dir", str(args.precompute_baseline_data_dir)]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode:
            entry["not_run"] = (done.stderr.strip().splitlines() or ["precompute_throughput.py failed"])[-1]
            return
        report = json.loads(out.read_text(encoding="utf-8"))
        store = report["demo_store"]
        entry.update(
            {
                "baseline_commit": report["commits"]["baseline"],
                "repeats": args.precompute_repeats,
                "current_s": store["current"]["median_s"],
                "baseline_s": store["baseline"]["median_s"],
                "current_cpu_s": store["current"]["median_cpu_s"],
                "baseline_cpu_s": store["baseline"]["median_cpu_s"],
                "ratio": report["ratio_current_to_baseline"],
                "cpu_ratio": report["cpu_ratio_current_to_baseline"],
                "same_bundle": report["same_bundle"],
                "bundles": report["bundles"],
                "runs_s": {name: runs["runs_s"] for name, runs in store.items()},
                "device": report["device"],
            }
        )


def in_subprocess(function: str, args, repeat: int, module: str = "server_latency") -> dict:
    """benchmarks.`module`'s `function`(bundle, store, repeat) in a clean process (one BLAS
    thread, as the server): its JSON result."""
    code = (
        "import json, sys; sys.path.insert(0, '.');"
        f"from benchmarks.{module} import {function};"
        f"print(json.dumps({function}({str(args.bundle)!r}, {str(args.store)!r}, {repeat})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_hour_tile(args, result: dict) -> None:
    with measured(result, "hour_tile") as entry:
        entry.update(in_subprocess("hour_versus_default", args, args.repeat * 3))


def measure_floor(args, result: dict) -> None:
    with measured(result, "floor") as entry:
        entry.update(in_subprocess("floors", args, args.repeat * 3, module="gemm_floor"))


# Report --------------------------------------------------------------------------------------


def rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(figure, measured, baseline in the same run, ratio and target) per measure."""
    m, out = result["measures"], []
    if "warm" in m and "bare_asgi" in m["warm"]:
        w = m["warm"]
        out.append(
            (
                "warm tiles/s (cache hits, 341 tiles of zooms 0-4)",
                f"{w['soundscape']['tiles_per_s']:.0f}",
                f"bare ASGI app, same bytes: {w['bare_asgi']['tiles_per_s']:.0f}; bare FastAPI route: "
                f"{w['bare_fastapi']['tiles_per_s']:.0f}",
                f"**{w['ratio_to_bare_asgi']}** of bare ASGI (target >= 0.6); {w['ratio_to_bare_fastapi']} of FastAPI",
            )
        )
    if "cold" in m and isinstance(m["cold"].get("titiler"), dict):
        c = m["cold"]
        out.append(
            (
                "cold tiles/s (every request a new text query)",
                f"{c['soundscape']['tiles_per_s']:.0f}",
                f"TiTiler, same GeoTIFF: {c['titiler']['tiles_per_s']:.0f}",
                f"**{c['ratio_to_titiler']}x** TiTiler (target >= 15x)",
            )
        )
        if "soundscape_int8" in c:
            out.append(
                (
                    "the same, int8 text graph (`serve --precision int8`)",
                    f"{c['soundscape_int8']['tiles_per_s']:.0f}",
                    f"TiTiler, same GeoTIFF: {c['titiler']['tiles_per_s']:.0f}",
                    f"**{c['int8_ratio_to_titiler']}x** TiTiler (target >= 15x)",
                )
            )
        if "soundscape_known_text" in c:
            out.append(
                (
                    "the same tiles of a text embedded before, a new `rescale=` each (no text graph, no colour scale)",
                    f"{c['soundscape_known_text']['tiles_per_s']:.0f}",
                    f"TiTiler, same GeoTIFF: {c['titiler']['tiles_per_s']:.0f}",
                    f"**{c['known_text_ratio_to_titiler']}x** TiTiler: the ceiling for a new text's tile",
                )
            )
    if "floor" in m and "known_text_ratio_to_titiler" in m.get("cold", {}):
        out.append(text_floor_row(m["floor"], m["cold"]))
    if "hour_tile" in m:
        h = m["hour_tile"]
        out.append(
            (
                f"cold tile, `hour=6`, level {h['level']} (no stored fusions), in process",
                f"{h['cold_tile_hour_ms']} ms",
                f"default-metadata tile: {h['cold_tile_default_ms']} ms",
                f"**{h['ratio']}x** the default tile (target <= 3x)"
                + (f"; CPU time {h['cpu_ratio']}x" if "cpu_ratio" in h else ""),
            )
        )
    if "cold_tile_hour_seen_ms" in m.get("hour_tile", {}):
        h = m["hour_tile"]
        out.append(
            (
                "the same, a new query at an hour seen before (its fused cells cached)",
                f"{h['cold_tile_hour_seen_ms']} ms",
                f"default-metadata tile: {h['cold_tile_default_ms']} ms",
                f"**{h['ratio_hour_seen']}x** the default tile",
            )
        )
    if "floor" in m and "cpu_ms_per_tile" in m.get("hour_tile", {}):
        out.append(fusion_floor_row(m["floor"]["fusion"], m["hour_tile"]))
    if "hour_http" in m:
        h = m["hour_http"]
        out.append(
            (
                "cold tiles/s of zoom 3, a new `hour=` and `month=` each (no stored fusions), over HTTP",
                f"{h['hour_month']['tiles_per_s']:.0f}",
                f"default metadata, the same tiles, a new `rescale=` each: {h['default']['tiles_per_s']:.0f}",
                f"**{h['ratio']}x** the default tile's cost (target <= 3x)",
            )
        )
    if "search" in m:
        s = m["search"]
        out.append(
            (
                f"`/search` with hour and month (level {s['level']}), repeated metadata",
                f"p50 {s['with_hour_month_repeat_p50_ms']} ms (first: {s['with_hour_month_first_ms']} ms)",
                f"`/search` without metadata: p50 {s['without_metadata_p50_ms']} ms",
                "target p50 <= 50 ms",
            )
        )
        out.append(
            (
                "`/search` with a new hour and month each request",
                f"p50 {s['with_new_hour_month_p50_ms']} ms"
                + (f" over {s['with_new_hour_month_requests']} requests" if "with_new_hour_month_requests" in s else "")
                + (f" ({s['client']})" if "client" in s else ""),
                f"`exact=true` (the whole level fused): p50 {s.get('with_new_hour_month_exact_p50_ms', '-')} ms; "
                f"without metadata: p50 {s['without_metadata_p50_ms']} ms",
                "target p50 <= 50 ms",
            )
        )
    if "in_process" in m.get("search", {}):
        p = m["search"]["in_process"]
        out.append(
            (
                "the same, in process (the service's search, no HTTP)",
                f"p50 {p['p50_ms']:.1f} ms over {p['searches']} searches (CPU {p['cpu_ms']:.1f} ms)",
                f"`exact=True`: p50 {p['exact_p50_ms']:.1f} ms (CPU {p['exact_cpu_ms']:.1f} ms)",
                "target p50 <= 50 ms",
            )
        )
    if "viewport" in m:
        v = m["viewport"]
        out.append(
            (
                "new query's viewport (20 tiles of zoom 3, 6 connections, curl)",
                f"p50 {v['p50_ms']} ms (max {v['max_ms']} ms over {v['runs']} new queries)" + browser(v, "p50_ms"),
                f"the same viewport cached: p50 {v.get('cached_p50_ms', '-')} ms" + browser(v, "cached_p50_ms"),
                "target p50 <= 100 ms",
            )
        )
        if "at_2x" in v:
            out.append(
                (
                    "the same at a pixel ratio of 2 (`@2x`, 512 px tiles: the viewer on a high-DPI screen)",
                    f"p50 {v['at_2x']['p50_ms']} ms (curl)",
                    f"the same viewport cached: p50 {v['at_2x']['cached_p50_ms']} ms",
                    "no target: the issue's viewport is 256 px tiles",
                )
            )
    if "precompute" in m:
        out.append(precompute_row(m["precompute"]))
    return out


def text_floor_row(floors: dict, cold: dict) -> tuple[str, str, str, str]:
    """A new text's products at the core's best rate against the room 15x TiTiler leaves it: the
    box's time per request at 15x less a known text's tile's, times the cores (each request's
    CPU can at best spread over all of them)."""
    text, cores = floors["text"], floors["cores"]
    floor = text["floor_ms"]
    room = (1 / (15 * cold["titiler"]["tiles_per_s"]) - 1 / cold["soundscape_known_text"]["tiles_per_s"]) * 1000
    if room > 0:
        times = floor["int8"] / (cores * room)
        verdict = f"the int8 products alone are **{times:.1f}x** that room" + (
            ": out of reach for this text tower here" if times > 1 else ""
        )
    else:
        verdict = "no room: a known text's tile alone is below 15x TiTiler"
    return (
        "a new text's matrix products alone, at this core's best rate (`benchmarks/gemm_floor.py`)",
        f"{floor['fp32']} ms of CPU in float32, {floor['int8']} ms in int8 "
        f"({text['macs_per_text'] / 1e6:.0f} M multiply-adds, {text['tokens']} tokens)",
        f"the room 15x TiTiler leaves a new text beside a known text's tile: {room:.3f} ms of the box's time, "
        f"{cores * room:.3f} ms of CPU on its {cores} cores",
        verdict,
    )


def fusion_floor_row(fusion: dict, hour: dict) -> tuple[str, str, str, str]:
    """The least products of an `hour=` tile's fusion at the core's best rate, added to the
    default tile's CPU less its read of stored cells: the least ratio code whose only work is
    those products, at that rate, would reach."""
    default, read = hour["cpu_ms_per_tile"]["default"], fusion["stored_read_ms"]
    least, run = fusion["least_floor_ms"], fusion["floor_ms"]

    def bound(ms: float) -> str:
        return f"{(default - read + ms) / default:.1f}x"

    return (
        "`hour=6` tile's fusion: its matrix products alone, at this core's best rate",
        f"{least['fp32']} ms of CPU in float32 ({fusion['least_macs_per_tile'] / 1e6:.0f} M multiply-adds from the "
        f"first attention on; {run['fp32']} ms for the {fusion['macs_per_tile'] / 1e6:.0f} M the graph runs), "
        f"{least['int8']} ms in int8",
        f"default-metadata tile: {default} ms of CPU, of which reading its stored cells {read} ms; "
        f"the fuse graph as served: {fusion['graph_cpu_ms']} ms",
        f"an exact float32 fusion leaves the `hour=` tile at least **{bound(least['fp32'])}** the default tile "
        f"(target <= 3x); int8 products {bound(least['int8'])}",
    )


def precompute_row(p: dict) -> tuple[str, str, str, str]:
    figure = "precompute of the demo world (levels 0..7, fusions at 0..6), wall (CPU)"
    if "not_run" in p:
        return figure, f"not run: {p['not_run']}", "-", "target <= 0.5 of the baseline"
    bundles = "each tree its own export's bundle" if not p["same_bundle"] else "one bundle for both trees"
    return (
        figure,
        f"{p['current_s']} s ({p['current_cpu_s']} s); median of {p['repeats']}",
        f"the code of {p['baseline_commit']}: {p['baseline_s']} s ({p['baseline_cpu_s']} s); {bundles}",
        f"**{p['ratio']}** of the baseline (target <= 0.5); CPU {p['cpu_ratio']}",
    )


def browser(viewport: dict, key: str) -> str:
    """The headless Chromium figure beside curl's, when the run had a browser, with the CPU the
    browser and the server spent per viewport (results from before the harness measured it have
    none)."""
    measured = viewport.get("browser")
    if not isinstance(measured, dict):
        return ""
    prefix = key.removesuffix("p50_ms")  # "" or "cached_"
    cpu = (measured.get(f"{prefix}browser_cpu_ms"), measured.get(f"{prefix}server_cpu_ms"))
    spent = f" (CPU per viewport: browser {cpu[0]} ms, server {cpu[1]} ms)" if None not in cpu else ""
    return f"; headless Chromium p50 {measured[key]} ms{spent}"


def markdown(result: dict) -> str:
    lines = ["| figure | measured | baseline in the same run | ratio / target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(result)]
    loads = ", ".join(f"{name} {e['load_before']}-{e['load_after']}" for name, e in result["measures"].items())
    return "\n".join(
        [
            f"    {result['command']}",
            "",
            f"Commit {result['commit']}, {result['date']}, {result['machine']}, Python {result['python']}, "
            f"{'GPU: ' + result['gpu'] if result.get('gpu') else 'no GPU'}. "
            f"wrk {result['wrk']['threads']} threads, {result['wrk']['connections']} connections, "
            f"{result['wrk']['rounds']} interleaved rounds of {result['wrk']['duration_s']} s per server "
            f"(the median round is shown); every server {result['workers']} uvicorn workers, no Redis. "
            f"Load average (1 min) before-after each measure: {loads}.",
            "",
            *lines,
            "",
        ]
    )


def update_markdown(path: Path, text: str) -> None:
    """Replace the generated block between the markers of BENCHMARKS.md (appended once)."""
    begin, end = "<!-- performance-harness:begin -->", "<!-- performance-harness:end -->"
    doc = path.read_text(encoding="utf-8")
    block = f"{begin}\n{text}{end}"
    if begin in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n## Performance harness\n\n" + block + "\n"
    path.write_text(doc, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REPO / "data/demo/bundle")
    parser.add_argument("--store", type=Path, default=REPO / "data/demo/store")
    parser.add_argument("--duration", type=int, default=4, help="seconds of wrk per server and round")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per server, interleaved")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeat", type=int, default=5, help="samples of search and viewport (x3: hour tile, new-metadata search)"
    )
    parser.add_argument(
        "--only",
        default="warm,cold,hour_tile,floor,hour_http,search,viewport,precompute",
        help="comma-separated measures",
    )
    parser.add_argument(
        "--precompute-baseline",
        default=PRECOMPUTE_BASELINE,
        metavar="REV",
        help=f"the code precompute is compared with (default {PRECOMPUTE_BASELINE}, before issue 13's changes)",
    )
    parser.add_argument(
        "--precompute-baseline-data-dir",
        type=Path,
        metavar="DIR",
        help="demo files REV's own `soundscape demo --build-only` made, so each tree runs its own export's "
        "bundle (default: both run --bundle)",
    )
    parser.add_argument("--precompute-repeats", type=int, default=1, help="runs of each tree, alternated")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/performance.json")
    parser.add_argument("--markdown", type=Path, help="BENCHMARKS.md to write the table into")
    parser.add_argument("--flamegraphs", type=Path, help="directory for py-spy SVGs of warm, cold and hour=")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    for key in [k for k in os.environ if k.startswith("SOUNDSCAPE_")]:
        del os.environ[key]  # no setting of the caller's shell changes a measured server
    args.bundle, args.store = args.bundle.resolve(), args.store.resolve()
    for tool in ("wrk", "curl", *([PY_SPY] if args.flamegraphs else [])):
        if shutil.which(tool) is None:
            sys.exit(
                f"{tool} is not installed (wrk, curl: apt-get install -y wrk curl; py-spy: pip install -e '.[bench]')"
            )
    if args.flamegraphs:
        args.flamegraphs.mkdir(parents=True, exist_ok=True)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    result = {
        **provenance(),
        "python": platform.python_version(),
        "gpu": "onnxruntime's CUDA provider" if "CUDAExecutionProvider" in default_providers() else None,
        "workers": args.workers,
        "redis": None,
        "wrk": {
            "version": wrk_version,
            "threads": 2,
            "connections": args.connections,
            "duration_s": args.duration,
            "rounds": args.rounds,
        },
        "warm_query": WARM_QUERY,
        "bundle": str(args.bundle),
        "store": str(args.store),
        "measures": {},
    }
    with tempfile.TemporaryDirectory() as tiles_dir:
        if args.only & {"warm", "cold", "hour_http", "search", "viewport"} or args.flamegraphs:
            measure_http(args, result, Path(tiles_dir), args.flamegraphs)
    if "hour_tile" in args.only:
        measure_hour_tile(args, result)
    if "floor" in args.only:
        measure_floor(args, result)
    if "precompute" in args.only:
        measure_precompute(args, result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        update_markdown(args.markdown, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""Warm-tile throughput of `soundscape serve --workers 2` on the demo world, side by side with
TiTiler serving the same imagery, loaded by wrk on the same machine (so both numbers are lower
bounds: wrk takes CPU from the servers).

    python benchmarks/server_throughput.py --data-dir data/demo \
        [--titiler-python /tmp/titiler-venv/bin/python] [--duration 15]

TiTiler (titiler.core + uvicorn) is not a project dependency: install it into a throwaway venv
and pass its python. `--redis-restart` serves with Redis and restarts it under load;
`--connections 200` checks 200 concurrent clients. Prints one JSON object: tiles/s, latency
percentiles, non-2xx answers, server memory (RSS of all server processes), ratio to TiTiler.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.service import store_imagery  # noqa: E402
from store.reader import Store  # noqa: E402

# The $URLS file's lines as `urls`: the start of every wrk script of the benchmarks.
READ_URLS = """
local urls = {}
for line in io.lines(os.getenv("URLS")) do urls[#urls + 1] = line end
"""
WRK_SCRIPT = (
    READ_URLS
    + """local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", urls[(i * 7919) % #urls + 1])
end
"""
)
TITILER_APP = """
from fastapi import FastAPI
from titiler.core.factory import TilerFactory
app = FastAPI()
app.include_router(TilerFactory().router, prefix="/cog")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def tile_paths(maxzoom: int) -> list[tuple[int, int, int]]:
    return [(z, x, y) for z in range(maxzoom + 1) for x in range(1 << z) for y in range(1 << z)]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True).stdout
    rows = [tuple(int(v) for v in line.split()) for line in out.splitlines() if line.strip()]
    family, grown = {pid}, True
    while grown:
        grown = False
        for p, pp, _ in rows:
            if pp in family and p not in family:
                family.add(p)
                grown = True
    return round(sum(r for p, _, r in rows if p in family) / 1024, 1)


def run_wrk(
    base: str,
    paths: list[str],
    duration: int,
    connections: int,
    lua: str = WRK_SCRIPT,
    env: dict[str, str] | None = None,
) -> dict:
    """wrk cycling `paths` (or whatever the `lua` script makes of them, with `env`)."""
    with tempfile.TemporaryDirectory() as tmp:
        urls, script = Path(tmp) / "urls.txt", Path(tmp) / "urls.lua"
        urls.write_text("\n".join(paths) + "\n", encoding="utf-8")
        script.write_text(lua, encoding="utf-8")
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), base],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {}), "URLS": str(urls)},
            check=True,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {p: m.group(1) for p in ("50%", "90%", "99%") if (m := re.search(rf"{re.escape(p)}\s+([\d.]+\w+)", out))}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: (.*)", out)
    return {
        "tiles_per_s": rps,
        "latency": latency,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": sockets.group(1) if sockets else "none",
    }


def serve(cmd: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def start_redis(port: int, workdir: str) -> subprocess.Popen:
    proc = serve(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        {},
        Path(workdir),
    )
    wait_port(port)
    return proc


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(port)
        time.sleep(0.05)


def bench_soundscape(
    data: Path, paths: list[str], duration: int, connections: int, redis_restart: bool = False
) -> dict:
    """Warm tiles; with `redis_restart`, Redis is killed a third into the load and restarted
    at two thirds (every response must still be 2xx)."""
    port, redis_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = start_redis(redis_port, tmp) if redis_restart else None
        extra = ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"] if redis_restart else []
        proc = serve(
            [
                sys.executable,
                "-m",
                "cli.main",
                "serve",
                "--bundle",
                str(data / "bundle"),
                "--store",
                str(data / "store"),
                "--port",
                str(port),
                "--workers",
                "2",
                *extra,
            ],
            {},
            REPO,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{base}/healthz")
            for _ in range(4):  # each worker keeps its own LRU: warm both, a new connection per request
                with httpx.Client(base_url=base, timeout=60, headers={"Connection": "close"}) as http:
                    for path in paths:
                        http.get(path).raise_for_status()
            if redis is None:
                result = run_wrk(base, paths, duration, connections)
            else:
                with ThreadPoolExecutor(1) as pool:
                    load = pool.submit(run_wrk, base, paths, duration, connections)
                    time.sleep(duration / 3)
                    stop(redis)
                    time.sleep(duration / 3)
                    redis = start_redis(redis_port, tmp)
                    result = load.result()
            result["server_rss_mb"] = rss_mb(proc.pid)
            return result
        finally:
            stop(proc)
            if redis is not None:
                stop(redis)


def bench_titiler(python: str, imagery: Path, paths: list[str], duration: int, connections: int) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "titiler_app.py").write_text(TITILER_APP, encoding="utf-8")
        proc = serve(
            [
                python,
                "-m",
                "uvicorn",
                "titiler_app:app",
                "--port",
                str(port),
                "--workers",
                "2",
                "--log-level",
                "warning",
            ],
            {},
            Path(tmp),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{base}/docs")
            with httpx.Client(base_url=base, timeout=60) as http:
                for path in paths:
                    http.get(path).raise_for_status()
            result = run_wrk(base, paths, duration, connections)
            result["server_rss_mb"] = rss_mb(proc.pid)
            return result
        finally:
            stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/demo")
    parser.add_argument("--titiler-python", help="python of a venv with titiler.core and uvicorn")
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--maxzoom", type=int, default=4, help="tiles of zooms 0..maxzoom are cycled")
    parser.add_argument(
        "--redis-restart", action="store_true", help="serve with Redis, and kill and restart Redis during the load"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    data = Path(args.data_dir).resolve()
    tiles = tile_paths(args.maxzoom)
    ours = [f"/tiles/{z}/{x}/{y}.png?q=birdsong&hour=6" for z, x, y in tiles]
    result = {
        "tiles": len(tiles),
        "zooms": f"0..{args.maxzoom}",
        "duration_s": args.duration,
        "connections": args.connections,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "redis_restart": args.redis_restart,
        "soundscape": bench_soundscape(data, ours, args.duration, args.connections, args.redis_restart),
    }
    if args.titiler_python:
        imagery = store_imagery(Store(data / "store"))
        if not isinstance(imagery, str):
            sys.exit(f"TiTiler needs one raster; the store's imagery is {imagery!r}")
        theirs = [f"/cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url={imagery}" for z, x, y in tiles]
        result["titiler"] = bench_titiler(args.titiler_python, imagery, theirs, args.duration, args.connections)
        result["ratio"] = round(result["soundscape"]["tiles_per_s"] / result["titiler"]["tiles_per_s"], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

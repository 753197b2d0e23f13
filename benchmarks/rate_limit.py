"""What the rate limit costs a request, kept in each process or shared through Redis, on 127.0.0.1:

1. From outside: three `soundscape serve` (2 workers each, `--trusted-proxies 127.0.0.1`) take
   turns under wrk (2 threads, 32 connections, `--rounds` rounds of `--seconds` s each; the
   median round is reported): no rate limit, a limit kept in each worker, and the same limit kept
   in Redis (SOUNDSCAPE_REDIS_URL). The URLs are 85 tiles of zooms 0-3 of one text, fetched once
   first: warm tiles, the cheapest answer, where the counting weighs most. Twice:
   - 1,000 clients: each request names one of 1,000 addresses in X-Forwarded-For, under
     `50/s burst 100` each, which none reaches: a worker leases 10 of a client's tokens from
     Redis at a time;
   - one client (every request from 127.0.0.1), under `100000/s burst 100`, which refuses nothing
     either: the worst case for Redis, one client's leases asked for one at a time per worker.
2. In process: `Limiter.wait` of one client under `100000/s burst 100`, the process's own buckets
   against Redis's (a script call per lease of 10), microseconds a call, median of 5 runs of
   2,000 calls.

    python benchmarks/rate_limit.py --data-dir data/demo [--json out.json]

Needs wrk and redis-server. BENCHMARKS.md holds a run. About two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hostile import Server, free_port
from load import in_turns
from redis_outage import start_redis
from server_throughput import READ_URLS, WRK_SCRIPT

from benchmarks.provenance import emit, provenance
from server.cache import RedisCache
from server.ratelimit import Limiter, Rate

LIMIT = "100000/s burst 100"
CLIENTS_LIMIT = "50/s burst 100"
TEXT = "birdsong"
WORKERS = 2  # each server's uvicorn workers, as the shared limit is for
# WRK_SCRIPT's spread order of $URLS, each request from one of 1,000 client addresses.
CLIENTS_SCRIPT = (
    READ_URLS
    + """local i = 0
request = function()
  i = i + 1
  local client = (i * 104729) % 1000
  local address = "10.1." .. math.floor(client / 256) .. "." .. (client % 256)
  return wrk.format("GET", urls[(i * 7919) % #urls + 1], {["X-Forwarded-For"] = address})
end
"""
)


def tile_urls() -> list[str]:
    return [f"/tiles/{z}/{x}/{y}.png?q={TEXT}" for z in range(4) for x in range(1 << z) for y in range(1 << z)]


def from_outside(data: Path, tmp: Path, redis_url: str, limit: str, rounds: int, seconds: int, lua: str) -> dict:
    """Requests/s of each server, the median of its rounds, rounds taken in turns."""
    proxy = {"SOUNDSCAPE_TRUSTED_PROXIES": "127.0.0.1"}
    envs = {
        "no rate limit": proxy,
        "limit in each worker": {**proxy, "SOUNDSCAPE_RATE_LIMIT": limit},
        "limit in Redis": {**proxy, "SOUNDSCAPE_RATE_LIMIT": limit, "SOUNDSCAPE_REDIS_URL": redis_url},
    }
    servers = {name: Server(data, tmp, env=env, workers=WORKERS) for name, env in envs.items()}
    return in_turns(servers, tile_urls(), rounds, seconds, 32, lua)


def in_process(redis_url: str, calls: int = 2000, runs: int = 5) -> dict:
    """Microseconds of `Limiter.wait` a call, each way."""
    rate = Rate.parse(LIMIT)
    limits = {
        "limit in the process": Limiter(rate),
        "limit in Redis": Limiter(rate, shared=RedisCache(redis_url, ttl_s=60)),
    }

    async def timed(limit: Limiter) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await limit.wait("203.0.113.7", 1)
        return (time.perf_counter() - start) / calls * 1e6

    async def main() -> dict[str, list[float]]:
        for limit in limits.values():
            await timed(limit)  # warm: the script sent, the connection made
        times: dict[str, list[float]] = {name: [] for name in limits}
        for _ in range(runs):
            for name, limit in limits.items():
                times[name].append(await timed(limit))
        return times

    return {name: round(statistics.median(got), 1) for name, got in asyncio.run(main()).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="a demo world: bundle/ and store/")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per server, taken in turns")
    parser.add_argument("--seconds", type=int, default=4, help="length of a wrk round")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        port = free_port()
        redis = start_redis(port, tmp)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            result = {
                **provenance(),
                "workers": WORKERS,
                "load_before": os.getloadavg()[0],
                "in_process_us": in_process(url),
                "http_1000_clients": from_outside(
                    args.data_dir, tmp, url, CLIENTS_LIMIT, args.rounds, args.seconds, CLIENTS_SCRIPT
                ),
                "http_one_client": from_outside(args.data_dir, tmp, url, LIMIT, args.rounds, args.seconds, WRK_SCRIPT),
                "load_after": os.getloadavg()[0],
            }
        finally:
            redis.terminate()
            redis.wait(timeout=10)
    emit(result, args.json)


if __name__ == "__main__":
    main()

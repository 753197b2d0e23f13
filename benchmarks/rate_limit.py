"""What the rate limit costs a request, kept in each process or shared through Redis, on 127.0.0.1:

1. From outside: three `soundscape serve` (2 workers each) take turns under wrk (2 threads, 32
   connections, `--rounds` rounds of `--seconds` s each; the median round is reported): no rate
   limit, a limit kept in each worker, and the same limit kept in Redis (SOUNDSCAPE_REDIS_URL).
   The limit refills too fast to refuse anything (100,000/s), so every request pays for the
   counting alone; its burst of 100 makes a worker lease 10 tokens from Redis at a time (one
   round trip per 10 requests, as under the docs' "20/s burst 100"). The URLs are 85 tiles of
   zooms 0-3 of one text, fetched once first: warm tiles, the cheapest answer, where the
   counting weighs most.
2. In process: `RateLimit.wait` of one client, the process's own buckets against Redis's
   (a script call per lease of 10), microseconds a call, median of 5 runs of 2,000 calls.

    python benchmarks/rate_limit.py --data-dir data/demo [--json out.json]

Needs wrk and redis-server. BENCHMARKS.md holds a run. About a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hostile import Server, free_port
from load import in_turns
from redis_outage import start_redis

from server.cache import RedisCache
from server.ratelimit import Rate, RateLimit

LIMIT = "100000/s burst 100"
TEXT = "birdsong"


def tile_urls() -> list[str]:
    return [f"/tiles/{z}/{x}/{y}.png?q={TEXT}" for z in range(4) for x in range(1 << z) for y in range(1 << z)]


def from_outside(data: Path, tmp: Path, redis_url: str, rounds: int, seconds: int) -> dict:
    """Requests/s of each server, the median of its rounds, rounds taken in turns."""
    envs = {
        "no rate limit": {},
        "limit in each worker": {"SOUNDSCAPE_RATE_LIMIT": LIMIT},
        "limit in Redis": {"SOUNDSCAPE_RATE_LIMIT": LIMIT, "SOUNDSCAPE_REDIS_URL": redis_url},
    }
    servers = {name: Server(data, tmp, env=env) for name, env in envs.items()}
    return in_turns(servers, tile_urls(), rounds, seconds, 32)


def in_process(redis_url: str, calls: int = 2000, runs: int = 5) -> dict:
    """Microseconds of `RateLimit.wait` a call, each way."""
    rate = Rate.parse(LIMIT)
    limits = {
        "limit in the process": RateLimit(app=None, rate=rate),  # type: ignore[arg-type]
        "limit in Redis": RateLimit(app=None, rate=rate, shared=RedisCache(redis_url, ttl_s=60)),  # type: ignore[arg-type]
    }

    async def timed(limit: RateLimit) -> float:
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
                "command": " ".join(["python", "benchmarks/rate_limit.py", *sys.argv[1:]]),
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "load_before": os.getloadavg()[0],
                "in_process_us": in_process(url),
                "http": from_outside(args.data_dir, tmp, url, args.rounds, args.seconds),
                "load_after": os.getloadavg()[0],
            }
        finally:
            redis.terminate()
            redis.wait(timeout=10)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

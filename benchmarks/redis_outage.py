"""Redis killed and restarted under load (issue 11), on 127.0.0.1 only:

A real `soundscape serve` with Redis (started here the way docker-compose.yml runs it: append-only
file, `volatile-lru`) takes 16 clients for `--seconds`: tiles of several queries and hours, and
every tenth request a `POST /queries` of a new text. Redis is killed (SIGKILL) a third of the way
in and started again (same port, same folder) at two thirds. Then a second replica with a registry
file of its own and the same Redis resolves every id the first answered 201: a query lost in the
outage would be a 404 there.

    python benchmarks/redis_outage.py --data-dir data/demo [--seconds 30] [--json out.json]

docs/reliability.md holds a run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import Server, free_port

QUERIES = ("birdsong", "rain", "traffic", "waves%20on%20the%20shore")


def start_redis(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            shutil.which("redis-server"),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory",
            "256mb",
            "--maxmemory-policy",
            "volatile-lru",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}", timeout=0.2)
        except httpx.RemoteProtocolError:
            return proc  # something speaks on the port (not HTTP): Redis is up
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def client(base: str, worker: int, stop: threading.Event, results: list, registered: list) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        i = 0
        while not stop.is_set():
            i += 1
            start = time.perf_counter()
            if i % 10 == 0:
                r = http.post("/queries", json={"text": f"outage sound {worker}-{i}"})
                if r.status_code == 201:
                    registered.append(r.json()["id"])
            else:
                z = 1 + i % 4
                x, y = (i * 7) % (1 << z), (i * 3) % (1 << z)
                r = http.get(f"/tiles/{z}/{x}/{y}.png?q={QUERIES[i % 4]}&hour={(worker + i) % 24}")
            results.append((time.perf_counter() - start, r.status_code))


def run(data: Path, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        redis = start_redis(port, tmp)
        env = {"SOUNDSCAPE_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        server = Server(data, tmp, env=env)
        results: list[tuple[float, int]] = []
        registered: list[str] = []
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(server.base, w, stop, results, registered)) for w in range(16)]
        try:
            for t in threads:
                t.start()
            time.sleep(seconds / 3)
            redis.kill()
            redis.wait()
            killed_at = len(results)
            time.sleep(seconds / 3)
            restarted_at = len(results)
            redis = start_redis(port, tmp)
            time.sleep(seconds / 3)
            stop.set()
            for t in threads:
                t.join(60)
            time.sleep(5)  # the registry's retry shares what was registered during the outage
            replica = Server(data, tmp, env=env)  # its own (empty) registry file: ids come from Redis
            try:
                with httpx.Client(base_url=replica.base, timeout=30) as http:
                    lost = [qid for qid in registered if http.get(f"/queries/{qid}").status_code != 200]
            finally:
                replica.stop()
        finally:
            stop.set()
            server.stop()
            redis.kill()
    statuses = [status for _, status in results]
    times = sorted(t for t, _ in results)
    return {
        "seconds": seconds,
        "requests": len(results),
        "non_2xx": sum(not 200 <= s < 300 for s in statuses),
        "during_outage": restarted_at - killed_at,
        "registered": len(registered),
        "lost": len(lost),
        "p50_ms": round(statistics.median(times) * 1000, 1),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data/demo"), help="holds bundle/ and store/")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load (default 30)")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    result = run(args.data_dir, args.seconds)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

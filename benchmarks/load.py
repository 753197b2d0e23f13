"""Load on a real `soundscape serve` (one worker, shipped defaults) on 127.0.0.1:

1. 200 clients for 60 s (wrk, keep-alive) over a mix of tiles (heatmap for a few texts, with and
   without an hour, and uncertainty), TileJSON, point profiles and default-metadata search:
   errors, p50/p99, requests/s, and the server's RSS averaged over the first and the last 20 s.
   Every URL of the mix is fetched once first, so the memory compared is not the caches filling.
2. Others under attack, 10 s each, 20 clients: no attack, 300 slow clients trickling one header
   line a second (reconnecting when closed), then 4 senders of 100 MB headers (reconnecting when
   refused): the 20 clients' p50/p99 and errors. Against `soundscape serve`, and as the baseline
   against the same app under plain uvicorn (`uvicorn --http httptools`, its defaults).

    python benchmarks/load.py --data-dir /work/demo-data [--json out.json] [--overhead]

`--overhead` then runs both servers side by side, 20 clients, 3 interleaved rounds of 8 s each
with no attack: what the limits cost (median round of each).

Needs wrk (apt-get install wrk). docs/reliability.md holds a run. About two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
from hostile import Server
from server_throughput import WRK_SCRIPT  # wrk fetching the URLs of $URLS in a spread order


def paths() -> list[str]:
    """The request mix: mostly tiles (what a map asks for), a few of each other read."""
    out = []
    for q in ("birdsong", "waves%20on%20the%20shore", "traffic", "rain"):
        for z in range(4):
            for x in range(1 << z):
                for y in range(1 << z):
                    out.append(f"/tiles/{z}/{x}/{y}.png?q={q}")
                    out.append(f"/tiles/{z}/{x}/{y}.png?q={q}&hour={(x + y) % 24}")
    out += [f"/tiles/{z}/{x}/{y}.png?layer=uncertainty" for z in range(4) for x in range(1 << z) for y in range(1 << z)]
    out += [f"/tilejson.json?q={q}" for q in ("birdsong", "traffic")] * 5
    out += [f"/point/{lon},{lat}?q=birdsong" for lon, lat in ((2.3, 48.8), (-70, -20), (100, 30), (20, 0))] * 3
    out += [f"/search?q={q}&k=20" for q in ("birdsong", "traffic", "rain")] * 3
    return out


def wrk(base: str, urls: list[str], seconds: int, connections: int, lua: str = WRK_SCRIPT) -> dict:
    """wrk over `urls` (the `lua` script reads them from $URLS): requests/s, p50, p99, errors."""
    with tempfile.TemporaryDirectory() as tmp:
        listing, script = Path(tmp) / "urls.txt", Path(tmp) / "mix.lua"
        listing.write_text("\n".join(urls) + "\n", encoding="utf-8")
        script.write_text(lua, encoding="utf-8")
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(script),
                base,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "URLS": str(listing)},
            check=True,
        ).stdout
    latency = {p: m.group(1) for p in ("50%", "99%") if (m := re.search(rf"\s{re.escape(p)}\s+([\d.]+\w+)", out))}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency.get("50%"),
        "p99": latency.get("99%"),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0),
    }


class RssSampler:
    def __init__(self, server: Server, every_s: float = 0.5):
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(server, every_s), daemon=True)
        self.thread.start()

    def run(self, server: Server, every_s: float) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - start, server.rss_mb()))
            time.sleep(every_s)

    def mean(self, lo: float, hi: float) -> float:
        got = [m for t, m in self.samples if lo <= t < hi]
        return round(sum(got) / len(got), 1)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class Attack:
    """Threads that keep attacking with `attack(port, stop)` until stopped."""

    def __init__(self, port: int, threads: int, attack):
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=attack, args=(port, self.stop), daemon=True) for _ in range(threads)]
        for w in self.workers:
            w.start()

    def close(self) -> None:
        self.stop.set()
        for w in self.workers:
            w.join(15)


def slow_client(port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
                while not stop.is_set():
                    s.sendall(b"X-Slow: 1\r\n")
                    time.sleep(1)
        except OSError:
            pass  # closed by the header timeout: reconnect


def big_header(port: int, stop: threading.Event) -> None:
    chunk = b"a" * (1 << 20)
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                for _ in range(100):
                    s.sendall(chunk)
        except OSError:
            pass  # refused with 431 and closed: send another


def attacks(server: Server, urls: list[str]) -> dict:
    """20 clients' latency with no attack, under slow clients, under big headers (10 s each)."""
    others = {}
    for name, threads, attack in (
        ("no attack", 0, None),
        ("300 slow clients", 300, slow_client),
        ("4 senders of 100 MB headers", 4, big_header),
    ):
        running = Attack(server.port, threads, attack) if attack else None
        time.sleep(2 if attack else 0)
        others[name] = wrk(server.base, urls, 10, 20)
        if running:
            running.close()
        print(name, json.dumps(others[name]), flush=True)
    return others


def in_turns(
    servers: dict[str, Server], urls: list[str], rounds: int, seconds: int, connections: int, lua: str = WRK_SCRIPT
) -> dict:
    """Every URL fetched once from each server (warm), then wrk rounds on each in turn, so the
    servers meet the same load over time; the median round of each. Stops the servers."""
    try:
        for server in servers.values():
            with httpx.Client(base_url=server.base, timeout=120) as client, ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda path: client.get(path).status_code, urls))
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, server in servers.items():
                runs[name].append(wrk(server.base, urls, seconds, connections, lua))
        return {name: sorted(got, key=lambda r: r["per_s"])[len(got) // 2] for name, got in runs.items()}
    finally:
        for server in servers.values():
            server.stop()


def overhead(data: Path, tmp: Path, urls: list[str], rounds: int = 3, seconds: int = 8) -> dict:
    """Hardened and plain servers alternately under the same load; the median round of each."""
    servers = {"soundscape serve": Server(data, tmp), "plain uvicorn": Server(data, tmp, plain=True)}
    return in_turns(servers, urls, rounds, seconds, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "demo")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--overhead", action="store_true", help="also measure what the limits cost")
    args = parser.parse_args()
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
    }
    urls = paths()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(args.data_dir, Path(tmp))
        try:
            with httpx.Client(base_url=server.base, timeout=120) as client, ThreadPoolExecutor(4) as pool:
                warm = list(pool.map(lambda path: client.get(path).status_code, urls))
            results["warm_up_non_200"] = sum(code != 200 for code in warm)
            rss = RssSampler(server)
            load = wrk(server.base, urls, args.seconds, args.clients)
            rss.close()
            window = min(20, args.seconds // 3)
            load.update(
                rss_first_mb=rss.mean(0, window),
                rss_last_mb=rss.mean(args.seconds - window, args.seconds + 1),
                rss_max_mb=max(m for _, m in rss.samples),
                distinct_urls=len(urls),
            )
            results["load"] = {"clients": args.clients, "seconds": args.seconds, **load}
            print(json.dumps(results["load"]), flush=True)
            results["others_under_attack"] = {"soundscape serve": attacks(server, urls)}
            results["server_rss_mb_end"] = round(server.rss_mb(), 1)
        finally:
            server.stop()
        plain = Server(args.data_dir, Path(tmp), plain=True)
        try:
            with httpx.Client(base_url=plain.base, timeout=120) as client, ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda path: client.get(path).status_code, urls))
            results["others_under_attack"]["plain uvicorn"] = attacks(plain, urls)
        finally:
            plain.stop()
        if args.overhead:
            results["overhead"] = overhead(args.data_dir, Path(tmp), urls)
            print("overhead", json.dumps(results["overhead"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

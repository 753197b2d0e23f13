"""Hostile requests against a real `soundscape serve` on 127.0.0.1, each with what it should get
and what it got, while a bystander client keeps fetching a warm tile (its median and worst
latency during each case show whether others are still served). Then damaged copies of the
store against `store verify` and `serve`. docs/reliability.md holds a run.

    python benchmarks/hostile.py --data-dir /work/demo-data [--json out.json]

The data directory holds `bundle/` and `store/` (the demo world: `soundscape demo` builds it in
data/demo). The server runs with the shipped defaults except a 5 s body timeout (60 s shipped),
so the slow-body case ends quickly; a second server with `--rate-limit "20/s burst 40"` takes
the rate-limit case. Nothing leaves 127.0.0.1; the run takes about two minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import soundfile

REPO = Path(__file__).resolve().parent.parent
WARM_TILE = "/tiles/2/2/1.png?q=birdsong"
BODY_TIMEOUT_S = 5


# A server and a bystander ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`soundscape serve` in its own process group on a free loopback port, `workers` uvicorn
    workers; `plain`: the same app under uvicorn's own httptools protocol and defaults (the
    baseline the hardening is measured against)."""

    def __init__(self, data: Path, tmp: Path, env: dict[str, str] | None = None, plain: bool = False, workers: int = 1):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDSCAPE_")}
        command = ["-m", "cli.main", "serve", "--bundle", str(data / "bundle"), "--store", str(data / "store")]
        if plain:
            command = [
                "-m",
                "uvicorn",
                "--factory",
                "server.asgi:create_app_from_env",
                "--http",
                "httptools",
                "--log-level",
                "warning",
            ]
        self.proc = subprocess.Popen(
            [sys.executable, *command, "--port", str(self.port), "--workers", str(workers)],
            env={
                **clean,
                "SOUNDSCAPE_QUERY_DB": str(tmp / f"queries-{self.port}.sqlite"),
                "SOUNDSCAPE_BUNDLE": str(data / "bundle"),
                "SOUNDSCAPE_STORE": str(data / "store"),
                **(env or {}),
            },
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.3)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text(encoding="utf-8")
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=30)


class Bystander:
    """Fetches a warm tile in a loop on its own keep-alive connection; latencies per window."""

    def __init__(self, base: str):
        self.client = httpx.Client(base_url=base, timeout=30)
        self.samples: list[tuple[float, float, int]] = []  # (start, seconds, status)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                status = self.client.get(WARM_TILE).status_code
            except httpx.HTTPError:
                status = 0
            self.samples.append((start, time.perf_counter() - start, status))
            time.sleep(0.05)

    def window(self, since: float) -> dict:
        got = [(s, st) for t, s, st in self.samples if t >= since]
        if not got:
            return {"p50_ms": None, "max_ms": None, "failed": 0, "n": 0}
        times = [s for s, _ in got]
        return {
            "p50_ms": round(statistics.median(times) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1),
            "failed": sum(st != 200 for _, st in got),
            "n": len(got),
        }

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.client.close()


# Hostile inputs ------------------------------------------------------------------------------------


def wav(rate: int, channels: int = 1, frames: int = 100) -> bytes:
    """A PCM WAV of silence whose header declares any rate and channel count (244 bytes at 1 ch)."""
    data = bytes(frames * channels * 2)
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * 2) & 0xFFFFFFFF, (channels * 2) & 0xFFFF, 16)
    return b"".join(
        [
            b"RIFF",
            struct.pack("<I", 36 + len(data)),
            b"WAVE",
            b"fmt ",
            struct.pack("<I", 16),
            fmt,
            b"data",
            struct.pack("<I", len(data)),
            data,
        ]
    )


def flac(rate: int, channels: int, seconds: float, tone: bool = False) -> bytes:
    frames = int(rate * seconds)
    wave = np.zeros((frames, channels), np.int16)
    if tone:
        wave += (3000 * np.sin(np.arange(frames) / rate * 2 * np.pi * 440)).astype(np.int16)[:, None]
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="FLAC")
    return buf.getvalue()


def raw(port: int, data: bytes | Callable[[socket.socket], None], timeout: float = 30) -> tuple[str, float]:
    """Send bytes (or run a sender) on a new connection; the status line the server answered
    ('closed' for none) and the seconds until it closed."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        answer = b""
        try:
            data(s) if callable(data) else s.sendall(data)
            while chunk := s.recv(65536):
                answer += chunk
        except (ConnectionResetError, BrokenPipeError):
            answer = answer or b"HTTP/1.1 reset"
    line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    status = line.split(" ", 2)[1] if line.startswith("HTTP/") else "closed"
    return status, time.perf_counter() - start


def post(base: str, body: bytes, content_type: str, host: str | None = None) -> httpx.Response:
    headers = {"Content-Type": content_type, **({"Host": host} if host else {})}
    return httpx.post(f"{base}/queries", content=body, headers=headers, timeout=120)


def statuses(responses: list[httpx.Response]) -> str:
    counts: dict[int, int] = {}
    for r in responses:
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
    return ", ".join(f"{n}x {code}" for code, n in sorted(counts.items()))


def fusions(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    m = re.search(r'soundscape_compute_total\{kind="fusion"\} ([\d.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def big_header(port: int, megabytes: int) -> tuple[str, float]:
    def send(s: socket.socket) -> None:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        for _ in range(megabytes):
            s.sendall(chunk)
        s.sendall(b"\r\n\r\n")

    return raw(port, send)


def slow_head(port: int) -> tuple[str, float]:
    def send(s: socket.socket) -> None:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(60):
            s.sendall(b"X-Slow: 1\r\n")
            time.sleep(1)

    return raw(port, send, timeout=90)


def get_all(urls: list[str]) -> list[httpx.Response]:
    """GET every URL at once, one thread each."""
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(lambda url: httpx.get(url, timeout=120), urls))


def many(n: int, fn: Callable[[], object]) -> list:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def idle_connections(port: int, n: int) -> tuple[str, float]:
    """Open n connections that say nothing, then ask for /healthz on one more."""
    opened = []
    try:
        for _ in range(n):
            opened.append(socket.create_connection(("127.0.0.1", port)))
        return raw(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    finally:
        for s in opened:
            s.close()


def bad_parameters(n: int) -> str:
    """A query string of n bad values of a tile's parameters (each name given many times, with a
    value it refuses) and n names the route does not take."""
    bad = {"hour": "99", "month": "0", "source": "x", "layer": "x", "rescale": "x", "tilesize": "x", "q": "%FF"}
    names = list(bad)
    return "&".join(
        [f"{names[i % len(names)]}={bad[names[i % len(names)]]}" for i in range(n)] + [f"u{i}=1" for i in range(n)]
    )


def refusal(r: httpx.Response) -> str:
    """A 422's status, how many sentences its detail holds and how long it is."""
    detail = r.json().get("detail", "")
    return f"{r.status_code}, {detail.count('; ') + 1} sentences in {len(detail)} characters"


def cases(server: Server) -> list[tuple[str, str, Callable[[], str]]]:
    """(case, expected, run -> what it got)."""
    base, port = server.base, server.port

    def one(r: httpx.Response) -> str:
        detail = r.json().get("detail", "") if r.headers.get("content-type", "").endswith("json") else ""
        return f"{r.status_code}" + (f" `{detail[:110]}`" if r.status_code >= 400 else "")

    search = [
        f"{base}/search?q=birdsong&hour={h}&month={m}&level=7"
        for h, m in ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 1), (15, 3))
    ]
    exact = [f"{base}/search?q=birdsong&hour={h}&month={1 + h % 12}&level=7&exact=true" for h in range(24)]
    tiles_512 = [
        f"{base}/tiles/WebMercatorQuad/1/{i % 2}/{i // 4}.png?q=birdsong&tilesize=512&hour={i}&month={i + 1}"
        for i in range(8)
    ]
    return [
        (
            "244-byte WAV declaring 1,000,003 Hz",
            "422 at once, no memory",
            lambda: one(post(base, wav(1_000_003), "audio/wav")),
        ),
        ("two of them at once", "2x 422", lambda: statuses(many(2, lambda: post(base, wav(1_000_003), "audio/wav")))),
        ("WAV declaring 2^31-1 Hz", "422", lambda: one(post(base, wav(2**31 - 1), "audio/wav"))),
        ("WAV declaring 65,535 channels", "415 or 422", lambda: one(post(base, wav(16000, 65535, 1), "audio/wav"))),
        (
            "FLAC, 3 s at 384 kHz x 8 channels (10 kB)",
            "413 (samples)",
            lambda: one(post(base, flac(384000, 8, 3), "audio/flac")),
        ),
        (
            "FLAC, 1 h of silence at 8 kHz (0.2 MB)",
            "413 (duration)",
            lambda: one(post(base, flac(8000, 1, 3600), "audio/flac")),
        ),
        ("11 MB body", "413", lambda: one(post(base, bytes(11 << 20), "audio/wav"))),
        (
            "FLAC, 59 s of 48 kHz stereo (a legitimate maximum)",
            "201",
            lambda: one(post(base, flac(48000, 2, 59, tone=True), "audio/flac")),
        ),
        (
            "JSON nested 4000 levels",
            "422",
            lambda: one(post(base, b'{"text": ' + b"[" * 4000 + b"]" * 4000 + b"}", "application/json")),
        ),
        (
            "JSON text with a lone surrogate",
            "422",
            lambda: one(post(base, b'{"text": "\\udc80 birds"}', "application/json")),
        ),
        ("JSON text an object", "422", lambda: one(post(base, b'{"text": {"a": 1}}', "application/json"))),
        (
            "JSON number of 5000 digits",
            "422",
            lambda: one(post(base, b'{"text": ' + b"9" * 5000 + b"}", "application/json")),
        ),
        (
            "8 uploads whose bodies take 3 s, and a 9th",
            "201 for all: the 9th at once (a body still arriving holds no decoding place); of the 8, "
            "arriving together, 4 decode at once and 4 wait",
            lambda: slow_uploads(port),
        ),
        (
            "JSON body of 100 kB",
            "413",
            lambda: one(post(base, b'{"text": "' + b"a" * 100_000 + b'"}', "application/json")),
        ),
        (
            "tile q= a lone surrogate (%ED%A0%80)",
            "not a 500",
            lambda: one(httpx.get(f"{base}/tiles/1/1/0.png?q=%ED%A0%80")),
        ),
        (
            "20 kB query string",
            "414",
            lambda: raw(port, f"GET /tiles/1/1/0.png?q={'a' * 20000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())[0],
        ),
        (
            "15 kB query string: 1,000 bad values of the tile's parameters, 1,000 names it does not take",
            "one 422 naming each bad parameter once (at most 4096 characters)",
            lambda: refusal(httpx.get(f"{base}/tiles/1/1/0.png?{bad_parameters(1000)}")),
        ),
        (
            "100 MB header",
            "431 and closed at once (a sender still sending sees a reset)",
            lambda: "{} after {:.2f} s".format(*big_header(port, 100)),
        ),
        (
            "500 header lines",
            "431",
            lambda: raw(
                port,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(500)) + b"\r\n",
            )[0],
        ),
        (
            "50 slow heads, one header line a second",
            "408 and closed after 10 s (a sender still sending sees a reset)",
            lambda: statuses_raw(many(50, lambda: slow_head(port))),
        ),
        (
            "slow body: 10 of 1000 declared bytes",
            f"408 after {BODY_TIMEOUT_S} s",
            lambda: "{} after {:.1f} s".format(
                *raw(
                    port,
                    b"POST /queries HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                    b'{"text": ',
                )
            ),
        ),
        (
            "100,000 pipelined requests in one write (4 MB)",
            "dropped after 33 at most, no memory",
            lambda: pipelined(port, 100_000),
        ),
        (
            "1100 idle connections, then a request",
            "503 (one address past 64 once 512 are open; cap 1024)",
            lambda: "{} after {:.2f} s".format(*idle_connections(port, 1100)),
        ),
        (
            "TileJSON with Host: evil.example",
            "400",
            lambda: one(httpx.get(f"{base}/tilejson.json?q=birdsong", headers={"Host": "evil.example"})),
        ),
        (
            "WMTS with Host: evil.example",
            "400",
            lambda: one(httpx.get(f"{base}/WMTSCapabilities.xml?q=birdsong", headers={"Host": "evil.example"})),
        ),
        (
            "POST /queries with Host: evil.example",
            "400",
            lambda: one(post(base, b'{"text": "birdsong"}', "application/json", "evil.example")),
        ),
        (
            "TileJSON with Host: 127.0.0.1",
            "200, Vary: Host",
            lambda: (lambda r: f"{r.status_code}, Vary: {r.headers.get('vary')}")(
                httpx.get(f"{base}/tilejson.json?q=birdsong")
            ),
        ),
        (
            "8 x /search level 7, distinct hour+month, at once",
            "8x 200 (each fuses its 1,536 candidates; they wait their turn, 12,288 cells in all, within the "
            "fusion queue's 65,536)",
            lambda: statuses(get_all(search)),
        ),
        (
            "24 x /search level 7 exact=true (16,384 cells each), distinct hour+month, at once",
            "in a worker one fuses and 4 wait (65,536 cells), the rest 503 at once: at least 5x 200 (more where "
            "the other worker takes some, or a fusion ends before the last arrives)",
            lambda: statuses(get_all(exact)),
        ),
        (
            "8 x a 512 px tile, each another hour+month",
            "8x 200 (a colour scale's sample is a small fusion)",
            lambda: statuses(get_all(tiles_512)),
        ),
        (
            "8 x the same /search at once",
            "8x 200, one fusion",
            lambda: (lambda f0, rs, f1: f"{statuses(rs)}, {f1 - f0:.0f} fusion(s)")(
                fusions(base),
                many(8, lambda: httpx.get(search[0].replace("hour=1", "hour=20"), timeout=120)),
                fusions(base),
            ),
        ),
    ]


def pipelined(port: int, n: int) -> str:
    answers = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * n)
            while chunk := s.recv(1 << 20):
                answers += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    return f"{answers.count(b'HTTP/1.1 200')} answered, then closed"


def slow_uploads(port: int) -> str:
    """8 uploads send half a WAV and wait 3 s; meanwhile one more upload is sent whole."""
    body = wav(16000, frames=16000)
    head = (
        b"POST /queries HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/wav\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )

    def slow() -> str:
        def send(s: socket.socket) -> None:
            s.sendall(head + body[:100])
            time.sleep(3)
            s.sendall(body[100:])

        return raw(port, send)[0]

    with ThreadPoolExecutor(8) as pool:
        trickling = [pool.submit(slow) for _ in range(8)]
        time.sleep(1)
        extra = raw(port, head + body)[0]
        return f"9th: {extra}; the 8: {', '.join(sorted(f.result() for f in trickling))}"


def statuses_raw(results: list[tuple[str, float]]) -> str:
    codes = sorted({s for s, _ in results})
    return (
        ", ".join(f"{sum(s == c for s, _ in results)}x {c}" for c in codes)
        + f" after {min(t for _, t in results):.1f}-{max(t for _, t in results):.1f} s"
    )


def rate_limit_case(data: Path, tmp: Path) -> dict:
    server = Server(data, tmp, {"SOUNDSCAPE_RATE_LIMIT": "20/s burst 40"})
    try:
        with httpx.Client(base_url=server.base, timeout=30) as client:
            start = time.perf_counter()
            answers = [client.get("/colormaps") for _ in range(200)]
            seconds = time.perf_counter() - start
        refused = [r for r in answers if r.status_code == 429]
        return {
            "case": "200 requests as fast as one client can, limit '20/s burst 40'",
            "expected": "about 40 + 20/s, the rest 429 + Retry-After",
            "got": f"{statuses(answers)} in {seconds:.1f} s; "
            f"Retry-After {refused[0].headers.get('retry-after') if refused else '-'}",
            "detail": refused[0].json()["detail"] if refused else "",
        }
    finally:
        server.stop()


# Damaged stores ------------------------------------------------------------------------------------


def damaged_store_cases(data: Path, tmp: Path) -> list[dict]:
    def flip(path: Path, offset: int) -> None:
        b = bytearray(path.read_bytes())
        b[offset] ^= 0xFF
        path.write_bytes(bytes(b))

    def manifest(store: Path, change: Callable[[dict], None]) -> None:
        m = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
        change(m)
        (store / "manifest.json").write_text(json.dumps(m), encoding="utf-8")

    damages = {
        "flipped byte in levels/07/mu.npy": lambda s: flip(s / "levels/07/mu.npy", -1001),
        "flipped byte in the header of levels/05/s.npy": lambda s: flip(s / "levels/05/s.npy", 25),
        "levels/06/index.faiss truncated by 1 kB": lambda s: (s / "levels/06/index.faiss").write_bytes(
            (s / "levels/06/index.faiss").read_bytes()[:-1024]
        ),
        "levels/04/fusions/hour-06.mu.npy truncated": lambda s: (s / "levels/04/fusions/hour-06.mu.npy").write_bytes(
            (s / "levels/04/fusions/hour-06.mu.npy").read_bytes()[:-64]
        ),
        "manifest without id": lambda s: manifest(s, lambda m: m.pop("id")),
        "all S of level 7 NaN": lambda s: (s / "levels/07/s.npy").write_bytes(
            (s / "levels/07/s.npy").read_bytes()[:128] + np.full(16384, np.nan, np.float32).tobytes()
        ),
    }
    rows = []
    for name, damage in damages.items():
        store = tmp / "damaged" / re.sub(r"\W+", "-", name)
        shutil.copytree(data / "store", store)
        damage(store)
        answers = {}
        for command in (
            ["store", "verify", str(store)],
            ["serve", "--bundle", str(data / "bundle"), "--store", str(store), "--port", str(free_port())],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "cli.main", *command],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "SOUNDSCAPE_QUERY_DB": str(tmp / "q.sqlite")},
            )
            answers[command[0]] = (done.returncode, done.stderr.strip().replace(str(store) + "/", ""))
        rows.append(
            {
                "damage": name,
                "expected": "exit 2, one sentence naming the file",
                "verify": answers["store"],
                "serve": answers["serve"],
            }
        )
        shutil.rmtree(store)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="run only the request cases whose name holds TEXT (no rate-limit or damaged-store cases); default: all",
    )
    args = parser.parse_args()
    results: dict = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "requests": [],
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = Server(args.data_dir, tmp, {"SOUNDSCAPE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)})
        try:
            httpx.get(server.base + WARM_TILE, timeout=60)
            bystander = Bystander(server.base)
            time.sleep(2)
            results["bystander_idle"] = bystander.window(0)
            for case, expected, run in cases(server):
                if args.only and args.only not in case:
                    continue
                rss, since = server.rss_mb(), time.perf_counter()
                try:
                    got = run()
                except Exception as exc:  # noqa: BLE001 - a crash of the case is a result to report
                    got = f"client error: {exc!r}"[:120]
                row = {
                    "case": case,
                    "expected": expected,
                    "got": got,
                    "seconds": round(time.perf_counter() - since, 2),
                    "rss_delta_mb": round(server.rss_mb() - rss, 1),
                    "bystander": bystander.window(since),
                }
                results["requests"].append(row)
                print(json.dumps(row), flush=True)
            bystander.close()
            results["server_rss_mb_end"] = round(server.rss_mb(), 1)
        finally:
            server.stop()
        if not args.only:
            results["rate_limit"] = rate_limit_case(args.data_dir, tmp)
            print(json.dumps(results["rate_limit"]), flush=True)
            results["damaged_stores"] = damaged_store_cases(args.data_dir, tmp)
            for row in results["damaged_stores"]:
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(markdown(results))


def markdown(results: dict) -> str:
    """The tables of docs/reliability.md."""
    rows = [
        "| case | expected | got | s | RSS MB | bystander p50 / max ms (failed of n) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["requests"]:
        b = r["bystander"]
        seen = f"{b['p50_ms']:.0f} / {b['max_ms']:.0f} ({b['failed']} of {b['n']})" if b["n"] else ""
        rows.append(
            f"| {r['case']} | {r['expected']} | {r['got']} | {r['seconds']} | {r['rss_delta_mb']:+g} | {seen} |"
        )
    if "rate_limit" not in results:  # --only
        return "\n".join(rows)
    limit = results["rate_limit"]
    rows.append(f"| {limit['case']} (a second server) | {limit['expected']} | {limit['got']} | | | |")
    rows += ["", "| damage | `store verify` | `serve` |", "|---|---|---|"]
    for d in results["damaged_stores"]:
        rows.append(
            f"| {d['damage']} | exit {d['verify'][0]}: `{d['verify'][1]}` | exit {d['serve'][0]}: `{d['serve'][1]}` |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

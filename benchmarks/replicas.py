"""Two server replicas on one Redis behind the caching proxy of docker-compose.yml's `replicas`
profile (issue 15), on 127.0.0.1 only, without a container engine: a redis-server as compose runs
it, two `soundscape serve` processes, and the real nginx with docker/nginx.conf (`proxy_config`
points its replica lines at them and its files at a temporary folder; tests/test_replicas.py runs
the same).

Four clients fetch `--tiles` distinct PNG tiles (zooms 3-6, four text queries) through the proxy
(misses: each rendered by whichever replica nginx picks), the same tiles through it again (proxy
hits), then every tile straight from the second replica (about half rendered by the first: Redis
hits there). Reported: each replica's start time and RSS after start and after the load, Redis
memory, renders per replica after each pass, and the hit share and latency of each pass.

    python benchmarks/replicas.py --data-dir data/demo [--tiles 1000] [--json out.json]

docs/scale.md (Replicas) holds a run.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostile import Server, free_port
from redis_outage import start_redis

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO / "docker" / "nginx.conf"
# The replica lines of docker/nginx.conf's upstream: one per compose replica service, on port 8000.
UPSTREAM_LINE = re.compile(r"^(\s*server )([\w.-]+):8000( [^;]*)?;$", re.MULTILINE)
QUERIES = ("birdsong", "rain", "traffic", "waves on the shore")
CLIENTS = 4


def nginx_binary() -> str | None:
    """nginx on PATH or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def proxy_config(upstreams: list[str], port: int, root: Path) -> Path:
    """docker/nginx.conf as it runs outside its container: its replica lines pointed at `upstreams`
    (host:port), listening on 127.0.0.1:`port`, with its cache, logs and temporary files under
    `root`, inside a main config of its own (the image's nginx.conf holds `events` and `http`)."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    lines = UPSTREAM_LINE.findall(text)
    if len(lines) < 2:
        raise ValueError("docker/nginx.conf names fewer than two replicas")
    first = UPSTREAM_LINE.search(text)
    assert first is not None
    replicas = "\n".join(f"{first[1]}{address}{first[3] or ''};" for address in upstreams)
    text = text[: first.start()] + replicas + UPSTREAM_LINE.sub("", text[first.end() :])
    for old, new in (("listen 8080;", f"listen 127.0.0.1:{port};"), ("/var/cache/nginx/", f"{root}/cache/")):
        if text.count(old) != 1:
            raise ValueError(f"docker/nginx.conf no longer holds {old!r} once")
        text = text.replace(old, new)
    (root / "cache").mkdir(parents=True, exist_ok=True)  # as the image's /var/cache/nginx
    (root / "soundscape.conf").write_text(text, encoding="utf-8")
    main = root / "nginx.conf"
    temp_paths = "".join(
        f"  {kind}_temp_path {root}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        # Workers run as the caller (root's default worker user, nobody, may not enter `root`).
        (f"user {getpass.getuser()};\n" if os.geteuid() == 0 else "")
        + f"pid {root}/nginx.pid;\nerror_log {root}/error.log warn;\nworker_processes 1;\n"
        + "events { worker_connections 256; }\nhttp {\n"
        + f"  access_log {root}/access.log;\n{temp_paths}  include {root}/soundscape.conf;\n}}\n",
        encoding="utf-8",
    )
    return main


@contextlib.contextmanager
def proxy(upstreams: list[str], root: Path) -> Iterator[str]:
    """The real nginx with docker/nginx.conf in front of `upstreams`; yields its base URL.
    RuntimeError when nginx is missing or refuses the config."""
    exe, port = nginx_binary(), free_port()
    if exe is None:
        raise RuntimeError("nginx is not installed: apt-get install -y nginx-light")
    config = proxy_config(upstreams, port, root)
    check = subprocess.run([exe, "-t", "-p", str(root), "-c", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx refuses the config: {check.stderr.strip()}")
    proc = subprocess.Popen([exe, "-p", str(root), "-c", str(config), "-g", "daemon off;"])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(
                        f"nginx did not start: {(root / 'error.log').read_text(encoding='utf-8')}"
                    ) from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def counter(base: str, name: str, **labels: str) -> float:
    """A counter's value in a replica's /metrics (0 when that series was never counted)."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_total" and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def tile_urls(count: int) -> list[str]:
    """`count` distinct tile URLs over zooms 3-6 and four queries, in a fixed order."""
    urls = []
    for z in range(3, 7):
        for x in range(1 << z):
            for y in range(1 << z):
                for q in QUERIES:
                    urls.append(f"/tiles/{z}/{x}/{y}.png?q={q.replace(' ', '%20')}")
    step = max(1, len(urls) // count)
    return urls[::step][:count]


def fetch_all(base: str, urls: list[str]) -> tuple[list[float], list[str]]:
    """(seconds, X-Cache-Status) of each URL, fetched by CLIENTS keep-alive clients."""

    def fetch(chunk: list[str]) -> list[tuple[float, str]]:
        out = []
        with httpx.Client(base_url=base, timeout=60) as http:
            for url in chunk:
                start = time.perf_counter()
                r = http.get(url)
                if r.status_code != 200:
                    raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:200]}")
                out.append((time.perf_counter() - start, r.headers.get("x-cache-status", "")))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [item for part in pool.map(fetch, [urls[i::CLIENTS] for i in range(CLIENTS)]) for item in part]
    return [t for t, _ in results], [s for _, s in results]


def redis_used_mb(port: int) -> float:
    info = subprocess.run(
        [shutil.which("redis-cli") or "redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True
    ).stdout
    found = re.search(r"used_memory:(\d+)", info)
    assert found is not None, info
    return round(int(found[1]) / 2**20, 2)


def _pass(times: list[float], statuses: list[str]) -> dict:
    ordered = sorted(times)
    return {
        # Only the proxy says HIT or MISS: None for a pass that went to a replica directly.
        "proxy_hit_share": round(statuses.count("HIT") / len(statuses), 3) if any(statuses) else None,
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 2),
    }


def run(data: Path, tiles: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        redis_port = free_port()
        redis_proc = start_redis(redis_port, tmp)
        env = {"SOUNDSCAPE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
        replicas: list[Server] = []
        try:
            starts = []
            for _ in range(2):
                began = time.perf_counter()
                replicas.append(Server(data, tmp, env=env))
                starts.append(round(time.perf_counter() - began, 1))
            rss_started = [round(r.rss_mb()) for r in replicas]
            redis_before = redis_used_mb(redis_port)
            urls = tile_urls(tiles)
            passes, renders = {}, {}
            with proxy([r.base.removeprefix("http://") for r in replicas], tmp / "nginx") as front:
                for name, base in (("proxy_miss", front), ("proxy_hit", front), ("direct_second_replica", None)):
                    passes[name] = _pass(*fetch_all(base or replicas[1].base, urls))
                    renders[name] = [counter(r.base, "soundscape_compute", kind="render") for r in replicas]
            return {
                "tiles": len(urls),
                "replica_start_s": starts,
                "replica_rss_mb_started": rss_started,
                "replica_rss_mb_after": [round(r.rss_mb()) for r in replicas],
                "redis_used_mb_before_after": [redis_before, redis_used_mb(redis_port)],
                "passes": passes,
                "renders_per_replica_after": renders,
            }
        finally:
            for replica in replicas:
                replica.stop()
            redis_proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data/demo"), help="holds bundle/ and store/")
    parser.add_argument("--tiles", type=int, default=1000, help="distinct tiles per pass (default 1000)")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    result = run(args.data_dir, args.tiles)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Server replicas sharing one Redis, behind the caching proxy of docker-compose.yml's `replicas`
profile (docker/nginx.conf), run here without a container engine: two real uvicorn servers
(`soundscape serve`) on loopback ports, a real redis-server, and the real nginx with the compose
file's config, its replica addresses and paths rewritten (benchmarks/replicas.py `proxy_config`).

A tile rendered by one replica is a Redis hit on the other (its render counter does not move); a
query registered on one resolves on the other from the durable record, even once the evictable
embedding cache entry is gone; the proxy caches what the server allows and nothing else."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import soundfile

from benchmarks import replicas as replicas_bench
from benchmarks.replicas import counter, nginx_binary
from server import registry
from tests.conftest import free_port
from tests.server_support import LAND_TILE, live_server, make_client

TILE = "/tiles/{}/{}/{}.png".format(*LAND_TILE)


def renders(base: str) -> float:
    return counter(base, "soundscape_compute", kind="render")


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


@pytest.fixture
def replicas(bundle_path, store_path, redis_server, tmp_path) -> Iterator[tuple[str, str, Path, Path]]:
    """Two replicas on one Redis, each with a registry file of its own (as on two hosts):
    (base URL of A, of B, A's registry file, B's)."""
    dbs = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with contextlib.ExitStack() as stack:
        a, b = (
            stack.enter_context(
                live_server(bundle_path, store_path, redis_url=redis_server, args=("--query-db", str(db)))
            )
            for db in dbs
        )
        yield a, b, *dbs


@pytest.mark.slow  # two servers start
def test_a_tile_rendered_by_one_replica_is_served_by_the_other(replicas, redis_server):
    a, b, _, _ = replicas
    params = {"q": "a tile for two replicas"}
    first = httpx.get(a + TILE, params=params, timeout=60)
    assert first.status_code == 200 and renders(a) == 1
    key = f"st:tile:{first.headers['etag'].strip(chr(34))}"
    assert redis.Redis.from_url(redis_server).exists(key), "replica A did not write the tile to the shared Redis"

    second = httpx.get(b + TILE, params=params, timeout=60)
    assert second.status_code == 200
    assert (second.content, second.headers["etag"]) == (first.content, first.headers["etag"])
    assert renders(b) == 0, "replica B rendered a tile replica A had rendered"
    assert counter(b, "soundscape_cache", cache="tile", result="hit") == 1
    assert counter(b, "soundscape_compute", kind="text_encoding") == 0


@pytest.mark.slow  # two servers start
def test_a_query_registered_on_one_replica_resolves_on_the_other(replicas, redis_server):
    a, b, _, b_db = replicas
    audio = httpx.post(f"{a}/queries", content=wav_bytes(), headers={"Content-Type": "audio/wav"}, timeout=60)
    text = httpx.post(f"{a}/queries", json={"text": "rain on a tin roof"}, timeout=60)
    assert audio.status_code == text.status_code == 201, (audio.text, text.text)
    ids = [audio.json()["id"], text.json()["id"]]
    # The embeddings are cache entries with a TTL, which Redis may evict (volatile-lru): B must find
    # the records without them, in the durable store (keys without a TTL).
    shared = redis.Redis.from_url(redis_server)
    for qid in ids:
        assert shared.ttl(f"st:registered:{qid}") == -1
        shared.delete(f"st:query:{qid}")

    for qid, registered in zip(ids, (audio, text), strict=True):
        resolved = httpx.get(f"{b}/queries/{qid}", timeout=60)
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["id"] == qid and resolved.json()["kind"] == registered.json()["kind"]
        tile = httpx.get(b + TILE, params={"query": qid}, timeout=60)
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"
    assert counter(b, "soundscape_compute", kind="audio_encoding") == 0  # B never heard the upload
    with contextlib.closing(sqlite3.connect(b_db)) as db:  # and keeps a copy, should Redis lose it
        assert {row[0] for row in db.execute("SELECT id FROM queries")} == set(ids)
    assert httpx.get(f"{b}/queries/{'0' * 16}", timeout=30).status_code == 404


def test_a_replica_that_cannot_ask_redis_says_retry_not_unknown(bundle_path, store_path, tmp_path):
    """An id missing from this replica's file while Redis is down may be another replica's: 503
    with Retry-After (not cached), never a 404 that tells a saved link it is dead. What the file
    holds still resolves."""
    down = f"redis://127.0.0.1:{free_port()}/0"
    with make_client(bundle_path, store_path, redis_url=down, query_db=str(tmp_path / "b.sqlite")) as replica:
        for path, params in ((f"/queries/{'1' * 16}", {}), (TILE, {"query": "1" * 16})):
            answer = replica.get(path, params=params)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5", answer.text
            assert answer.headers["cache-control"] == "no-store" and "Redis" in answer.json()["detail"]
        kept = replica.post("/queries", json={"text": "kept in the file while redis is down"})
        assert kept.status_code == 201
        assert replica.get(f"/queries/{kept.json()['id']}").status_code == 200


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_records_redis_lost_are_shared_again(bundle_path, store_path, redis_server, tmp_path, monkeypatch):
    """After a FLUSHALL (or a Redis restarted without persistence) a record the registering
    replica had shared was never pushed again: every other replica answered 404 for good, and
    /readyz said the queries were durable."""
    monkeypatch.setattr(registry, "WATCH_S", 0.1)
    shared = redis.Redis.from_url(redis_server)
    a, b = (str(tmp_path / f"{name}.sqlite") for name in "ab")
    with make_client(bundle_path, store_path, redis_url=redis_server, query_db=a) as one:
        qid = one.post("/queries", json={"text": "frogs croaking by a pond"}).json()["id"]
        assert wait_until(lambda: shared.exists(registry.HELD_MARKER))
        shared.flushall()
        assert wait_until(lambda: shared.exists(registry.REDIS_PREFIX + qid)), "shared again"
        with make_client(bundle_path, store_path, redis_url=redis_server, query_db=b) as other:
            assert other.get(f"/queries/{qid}").status_code == 200
        assert one.get("/readyz").json()["queries"] == "durable"
        shared.set("filler", b"x" * 2_000_000)
        shared.config_set("maxmemory-policy", "noeviction")
        shared.config_set("maxmemory", "1mb")  # full: every write refused
        assert one.post("/queries", json={"text": "rain on a tin roof"}).status_code == 201
        assert one.get("/readyz").json()["queries"].startswith("1 not yet in redis")


# --- Through the proxy ------------------------------------------------------------------------


@contextlib.contextmanager
def proxy(upstreams: list[str], root: Path) -> Iterator[str]:
    """benchmarks/replicas.py's nginx with docker/nginx.conf; skipped only where nginx is absent."""
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx-light; scripts/test.sh does)")
    with replicas_bench.proxy(upstreams, root) as base:
        yield base


def _address(base: str) -> str:
    return base.removeprefix("http://")


@pytest.mark.slow  # two servers start
def test_the_proxy_caches_what_the_server_allows(replicas, tmp_path):
    a, b, _, _ = replicas
    with proxy([_address(a), _address(b)], tmp_path / "nginx") as front:
        params = {"q": "behind the proxy"}
        miss = httpx.get(front + TILE, params=params, timeout=60)
        hit = httpx.get(front + TILE, params=params, timeout=60)
        assert (miss.status_code, miss.headers["x-cache-status"]) == (200, "MISS")
        assert (hit.status_code, hit.headers["x-cache-status"]) == (200, "HIT")
        assert hit.content == miss.content and hit.headers["etag"] == miss.headers["etag"]
        assert renders(a) + renders(b) == 1
        tile_requests = sum(counter(r, "soundscape_requests", route="/tiles/{z}/{x}/{y}.png") for r in (a, b))
        assert tile_requests == 1, "the second request reached a replica"

        # A client's If-None-Match is answered from the cached ETag.
        again = httpx.get(front + TILE, params=params, headers={"If-None-Match": miss.headers["etag"]}, timeout=60)
        assert (again.status_code, again.headers["x-cache-status"]) == (304, "HIT")

        # The viewer's pages (no-cache) are never stored; their If-None-Match reaches a replica.
        page = httpx.get(f"{front}/", timeout=60)
        revalidated = httpx.get(f"{front}/", headers={"If-None-Match": page.headers["etag"]}, timeout=60)
        assert page.headers["cache-control"] == "no-cache" and revalidated.status_code == 304
        assert "HIT" not in {page.headers.get("x-cache-status"), revalidated.headers.get("x-cache-status")}

        # Errors and live answers (no-store) are never cached: each reaches a replica.
        for path, status in (("/tiles/3/4/2.png?q=rain&hour=25", 422), ("/healthz", 200), ("/metrics", 200)):
            answers = [httpx.get(front + path, timeout=60) for _ in range(2)]
            assert [r.status_code for r in answers] == [status, status], answers[0].text
            assert "HIT" not in {r.headers.get("x-cache-status") for r in answers}, path

        # One variant per Host: a TileJSON's URLs are those of the host it was asked under.
        for host in ("127.0.0.1", "localhost", "127.0.0.1"):
            tilejson = httpx.get(f"{front}/tilejson.json", params=params, headers={"Host": f"{host}:8080"}, timeout=60)
            assert tilejson.status_code == 200, tilejson.text
            assert tilejson.json()["tiles"][0].startswith(f"http://{host}:8080/"), tilejson.json()["tiles"]
        assert tilejson.headers["x-cache-status"] == "HIT"

        # One variant per Accept-Encoding: a client that asks for no compression never gets gzip.
        wmts = f"{front}/WMTSCapabilities.xml"
        zipped = httpx.get(wmts, params=params, headers={"Accept-Encoding": "gzip"}, timeout=60)
        plain = httpx.get(wmts, params=params, headers={"Accept-Encoding": "identity"}, timeout=60)
        assert zipped.status_code == plain.status_code == 200
        assert zipped.headers.get("content-encoding") == "gzip" and "content-encoding" not in plain.headers
        assert plain.content.startswith(b"<?xml") and plain.text == zipped.text

        # A query registered through the proxy (POST is never cached) resolves through it, on
        # whichever replica answers, and its tiles are cached like any other.
        registered = httpx.post(f"{front}/queries", json={"text": "frogs after rain"}, timeout=60)
        assert registered.status_code == 201 and registered.headers.get("x-cache-status") != "HIT"
        qid = registered.json()["id"]
        statuses = [httpx.get(front + TILE, params={"query": qid}, timeout=60) for _ in range(2)]
        assert [(r.status_code, r.headers["x-cache-status"]) for r in statuses] == [(200, "MISS"), (200, "HIT")]
        for replica in (a, b):
            assert httpx.get(f"{replica}/queries/{qid}", timeout=60).status_code == 200

        # Uncached requests are spread over both replicas.
        for _ in range(4):
            httpx.get(f"{front}/healthz", timeout=30)
        assert all(counter(r, "soundscape_requests", route="/healthz") >= 2 for r in (a, b))


def test_the_proxy_answers_its_own_errors_in_the_server_shape(tmp_path):
    """No replica up: 503 with one sentence, Retry-After and no-store (never a cached HTML page);
    a body over the proxy's limit: 413 in the same shape."""
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with proxy(dead, tmp_path / "nginx") as front:
        down = httpx.get(front + TILE, params={"q": "rain"}, timeout=60)
        assert down.status_code == 503 and down.headers["retry-after"] == "5"
        assert down.headers["cache-control"] == "no-store" and "replica" in down.json()["detail"]
        large = httpx.post(
            f"{front}/queries", content=b"\0" * (13 * 1024 * 1024), headers={"Content-Type": "audio/wav"}, timeout=60
        )
        assert large.status_code == 413 and "12 MB" in large.json()["detail"]

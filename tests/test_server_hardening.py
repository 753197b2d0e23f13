"""A server on the open internet: every size, cost and header a client controls is bounded
(docs/reliability.md). Audio and JSON limits, allowed hosts and the public URL, the rate limit and
bounded whole-level fusion go through the ASGI app; header size, header and body timeouts and the
connection cap through a real `soundscape serve` on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import redis
import soundfile

from benchmarks.hostile import wav
from runtime.audio import MAX_RESAMPLE_FACTOR, resample, resample_ratio
from server import maps
from server.commands import redis_note, workers_note
from server.queries import MAX_DECODED_SAMPLES, QueryError
from server.ratelimit import Limiter, Rate, TokenBuckets, address_key, client_key
from server.service import Budget
from server.settings import Settings
from server.urls import host_allowed, host_name
from tests.conftest import free_port
from tests.server_support import (
    REPO,
    beside_stalled_uploads,
    concurrent_gets,
    live_server,
    make_client,
    patient_redis,
    serve_command,
)


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    with make_client(bundle_path, store_path) as client:
        yield client


def flac_silence(rate: int, channels: int, seconds: float) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((int(rate * seconds), channels), np.int16), rate, format="FLAC")
    return buf.getvalue()


def post_audio(client, body: bytes):
    return client.post("/queries", content=body, headers={"Content-Type": "audio/wav"})


# Audio ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (wav(1_000_003), 422, "1000003 Hz"),  # a 244-byte file: 0.9 GB and 4 s to resample exactly
        (wav(2**31 - 1), 422, "accepted rates are 8000 to 384000"),
        (wav(4000), 422, "4000 Hz"),
        (wav(16000, channels=9), 422, "9 channels"),
        (flac_silence(16000, 1, 90), 413, "90.0 s long"),  # a minute and a half in a few kB
        (flac_silence(384000, 8, 3), 413, "samples (frames x channels)"),  # 3 s, but 9.2 M samples
    ],
)
def test_audio_header_limits_refuse_before_decoding(client, body, status, needle):
    start = time.perf_counter()
    r = post_audio(client, body)
    assert (r.status_code, needle in r.json()["detail"]) == (status, True), r.text
    assert time.perf_counter() - start < 1.0


def test_audio_at_the_edges_of_the_limits_is_accepted(client):
    # 44,099 and 44,105 Hz: within 0.4 cent of the bundle's 44,100, not resampled (its filter's
    # design refused a cutoff of 1: a 500)
    for rate, channels in ((8000, 1), (383_987, 1), (44_100, 8), (44_099, 1), (44_105, 2)):
        seconds = min(2.0, MAX_DECODED_SAMPLES / (rate * channels) - 0.1)
        buf = io.BytesIO()
        wave = 0.1 * np.sin(np.arange(int(seconds * rate)) / rate * 2 * np.pi * 440)
        soundfile.write(buf, np.repeat(wave[:, None], channels, axis=1).astype(np.float32), rate, format="WAV")
        r = post_audio(client, buf.getvalue())
        assert r.status_code == 201, r.text
        assert r.json()["sample_rate"] == rate


def test_resampling_between_coprime_rates_is_bounded_and_in_tune():
    up, down = resample_ratio(383_987, 44_100)
    assert max(up, down) <= MAX_RESAMPLE_FACTOR
    assert up / down == pytest.approx(44_100 / 383_987, rel=1e-5)
    assert resample_ratio(48_000, 44_100) == (147, 160)  # usual rates stay exact
    for near in (44_095, 44_099, 44_101, 44_105):  # nearest ratio 1/1: the clip as it is
        assert resample_ratio(near, 44_100) == (1, 1)
        wave = np.linspace(-1, 1, 1000, dtype=np.float32)
        np.testing.assert_array_equal(resample(wave, near, 44_100), wave)
    for rate in (8000, 22_051, 44_090, 48_001, 383_987):
        up, down = resample_ratio(rate, 44_100)
        assert abs(up / down - 44_100 / rate) < 44_100 / rate / MAX_RESAMPLE_FACTOR
    rate = 1_000_003
    tone = np.sin(2 * np.pi * 1000 * np.arange(rate // 10) / rate).astype(np.float32)
    start = time.perf_counter()
    out = resample(tone, rate, 16_000)
    assert time.perf_counter() - start < 1.0
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) * 16_000 / len(out) == pytest.approx(1000, abs=15)


# JSON -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b'{"text": ' + b"[" * 4000 + b"]" * 4000 + b"}", 422, "nests deeper"),  # json.loads: RecursionError
        (b'{"text": "\\ud800 birds"}', 422, "lone surrogate"),
        (b'{"text": 42}', 422, '{"text": "..."}'),
        (b'["text"]', 422, '{"text": "..."}'),
        (b'{"text": "' + b"a" * 9000 + b'"}', 422, "at most 8192 characters, not 9000"),  # q='s bound as sent
        (b'{"text": "' + b"a" * 100_000 + b'"}', 413, "limit"),
        (b'{"text": "' + b'\\"' * 40_000 + b'"}', 422, "at most 8192 characters"),  # escapes: one scan
        (b'{"text": "' + b'"\\' * 40_000 + b'"}', 422, "not valid JSON"),  # nor a quadratic one
        (b'{"text": "\xff"}', 422, "not valid JSON"),
        (b'{"text": ' + b"9" * 5000 + b"}", 422, "not valid JSON"),  # int() refuses over 4300 digits
    ],
)
def test_malformed_json_answers_4xx(client, body, status, needle):
    r = client.post("/queries", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


def test_brackets_inside_the_text_are_not_nesting(client):
    r = client.post("/queries", json={"text": "[[[[[[[[[[birds]]]]]]]]]] {{{{{{{{{{"})
    assert r.status_code == 201, r.text


# Hosts and URLs ---------------------------------------------------------------------------------


def test_host_names_and_patterns():
    assert host_name("[::1]:8000") == "::1" and host_name("Example.org:80") == "example.org"
    assert host_name("::1") == "::1"
    allowed = ("localhost", ".example.org")
    assert host_allowed("localhost:8000", allowed) and host_allowed("tiles.example.org", allowed)
    assert host_allowed("example.org", allowed)
    assert not host_allowed("evilexample.org", allowed) and not host_allowed("", allowed)
    assert host_allowed("anything", ("*",))


URL_ROUTES = [
    "/tilejson.json?layer=uncertainty",
    "/WebMercatorQuad/tilejson.json?layer=uncertainty",
    "/WMTSCapabilities.xml",
    "/WebMercatorQuad/WMTSCapabilities.xml",
]


@pytest.mark.parametrize("path", URL_ROUTES)
def test_a_host_outside_the_allowed_hosts_gets_400_not_a_cached_url(client, path):
    evil = client.get(path, headers={"Host": "evil.example"})
    assert evil.status_code == 400 and "allowed hosts" in evil.json()["detail"]
    assert evil.headers["cache-control"] == "no-store"
    good = client.get(path, headers={"Host": "localhost:8000"})
    assert good.status_code == 200
    assert "http://localhost:8000/tiles/" in good.text and "evil" not in good.text
    assert "host" in good.headers["vary"].lower()


def test_posted_query_links_use_only_allowed_hosts(client):
    evil = client.post("/queries", json={"text": "birdsong"}, headers={"Host": "evil.example"})
    assert evil.status_code == 400
    good = client.post("/queries", json={"text": "birdsong"}, headers={"Host": "127.0.0.1:9"})
    assert good.status_code == 201 and good.headers["location"].startswith("http://127.0.0.1:9/queries/")
    got = client.get(good.headers["location"].removeprefix("http://127.0.0.1:9"), headers={"Host": "evil.example"})
    assert got.status_code == 400


@pytest.mark.parametrize("path, location", [("/colormaps/", "/colormaps"), ("/static", "/static/")])
def test_redirects_never_echo_the_host(client, path, location):
    r = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == location


def test_public_url_is_used_for_every_absolute_url(bundle_path, store_path):
    public = "https://tiles.example.org/soundscape"
    with make_client(bundle_path, store_path, public_url=public + "/") as client:
        for path in URL_ROUTES:
            r = client.get(path, headers={"Host": "evil.example"})
            assert r.status_code == 200 and "evil" not in r.text and f"{public}/tiles/" in r.text
            assert "host" not in r.headers.get("vary", "").lower()  # the body no longer depends on it
        posted = client.post("/queries", json={"text": "birdsong"}, headers={"Host": "evil.example"})
        assert posted.headers["location"] == f"{public}/queries/{posted.json()['id']}"
        assert all(link.startswith(public) for link in posted.json()["links"].values())


# Rate limit -------------------------------------------------------------------------------------


def test_rate_specs():
    assert Rate.parse("20/s burst 100") == Rate(20.0, 100)
    assert Rate.parse("600/min") == Rate(10.0, 10)
    assert Rate.parse("0.5/s") == Rate(0.5, 1)
    assert Rate.parse("20/s burst 100 delay 2") == Rate(20.0, 100, 2.0)
    assert Rate.parse("5/s delay 0.5s") == Rate(5.0, 5, 0.5)
    for bad in ("fast", "20", "0/s", "20/h", "-1/s", "20/s delay", "20/s delay -1", "20/s delay 2 burst 5"):
        with pytest.raises(ValueError, match="not like"):
            Rate.parse(bad)
    with pytest.raises(ValueError, match="at most 30 s, not 31"):
        Rate.parse("20/s burst 100 delay 31")


def test_a_delay_lets_requests_over_the_burst_wait_for_their_tokens_up_to_it():
    buckets = TokenBuckets(Rate(2.0, 3, delay_s=1.0), max_clients=100)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == pytest.approx(0.5)  # waits half a second: its token is spent now
    assert buckets.take("a", now=0.0) == pytest.approx(1.0)  # behind it
    assert buckets.take("a", now=0.0) == pytest.approx(1.5)  # past the delay: refused, nothing spent
    assert buckets.take("a", now=0.0) == pytest.approx(1.5)
    assert buckets.take("a", now=1.0) == pytest.approx(0.5)  # the two waiting have had their tokens


def test_admit_lets_a_request_go_waits_within_the_delay_or_refuses_spending_nothing():
    """What the middleware and the front door of cache hits ask alike: None once the request may
    go (at once, or after sleeping its wait within the delay), else its wait, nothing spent."""
    limiter = Limiter(Rate(2.0, 2, delay_s=0.6))

    async def scenario() -> tuple[list[float | None], float, float | None]:
        answers = [await limiter.admit("a", 1) for _ in range(2)]  # the burst: at once
        began = time.monotonic()
        answers.append(await limiter.admit("a", 1))  # a token 0.5 s away: waits for it
        waited = time.monotonic() - began
        return answers, waited, await limiter.admit("a", 2)  # 1 s away, past the delay

    answers, waited, refused = asyncio.run(scenario())
    assert answers == [None, None, None] and waited >= 0.45
    assert refused is not None and 0.6 < refused <= 1.0
    assert limiter.buckets.take("a", now=time.monotonic()) <= 0.6, "the refused request spent nothing"


def test_token_bucket_refills_and_its_table_is_bounded():
    buckets = TokenBuckets(Rate(2.0, 3), max_clients=100)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == pytest.approx(0.5)  # the next token in half a second
    assert buckets.take("a", now=0.5) == 0.0
    assert buckets.take("b", now=0.5) == 0.0  # another client has its own bucket
    for i in range(1000):
        buckets.take(f"client-{i}", now=1.0)
    assert len(buckets.buckets) == 100


def test_a_costly_request_spends_its_cost_but_never_more_than_a_burst():
    buckets = TokenBuckets(Rate(1.0, 20), max_clients=100)
    assert buckets.take("a", now=0.0, cost=16) == 0.0
    assert buckets.take("a", now=0.0, cost=16) == pytest.approx(12.0)  # 4 tokens left: 12 s to 16
    assert buckets.take("a", now=0.0) == 0.0  # a one-token request still fits
    assert buckets.take("b", now=0.0, cost=500) == 0.0  # capped at the burst: a full bucket lets it through
    assert buckets.take("b", now=0.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("path", "query", "cost"),
    [
        ("/tiles/3/4/2.png", b"width=2048&height=2048", 1),
        ("/collections/contrast/map", b"q=birdsong&width=256&height=256", 1),
        ("/collections/contrast/map", b"q=birdsong&width=800&height=600", 12),
        ("/collections/contrast/map", b"q=birdsong", 16),  # sides left out: 1024 each
        ("/collections/contrast/map", b"wid%74h=2048&height=2048", 64),  # decoded as the route decodes it
        ("/collections/contrast/map", b"width=99999&height=1", 8),  # malformed: the largest side
        ("/collections/contrast/map", b"&".join([b"x=1"] * 200), 64),  # too many fields: the largest map
    ],
)
def test_a_map_costs_one_token_per_256_pixels_square(path, query, cost):
    assert maps.request_cost({"type": "http", "path": path, "query_string": query}) == cost


def test_a_map_spends_the_rate_limit_as_the_tiles_it_draws(bundle_path, store_path):
    with make_client(bundle_path, store_path, rate_limit="1/min burst 20") as client:
        big = client.get("/collections/uncertainty/map?width=1024&height=1024")  # 16 tokens
        small = client.get("/collections/uncertainty/map?width=256&height=256")  # 1
        assert big.status_code == small.status_code == 200
        over = client.get("/collections/uncertainty/map?width=1024&height=1000")  # 3 left, 16 asked
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 60 * 12
        again = client.get("/collections/uncertainty/map?width=1024&height=1024")  # replayed: 1 token a MiB
        assert again.status_code == 200 and again.content == big.content and len(big.content) < 2**20
        assert client.get("/colormaps").status_code == 200  # a one-token request still goes


def test_a_burst_over_the_limit_waits_within_the_delay_and_is_refused_past_it(bundle_path, store_path):
    """10 requests at once under 2 a second, 2 a burst, 1 s of delay: 2 go at once, 2 wait for
    their tokens (0.5 and 1 s), the rest are refused at once. Requests a loaded box starts late
    meet a fuller bucket: by time t at most 2 + 2 (t + 1) can have gone."""
    with make_client(bundle_path, store_path, rate_limit="2/s burst 2 delay 1") as client:
        began = time.monotonic()
        answers = concurrent_gets(client.app, "/colormaps", [{"n": i} for i in range(10)])
        elapsed = time.monotonic() - began
    served = sum(a.status_code == 200 for a in answers)
    assert {a.status_code for a in answers} == {200, 429}
    assert 4 <= served <= 4 + 2 * elapsed and elapsed >= 0.95, (served, elapsed)
    refused = next(a for a in answers if a.status_code == 429)
    assert "more waiting up to 1 s" in refused.json()["detail"] and int(refused.headers["retry-after"]) >= 1


@pytest.mark.parametrize("redis_server", ["system", "6.2"], indirect=True)
def test_replicas_sharing_redis_count_a_client_once(bundle_path, store_path, redis_server):
    """Two apps (two workers or replicas) with one Redis: a client's fifth request is refused by
    whichever it reaches, where each alone would let four through. The bucket expires once full."""
    replicas = [make_client(bundle_path, store_path, rate_limit="1/min burst 4", redis_url=redis_server) for _ in "ab"]
    with replicas[0] as one, replicas[1] as two:
        codes = [client.get("/colormaps").status_code for client in (one, two, one, two, one, two)]
    assert codes == [200, 200, 200, 200, 429, 429]
    bucket = redis.Redis.from_url(redis_server)
    [key] = bucket.keys("st:rate:*")
    assert 0 < bucket.pttl(key) <= 241_000, "refilled after 4 minutes, then forgotten"


def test_replicas_lease_a_tenth_of_a_burst_and_never_let_a_client_past_it(bundle_path, store_path, redis_server):
    """Under a burst of 40 each replica takes 4 tokens from Redis at a time: a client alternating
    between two gets its 40 requests, then 429s, in about 20 round trips rather than 50."""
    stats = redis.Redis.from_url(redis_server)
    replicas = [make_client(bundle_path, store_path, rate_limit="1/min burst 40", redis_url=redis_server) for _ in "ab"]
    with replicas[0] as one, replicas[1] as two:
        one.get("/healthz"), two.get("/healthz")  # started; probes are never limited
        stats.config_resetstat()
        codes = [client.get("/colormaps").status_code for _ in range(25) for client in (one, two)]
    calls = sum(v["calls"] for k, v in stats.info("commandstats").items() if k.startswith("cmdstat_eval"))
    assert codes == [200] * 40 + [429] * 10
    assert calls <= 24, calls


def test_a_burst_of_one_client_leases_once_at_a_time(bundle_path, store_path, redis_server):
    """30 requests at once under a burst of 40: each leasing 4 tokens at once would take them all
    after ten and refuse the rest; one lease at a time per client serves all 30."""
    with make_client(bundle_path, store_path, rate_limit="1/min burst 40", redis_url=redis_server) as client:
        answers = concurrent_gets(client.app, "/colormaps", [{"n": i} for i in range(30)])
    assert [a.status_code for a in answers] == [200] * 30


def test_the_shared_bucket_spends_and_waits_as_a_process_own(bundle_path, store_path, redis_server):
    """The Redis script is TokenBuckets.take: the same waits for the same takes at one instant.
    A slow refill (a token in 50 s), so a loaded box's pauses between the takes move nothing."""
    rate = Rate(0.02, 3, delay_s=100.0)
    local = TokenBuckets(rate)
    limit = Limiter(rate, shared=patient_redis(redis_server))

    async def takes() -> list[float]:
        return [await limit.wait("a", cost) for cost in (1, 1, 1, 1, 1, 1, 1, 5)]

    expected = [local.take("a", now=0.0, cost=cost) for cost in (1, 1, 1, 1, 1, 1, 1, 5)]
    assert asyncio.run(takes()) == pytest.approx(expected, rel=0.01, abs=0.05)  # Redis's clock moves a little
    assert expected == pytest.approx([0, 0, 0, 50, 100, 150, 150, 250]), "waits, spent up to 100 s; a cost capped at 3"


def test_a_rate_limit_holds_per_process_while_redis_is_down(bundle_path, store_path, redis_server):
    with make_client(bundle_path, store_path, rate_limit="1/min burst 2", redis_url=redis_server) as client:
        assert client.get("/colormaps").status_code == 200
        with contextlib.suppress(redis.ConnectionError):
            redis.Redis.from_url(redis_server).shutdown(nosave=True)
        codes = [client.get("/colormaps").status_code for _ in range(3)]
    assert codes == [200, 200, 429], "a fresh bucket in this process, then refused: never a 5xx nor unlimited"


def test_workers_of_one_server_share_its_limit_through_redis(bundle_path, store_path, redis_server):
    """A real `soundscape serve --workers 2`: each request on a new connection, which either
    worker may accept; three go through, whichever took them."""
    args = ("--rate-limit", "1/min burst 3")
    with live_server(bundle_path, store_path, workers=2, redis_url=redis_server, args=args) as url:
        codes = [httpx.get(f"{url}/colormaps", timeout=30).status_code for _ in range(8)]
    assert codes == [200] * 3 + [429] * 5


def test_serve_says_when_workers_count_a_rate_limit_apart(bundle_path, store_path):
    def note(workers: int, **options) -> str | None:
        return workers_note(Settings(bundle=str(bundle_path), store=str(store_path), **options), workers)

    assert "up to 2 times '20/s burst 100'" in note(2, rate_limit="20/s burst 100")
    assert note(2) == "note: without --redis-url each worker has its own tile cache"
    assert note(2, rate_limit="20/s", redis_url="redis://127.0.0.1:6379/0") is None
    assert note(1, rate_limit="20/s") is None


def test_serve_says_when_redis_does_not_answer_as_it_starts(redis_server):
    """It serves all the same (computing what it would read there), so a wrong --redis-url went
    unseen: now a line says so, naming where Redis was asked but not the URL's password."""
    nowhere = f"redis://:secret@127.0.0.1:{free_port()}/0"
    said = redis_note(nowhere)
    assert said is not None and said.startswith("note: Redis at 127.0.0.1:") and "does not answer" in said
    assert "secret" not in said
    assert redis_note(redis_server) is None and redis_note(None) is None


def test_client_keys():
    assert client_key({"client": ("203.0.113.7", 5)}) == "203.0.113.7"
    assert client_key({"client": ("2001:db8::1", 5)}) == client_key({"client": ("2001:db8::ffff", 5)})
    assert client_key({"client": ("::ffff:203.0.113.7", 5)}) == "203.0.113.7"
    # What X-Forwarded-For names is kept as it is, cut to 64 characters, and never cached whole
    address_key.cache_clear()
    assert client_key({"client": ("not an address", 5)}) == "not an address"
    assert client_key({"client": ("x" * 20_000, 5)}) == "x" * 64
    assert [client_key({"client": (f"10.0.{i // 256}.{i % 256}", 5)}) for i in range(5000)][-1] == "10.0.19.135"
    assert address_key.cache_info().currsize == 4096 and address_key.cache_info().maxsize == 4096


def test_rate_limit_answers_429_with_retry_after(bundle_path, store_path):
    with make_client(bundle_path, store_path, rate_limit="1/min burst 3") as client:
        codes = [client.get("/colormaps").status_code for _ in range(3)]
        over = client.get("/tiles/3/4/2.png?layer=uncertainty")
        assert codes == [200, 200, 200]
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 50
        assert "too many requests" in over.json()["detail"] and over.headers["cache-control"] == "no-store"
        assert client.get("/healthz").status_code == 200  # probes are never limited
    with make_client(bundle_path, store_path) as client:  # off by default
        assert {client.get("/colormaps").status_code for _ in range(20)} == {200}


@pytest.mark.parametrize(("trusted", "apart"), [("127.0.0.1", True), ("", False)])
def test_behind_a_trusted_proxy_each_client_has_its_own_limit(bundle_path, store_path, trusted, apart):
    """Through uvicorn, as `--trusted-proxies` works: given the proxy's address, each client its
    X-Forwarded-For names has its own bucket; without it the header is not believed, and every
    client of the proxy shares the proxy's."""
    args = ("--rate-limit", "1/min burst 2", *(("--trusted-proxies", trusted) if trusted else ()))
    with live_server(bundle_path, store_path, args=args) as url:

        def status(client: str) -> int:
            return httpx.get(f"{url}/colormaps", headers={"X-Forwarded-For": client}, timeout=30).status_code

        assert [status("203.0.113.5") for _ in range(3)] == [200, 200, 429]
        assert status("203.0.113.6") == (200 if apart else 429)


# /search under metadata ---------------------------------------------------------------------------


def test_search_under_metadata_fuses_a_level_once(client):
    stats = client.app.state.service.stats
    before = stats["fusions"]
    first = client.get("/search?q=forest&hour=5&month=7&level=5&k=5")
    again = client.get("/search?q=sea&hour=5&month=7&level=5&k=3")
    assert first.status_code == again.status_code == 200
    assert stats["fusions"] == before + 1  # the second query reuses the fused level


def slowed_fusions(service, seconds: float = 0.5) -> None:
    """Every fusion takes `seconds` more, as on a level as large as the demo's finest."""
    real_fuse = service.engine.fuse

    def slow_fuse(*args):
        time.sleep(seconds)
        return real_fuse(*args)

    service.engine.fuse = slow_fuse


def searches_at_once(app, paths: list[str]) -> list[httpx.Response]:
    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await asyncio.gather(*(http.get(path) for path in paths))

    return asyncio.run(burst())


def level_cells(store_path, level: int) -> int:
    from store.reader import Store

    return len(Store(store_path).levels[level])


def test_whole_level_fusions_wait_while_the_cells_waiting_fit_and_others_get_503(bundle_path, store_path):
    """One whole-level fusion runs; the next wait while the cells waiting fit in
    fusion_queue_cells (here two levels' worth); more are refused at once with 503."""
    cells = level_cells(store_path, 6)
    with make_client(bundle_path, store_path, full_fusions=1, fusion_queue_cells=2 * cells) as client:
        slowed_fusions(client.app.state.service)
        start = time.perf_counter()
        answers = searches_at_once(client.app, [f"/search?q=forest&hour={h}&month=3&level=6" for h in range(6)])
        elapsed = time.perf_counter() - start
    codes = sorted(r.status_code for r in answers)
    assert codes == [200, 200, 200, 503, 503, 503], codes  # one runs, two wait
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["retry-after"] == "5"
    assert f"{2 * cells} cells wait (at most {2 * cells})" in refused.json()["detail"]
    assert elapsed < 4.0  # three fusions one after the other, not six


def test_the_fusion_queue_counts_cells_not_searches(bundle_path, store_path):
    """Smaller fusions queue in the room of a large one: with room for one level-6 fusion, the
    searches of a level a quarter its size all wait their turn instead of getting 503."""
    small, large = level_cells(store_path, 5), level_cells(store_path, 6)
    assert 4 * small <= large
    with make_client(bundle_path, store_path, full_fusions=1, fusion_queue_cells=large) as client:
        slowed_fusions(client.app.state.service, 0.2)
        answers = searches_at_once(client.app, [f"/search?q=forest&hour={h}&month=3&level=5" for h in range(5)])
    assert [r.status_code for r in answers] == [200] * 5, [r.text for r in answers]


def budget_jobs(budget: Budget) -> tuple[list[str], Callable]:
    """(the names of the jobs as they start, job(name, cost, hold): work of `cost` held `hold` s)."""
    started: list[str] = []

    async def job(name: str, cost: int, hold: float) -> None:
        async with budget.take(cost):
            started.append(name)
            await asyncio.sleep(hold)

    return started, job


def test_work_over_the_budget_waits_in_order_and_past_the_waiting_room_is_refused():
    """Budget: B (6) waits for A (6) in a budget of 10; C (2) would fit beside A but waits behind
    B (first come, first served) and starts with it; D finds 8 waiting, the most, and gets 503."""
    budget = Budget(10, 8, "maps", "tiles")
    started, job = budget_jobs(budget)

    async def scenario() -> str:
        a = asyncio.create_task(job("A", 6, 0.2))
        await asyncio.sleep(0.01)
        b, c = asyncio.create_task(job("B", 6, 0.1)), asyncio.create_task(job("C", 2, 0.1))
        await asyncio.sleep(0.01)
        with pytest.raises(QueryError) as refused:
            await job("D", 1, 0)
        await asyncio.gather(a, b, c)
        return str(refused.value)

    said = asyncio.run(scenario())
    assert started == ["A", "B", "C"]
    assert said == "maps of 6 tiles are running and 8 tiles wait (at most 8); retry in 5 s"
    assert budget.used == 0 and not budget.queue


def test_work_cancelled_while_it_waits_lets_the_work_behind_it_start():
    """E (the whole budget) waits for H; G, behind E, fits beside H: when E's client goes, G
    starts at once rather than when H ends."""
    budget = Budget(10, 20, "maps", "tiles")
    started, job = budget_jobs(budget)

    async def scenario() -> None:
        h = asyncio.create_task(job("H", 5, 0.3))
        await asyncio.sleep(0.01)
        e, g = asyncio.create_task(job("E", 10, 0)), asyncio.create_task(job("G", 1, 0))
        await asyncio.sleep(0.01)
        e.cancel()
        await asyncio.sleep(0.01)
        assert started == ["H", "G"] and not h.done()
        await asyncio.gather(h, g, e, return_exceptions=True)

    asyncio.run(scenario())
    assert budget.used == 0 and not budget.queue


def test_maps_past_the_tiles_a_worker_holds_for_them_get_503(client):
    """Each map costs its tiles; with room for one at once and one waiting, two more asked at the
    same moment are refused at once with Retry-After rather than holding their tiles."""
    service = client.app.state.service
    kept, real_tile = service.map_tiles, service.tile

    async def slow_tile(*args):
        await asyncio.sleep(0.3)
        return await real_tile(*args)

    service.map_tiles, service.tile = Budget(1, 1, "maps", "tiles"), slow_tile
    try:
        paths = [
            f"/collections/heatmap/map?q={q}&width=1024&height=1024&f=npy" for q in ("rain", "sea", "wind", "birds")
        ]
        answers = searches_at_once(client.app, paths)
    finally:
        service.map_tiles, service.tile = kept, real_tile
    assert sorted(r.status_code for r in answers) == [200, 200, 503, 503]
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["retry-after"] == "5"
    assert refused.json()["detail"] == "maps of 1 tiles are running and 1 tiles wait (at most 1); retry in 5 s"


# A real uvicorn: header size, timeouts, connection cap -----------------------------------------------

LIVE_ENV = {
    "SOUNDSCAPE_MAX_HEADER_BYTES": "8192",
    "SOUNDSCAPE_MAX_HEADERS": "50",
    "SOUNDSCAPE_HEADER_TIMEOUT_S": "1.5",
    "SOUNDSCAPE_BODY_TIMEOUT_S": "2",
    "SOUNDSCAPE_MAX_CONNECTIONS": "6",
}


@pytest.fixture(scope="module")
def live(bundle_path, store_path):
    with live_server(bundle_path, store_path, env=LIVE_ENV) as base:
        yield int(base.rsplit(":", 1)[1])


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send `data` on a new connection and read until the server closes it: (answer, seconds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        start = time.perf_counter()
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer, time.perf_counter() - start


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def detail_of(answer: bytes) -> str:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]


def get(port: int, path: str = "/healthz") -> float:
    start = time.perf_counter()
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert r.status_code == 200
    return time.perf_counter() - start


def pieces(port: int, parts: list[bytes]) -> bytes:
    """Send each part as its own write (so the server reads them apart), stopping once an
    answer waits (more bytes after the server closed would reset the connection); the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in parts:
            if select.select([s], [], [], 0.1)[0]:
                break
            s.sendall(part)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize(
    "head, status, said",
    [
        (b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n", 400, "more than one Host"),
        (b"GET /healthz HTTP/1.1\r\nhost: evil.example\r\nHOST: localhost\r\n\r\n", 400, "more than one Host"),
        (b"GET /healthz HTTP/2.0\r\nHost: localhost\r\n\r\n", 505, "HTTP/2.0 is not served here"),
    ],
)
def test_a_head_http_1_1_forbids_is_refused(live, head, status, said):
    answer, _ = exchange(live, head)
    assert (status_of(answer), said in detail_of(answer)) == (status, True), answer
    answer, _ = exchange(live, b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")  # 1.0 is still served
    assert status_of(answer) == 200, answer


def test_an_over_long_url_is_414_and_over_long_headers_431(live):
    long_url = b"GET /tiles/WebMercatorQuad/0/0/0.png?q=" + b"a" * 12_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer, _ = exchange(live, long_url)
    assert status_of(answer) == 414 and "request line" in detail_of(answer) and "8192 bytes" in detail_of(answer)
    # As a client sends it: a q the schema allows (8192 characters), percent-encoded to 18 kB.
    r = httpx.get(f"http://127.0.0.1:{live}/tiles/WebMercatorQuad/0/0/0.png", params={"q": "é" * 3000}, timeout=10)
    assert r.status_code == 414 and "request line" in r.json()["detail"]
    # The URL arriving in reads of 3000 bytes: refused as it passes the limit, before its end.
    answer = pieces(live, [b"GET /healthz?q=" + b"a" * 3000] + [b"a" * 3000] * 4)
    assert status_of(answer) == 414
    # The request line's CRLF split across two reads, then a long header: the line had ended.
    answer = pieces(live, [b"GET /healthz HTTP/1.1\r", b"\nHost: x\r\nX-Big: " + b"a" * 3000] + [b"a" * 3000] * 3)
    assert status_of(answer) == 431 and "headers" in detail_of(answer)


def test_a_too_large_head_is_431_and_others_are_served_meanwhile(live):
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n"
    answer, _ = exchange(live, big)
    assert status_of(answer) == 431 and "8192 bytes" in detail_of(answer)
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(60)) + b"\r\n"
    answer, _ = exchange(live, many)
    assert status_of(answer) == 431 and "50 header lines" in detail_of(answer)
    # 50 MB of header, sent as fast as the socket takes it, while another client is served.
    stop = threading.Event()

    def flood() -> None:
        try:
            with socket.create_connection(("127.0.0.1", live), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
                while not stop.is_set():
                    s.sendall(b"a" * 65536)
        except OSError:
            pass  # refused and closed: what should happen

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        assert max(get(live) for _ in range(20)) < 1.0
    finally:
        stop.set()
        flooder.join(10)
    assert not flooder.is_alive()


def test_slow_heads_and_bodies_are_408_and_closed(live):
    answer, seconds = exchange(live, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert status_of(answer) == 408 and "head" in detail_of(answer) and 1.2 < seconds < 5
    assert b"\r\naccess-control-allow-origin: *\r\n" in answer  # the default CORS: any origin reads it
    answer, seconds = exchange(live, b"")  # connects and says nothing: closed
    assert answer == b"" and 1.2 < seconds < 5
    post = (
        b"POST /queries HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"text": '
    )
    answer, seconds = exchange(live, post)
    assert status_of(answer) == 408 and "body" in detail_of(answer) and 1.5 < seconds < 6
    # A trickle that keeps sending bytes does not keep the connection open.
    with socket.create_connection(("127.0.0.1", live), timeout=10) as s:
        start = time.perf_counter()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        with pytest.raises(OSError):
            for _ in range(20):
                s.sendall(b"X-a: b\r\n")
                time.sleep(0.5)
            if not s.recv(1):
                raise ConnectionResetError
        assert time.perf_counter() - start < 5
    assert get(live) < 1.0


def test_the_protocols_refusals_carry_the_cors_headers_of_the_origins_served(bundle_path, store_path):
    """The 503 of a worker over its connection cap and the 408 of a slow head are written by the
    protocol, below the app's CORS policy: a page on another origin saw a network error instead of
    the status, Retry-After and sentence. They carry the policy's headers: an allowed origin's,
    none for another."""
    allowed, other = b"https://maps.example.org", b"https://elsewhere.example.org"
    env = {**LIVE_ENV, "SOUNDSCAPE_CORS_ORIGINS": allowed.decode()}

    def head(origin: bytes) -> bytes:
        return b"GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: " + origin + b"\r\nAccept: */*\r\n"

    with live_server(bundle_path, store_path, env=env) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = {origin: exchange(port, head(origin))[0] for origin in (allowed, other)}  # never finished
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            busy = {origin: exchange(port, head(origin) + b"\r\n")[0] for origin in (allowed, other)}
        finally:
            for s in idle:
                s.close()
    for status, answers in ((408, slow), (503, busy)):
        assert [status_of(a) for a in answers.values()] == [status, status]
        assert b"\r\naccess-control-allow-origin: " + allowed + b"\r\nvary: Origin\r\n" in answers[allowed]
        assert b"access-control-" not in answers[other].lower()


@pytest.mark.slow
def test_a_page_on_another_origin_reads_the_503_of_a_busy_worker(live):
    """As a browser sees it: a page of one origin (localhost) fetching from another (127.0.0.1)
    while the worker holds its cap of connections gets the 503 with its Retry-After and sentence,
    where it had a TypeError (the answer without CORS headers is withheld from the page)."""
    from playwright.sync_api import sync_playwright

    from tests.test_viewer import ARGS, CHROMIUM

    assert CHROMIUM is not None, "chromium is not installed: apt-get install -y chromium"
    fetch = """async (url) => {
        try { const r = await fetch(url); return [r.status, r.headers.get("Retry-After"), await r.text()]; }
        catch (e) { return [String(e)]; }
    }"""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(f"http://localhost:{live}/healthz")
        time.sleep(2)  # the page's connection has timed out: the cap counts only the idle ones
        idle = [socket.create_connection(("127.0.0.1", live)) for _ in range(6)]
        try:
            answer = page.evaluate(fetch, f"http://127.0.0.1:{live}/healthz")
        finally:
            for s in idle:
                s.close()
        browser.close()
    assert answer[:2] == [503, "1"], answer
    assert "6 connections" in json.loads(answer[2])["detail"]


def test_connections_over_the_cap_get_503_and_keep_alive_still_works(live):
    time.sleep(2)  # connections of earlier tests have timed out
    idle = [socket.create_connection(("127.0.0.1", live)) for _ in range(6)]
    try:
        answer, _ = exchange(live, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 503 and "6 connections" in detail_of(answer)
        assert b"retry-after: 1" in answer.lower()
        assert b"\r\naccess-control-expose-headers: Retry-After\r\n" in answer
    finally:
        for s in idle:
            s.close()
    time.sleep(0.5)
    with httpx.Client(base_url=f"http://127.0.0.1:{live}", timeout=10) as http:  # one connection, many requests
        assert [http.get("/healthz").status_code for _ in range(5)] == [200] * 5
        time.sleep(2)  # idle past the header timeout between requests: closed; the client reconnects
        assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--rate-limit", "fast", "not like '20/s burst 100'"),
        ("--public-url", "ftp://tiles.example.org", "not like https://"),
    ],
)
def test_serve_refuses_malformed_internet_options(bundle_path, store_path, option, value, needle):
    done = subprocess.run(
        serve_command(bundle_path, store_path, 9, option, value),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and needle in done.stderr and "Traceback" not in done.stderr


def test_a_client_that_stops_reading_is_disconnected(live):
    """Pipelined requests for a 1.7 MB script, never read: the answers fill the socket's buffers,
    and after the body timeout (2 s here) the server drops the connection instead of holding it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", live))
        s.sendall(b"GET /static/swagger-ui/swagger-ui-bundle.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4)
        time.sleep(5)
        received = 0
        s.settimeout(10)
        try:
            while chunk := s.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < 4 * 1_700_000  # what the buffers held when it was dropped
    assert get(live) < 1.0


def test_a_client_that_reads_a_large_answer_slowly_gets_all_of_it(live):
    """A map sent in one write drains only as the client reads: the body timeout measured the
    whole send, so a slow link that kept reading was cut mid-body once it passed (2 s here)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", live))
        path = "/collections/heatmap/map?q=thunder&width=2048&height=2048&f=npy"
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        s.settimeout(10)
        answer, start = b"", time.monotonic()
        while chunk := s.recv(65536):
            answer += chunk
            time.sleep(0.02)  # about 3 MB/s: the 16.8 MB answer takes twice the body timeout
    head, body = answer.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    assert time.monotonic() - start > 2 and len(body) == length > 16_000_000


def test_deep_pipelining_drops_the_connection(live):
    """1000 requests in one write: more than 32 waiting for their turn drops the connection."""
    with socket.create_connection(("127.0.0.1", live), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 1000)
        answers = b""
        try:
            while chunk := s.recv(65536):
                answers += chunk
        except ConnectionResetError:
            pass
    assert answers.count(b"HTTP/1.1 200") <= 33
    with socket.create_connection(("127.0.0.1", live), timeout=10) as s:  # a few pipelined are fine
        s.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4 + b"GET /healthz HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        answers = b""
        while chunk := s.recv(65536):
            answers += chunk
    assert answers.count(b"HTTP/1.1 200") == 5


CROWD_ENV = {
    "SOUNDSCAPE_MAX_CONNECTIONS": "8",
    "SOUNDSCAPE_MAX_CONNECTIONS_PER_ADDRESS": "3",
    "SOUNDSCAPE_MAX_UNSENT_MB": "20",
    "SOUNDSCAPE_TRUSTED_PROXIES": "127.0.0.3",
}
BIG_MAP = "/collections/heatmap/map?q={q}&width=2048&height=2048&f=npy"  # 16.8 MB, written at once


@pytest.fixture(scope="module")
def crowded(bundle_path, store_path):
    with live_server(bundle_path, store_path, env=CROWD_ENV) as base:
        yield int(base.rsplit(":", 1)[1])


def connect(port: int, source: str, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(20)
    return s


def read_all(s: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := s.recv(1 << 20):
            answer += chunk
    return answer


def healthz_from(port: int, source: str) -> bytes:
    with connect(port, source) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return read_all(s)


def test_one_address_holding_its_connections_keeps_no_one_else_out(crowded):
    """An address may hold more than its share (3 here) while the worker holds at most half its
    cap (8); past that its next connection gets a 503 in a sentence, while another address, and
    a trusted proxy past the share (its clients are behind it), are served."""
    held = [connect(crowded, "127.0.0.1") for _ in range(3)]
    proxied: list[socket.socket] = []
    try:
        time.sleep(0.2)
        assert status_of(healthz_from(crowded, "127.0.0.1")) == 200  # 4 open: not crowded
        proxied += [connect(crowded, "127.0.0.3") for _ in range(3)]
        time.sleep(0.2)
        refused = healthz_from(crowded, "127.0.0.1")
        assert status_of(refused) == 503 and b"retry-after: 1" in refused.lower()
        assert detail_of(refused) == (
            "your address holds the server's limit of 3 connections from one address; retry later"
        )
        assert status_of(healthz_from(crowded, "127.0.0.2")) == 200
        assert status_of(healthz_from(crowded, "127.0.0.3")) == 200
    finally:
        for s in held + proxied:
            s.close()
    time.sleep(0.2)
    assert status_of(healthz_from(crowded, "127.0.0.1")) == 200  # closed sockets count no more


def test_answers_nobody_reads_are_bounded_and_the_stalest_client_is_dropped(crowded):
    """Two 16.8 MB maps whose clients read nothing pass the 20 MB held for such clients: the
    client that stalled first is dropped then, long before the body timeout (60 s), and the
    other still gets its whole answer when it reads."""
    first = connect(crowded, "127.0.0.1", rcvbuf=4096)
    second = connect(crowded, "127.0.0.2", rcvbuf=4096)
    try:
        first.sendall(f"GET {BIG_MAP.format(q='thunder')} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert select.select([first], [], [], 30)[0]  # its answer is being written
        time.sleep(0.2)
        start = time.monotonic()
        second.sendall(
            f"GET {BIG_MAP.format(q='rain')} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        assert select.select([second], [], [], 30)[0]
        time.sleep(0.5)
        dropped = read_all(first)
        assert time.monotonic() - start < 30 and 0 < len(dropped) < 16_000_000
        answer = read_all(second)
    finally:
        first.close()
        second.close()
    head, body = answer.split(b"\r\n\r\n", 1)
    assert status_of(answer) == 200 and len(body) == int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    assert len(body) > 16_000_000


def test_stalled_bodies_keep_no_upload_out_and_bodies_in_memory_are_bounded(bundle_path, store_path):
    """Bodies that send their first bytes and stall hold only those bytes, not one of the
    MAX_UPLOADS decoding places: another upload goes through at once, as does a text, and when
    they all arrive together the decodes past MAX_UPLOADS wait their turn. The bytes
    every body being received holds are bounded per worker (MAX_UPLOADS x the upload limit): the
    upload that would pass it gets 503 with Retry-After, and those stalled finish."""
    from server.service import BODY_HOLD_S, MAX_UPLOADS

    limit_mb = 0.1  # 104,857 bytes an upload, 419,428 held at once
    with make_client(bundle_path, store_path, max_upload_mb=limit_mb) as client:

        def scenario(whole: bytes, first: int) -> tuple[list[int], httpx.Response, int]:
            async def then(http: httpx.AsyncClient) -> tuple[httpx.Response, int]:
                extra = await http.post("/queries", content=whole, headers={"Content-Type": "audio/wav"})
                return extra, (await http.post("/queries", json={"text": "birdsong"})).status_code

            stalled, (extra, text) = asyncio.run(
                beside_stalled_uploads(client.app, whole, first, MAX_UPLOADS + 2, then)
            )
            return [r.status_code for r in stalled], extra, text

        stalled, extra, text = scenario(wav(16000, frames=20_000), first=40)  # 7 x 40 kB held at most
        assert extra.status_code == 201 and text == 201, "stalled bodies keep no upload out"
        assert stalled == [201] * (MAX_UPLOADS + 2), "finishing together, 4 decode at once and 2 wait their turn"
        assert client.app.state.service.upload_bodies.held == 0, "every body's bytes let go"
        # 4 of 6 stalled bodies hold 400 kB: the rest, and the next upload, are over the budget
        # until the bodies holding it may be cut (BODY_HOLD_S after they began).
        stalled, extra, text = scenario(wav(16000, frames=50_000), first=100_000)
        assert extra.status_code == 503 and 1 <= int(extra.headers["retry-after"]) <= BODY_HOLD_S
        assert "uploads being received hold" in extra.json()["detail"] and text == 201
        assert stalled.count(201) == MAX_UPLOADS and stalled.count(503) == 2
        assert client.app.state.service.upload_bodies.held == 0


def test_a_server_process_leaves_its_startup_objects_out_of_the_collectors_full_passes(
    bundle_path, store_path, tmp_path
):
    """uvicorn's factory freezes what startup made (server/asgi.py): a full pass of the garbage
    collector, which stalls every request of its worker, then walks what requests make, not the
    ~130 k objects of modules, routes and bindings (40-60 ms a pass before)."""
    code = (
        "import gc; from server.asgi import create_app_from_env; create_app_from_env(); "
        "print(gc.get_freeze_count(), len(gc.get_objects()))"
    )
    env = {
        **os.environ,
        "SOUNDSCAPE_BUNDLE": str(bundle_path),
        "SOUNDSCAPE_STORE": str(store_path),
        "SOUNDSCAPE_QUERY_DB": str(tmp_path / "queries.sqlite"),
    }
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen, walked = map(int, done.stdout.split())
    assert frozen > 50_000 and walked < frozen / 10, (frozen, walked)

"""The lean paths for tiles answered before (server/fastpath.py: the front door before every
middleware, the replay inside them): the same bytes and headers as the normal path for every
request variant (CORS, gzip, HEAD, If-None-Match, If-Match), no work done, still counted in /metrics and
still behind the rate limiter, and bounded in bytes."""

import time

import pytest

from server.fastpath import ENTRY_OVERHEAD, Recorded, Recordings
from tests.server_support import LAND_TILE, concurrent_gets, make_client

Z, X, Y = LAND_TILE
URLS = [
    f"/tiles/{Z}/{X}/{Y}.png?q=green&hour=6",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.webp?q=green",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy?layer=uncertainty",
    f"/tiles/{Z}/{X}/{Y}.png?q=green&rescale=0,0.5",
]
VARIANTS = [
    {},
    {"Origin": "https://example.org"},
    {"Accept-Encoding": "gzip, deflate"},
    {"Accept-Encoding": "identity"},
]


@pytest.fixture(scope="module")
def clients(bundle_path, store_path):
    """Two processes' worth of apps: `normal` answers each (URL, headers) for the first time."""
    return make_client(bundle_path, store_path), make_client(bundle_path, store_path)


def fastpath_of(client) -> Recordings:
    """The tiles the replay inside the middleware stack has recorded."""
    return client.app.state.replays.tiles


def normal_path(client, method: str, url: str, headers: dict):
    """The answer of the normal path: nothing recorded in this app before the request."""
    fastpath_of(client).clear()
    client.app.front_door.clear()
    return client.request(method, url, headers=headers)


def answer(response) -> tuple:
    return response.status_code, response.headers.raw, response.content


@pytest.mark.parametrize("url", URLS)
def test_a_replay_is_byte_identical_to_the_normal_path(clients, url):
    normal, fast = clients
    fast.get(url).raise_for_status()
    assert url.encode() in fastpath_of(fast)._items, "recorded under its raw path and query string"
    for headers in VARIANTS:  # the front door records each variant's answer as the whole stack sent it
        fast.get(url, headers=headers).raise_for_status()
    sent = [{k.lower(): v for k, v in {**fast.headers, **headers}.items()} for headers in VARIANTS]
    expected = {url.encode() + f"\0{h.get('origin', '')}\0{h.get('accept-encoding', '')}".encode() for h in sent}
    assert {key for key in fast.app.front_door._items if key.startswith(url.encode() + b"\0")} == expected
    service = fast.app.state.service
    service.tiles.local.drop()  # the normal path would have to render again
    renders = service.stats["renders"]
    for i, headers in enumerate(VARIANTS):
        first = normal_path(normal, "GET" if i else "HEAD", url, headers)
        again = fast.request("GET" if i else "HEAD", url, headers=headers)
        assert answer(again) == answer(first), headers
    etag = fast.get(url).headers["etag"]
    conditions = {  # header -> (tags, status); If-Match compares strongly (RFC 9110 13.1.1)
        "If-None-Match": ((etag, 304), (f'W/{etag}, "x"', 304), ("*", 304), ('"other"', 200)),
        "If-Match": ((etag, 200), (f'W/{etag}, "x"', 412), ("*", 200), ('"other"', 412)),
    }
    for name, cases in conditions.items():
        for tags, status in cases:
            first = normal_path(normal, "GET", url, {name: tags, "Origin": "https://example.org"})
            again = fast.get(url, headers={name: tags, "Origin": "https://example.org"})
            assert answer(again) == answer(first) and again.status_code == status, (name, tags)
    assert service.stats["renders"] == renders, "replays do no work"


def test_the_front_door_answers_a_hit_without_the_middleware_stack(clients):
    _, fast = clients
    url = f"/tiles/{Z}/{X}/{Y}.png?q=green&month=7"
    first = fast.get(url)
    inner = fastpath_of(fast)
    inner.clear()  # a request that reached the middleware stack would record it here again
    assert [answer(fast.get(url)) for _ in range(2)] == [answer(first)] * 2
    assert len(inner) == 0, "the hits were answered before the middleware stack"
    assert fast.get(url, headers={"If-None-Match": first.headers["etag"]}).status_code == 304


def test_errors_and_other_routes_are_not_recorded(clients):
    _, fast = clients
    for url in ("/tiles/1/5/0.png?q=green", "/tiles/2/1/1.png?hour=99&q=green", "/tiles/2/1/1.png"):
        codes = {fast.get(url).status_code for _ in range(2)}
        assert len(codes) == 1 and codes.pop() in (404, 422)
    assert fast.get("/tiles/2/1/1.png?hour=99&q=green").json()["detail"].startswith("hour must be")


def test_replays_are_counted_in_metrics(bundle_path, store_path):
    client = make_client(bundle_path, store_path)
    url = f"/tiles/{Z}/{X}/{Y}.png?q=green&month=3"
    etag = client.get(url).headers["etag"]

    def count(status: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if (
                line.startswith("soundscape_requests_total{")
                and 'route="/tiles/{z}/{x}/{y}.png"' in line
                and 'method="GET"' in line
                and f'status="{status}"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    ok, not_modified = count("200"), count("304")
    for _ in range(3):
        client.get(url)
    client.get(url, headers={"If-None-Match": etag})
    assert count("200") == ok + 3 and count("304") == not_modified + 1


@pytest.mark.parametrize("shared", [False, True])
def test_replays_stay_behind_the_rate_limit(bundle_path, store_path, request, shared):
    """Under a rate limit the front door answers every hit the limit lets through and spends its
    token (its bucket; with Redis, this process's lease of it, asked for here when spent); the
    hit it refuses goes through the stack, whose limiter answers 429. Every request spends one
    token, hit or not."""
    redis_url = request.getfixturevalue("redis_server") if shared else None  # a Redis only when shared
    with make_client(bundle_path, store_path, rate_limit="1/min burst 30", redis_url=redis_url) as client:
        url = f"/tiles/{Z}/{X}/{Y}.png?q=green"
        assert client.get(url).status_code == 200  # drawn, through the stack: recorded at both doors
        inner = fastpath_of(client)
        inner.clear()  # a hit that reached the middleware stack would record it here again
        codes = [client.get(url).status_code for _ in range(30)]
        assert codes == [200] * 29 + [429]
        # No hit reached the stack, not even one whose lease of 3 tokens was asked of Redis:
        # it would have been replayed there and the tile recorded again.
        assert len(inner) == 0


def test_hits_over_the_burst_wait_at_the_front_door_within_the_delay(bundle_path, store_path):
    """10 hits of a drawn tile at once under 2 a second, 2 a burst, 1 s of delay: 2 go at once, 2
    wait for their tokens at the front door (as RateLimit would make them), the rest are refused
    through the stack; no hit the limit lets through reaches the stack."""
    with make_client(bundle_path, store_path, rate_limit="2/s burst 2 delay 1") as client:
        url = f"/tiles/{Z}/{X}/{Y}.png"
        assert client.get(url, params={"q": "green"}).status_code == 200
        time.sleep(1.0)  # the bucket full again
        inner = fastpath_of(client)
        inner.clear()
        began = time.monotonic()
        answers = concurrent_gets(client.app, url, [{"q": "green"}] * 10)
        elapsed = time.monotonic() - began
    served = sum(a.status_code == 200 for a in answers)
    assert {a.status_code for a in answers} == {200, 429}
    assert 4 <= served <= 4 + 2 * elapsed and elapsed >= 0.95, (served, elapsed)
    assert len(inner) == 0, "a hit the limit let through went through the stack"


def test_recorded_answers_are_bounded_in_bytes():
    body = b"x" * 1000
    fast = Recordings(max_bytes=3 * (1000 + ENTRY_OVERHEAD + len(b"/tiles/0/0/0000000000")))
    for i in range(10):
        fast.put(f"/tiles/0/0/{i:010d}".encode(), Recorded((), body, '"e"', "public", None, None))
    assert len(fast) == 3 and fast.get(b"/tiles/0/0/0000000009") is not None
    assert fast.get(b"/tiles/0/0/0000000000") is None, "the least recently used went first"
    fast.put(b"/tiles/big", Recorded((), b"x" * 10_000, '"e"', "public", None, None))
    assert fast.get(b"/tiles/big") is None and len(fast) == 3


def test_maps_are_replayed_from_a_table_of_their_own(bundle_path, store_path):
    """A map's answer is replayed as a tile's, but a large map never pushes the tiles out."""
    client = make_client(bundle_path, store_path, lru_mb=2)  # tiles' table 512 KiB, maps' 256 KiB
    replays = client.app.state.replays
    tile = client.get(URLS[0])
    small, large = (f"/collections/contrast/map?q=green&bbox=-12,34,32,60&width={w}&f=npy" for w in (200, 400))
    first = client.get(small)
    assert first.status_code == 200 and len(replays.tiles) == 1 and len(replays.maps) == 1
    service = client.app.state.service
    service.tiles.local.drop()
    renders = service.stats["renders"]
    assert answer(client.get(small)) == answer(first) and service.stats["renders"] == renders, "replayed"
    assert len(client.get(large).content) > replays.maps.max_bytes, "too large for its table: not recorded"
    assert len(replays.maps) == 1 and len(replays.tiles) == 1
    assert not [key for key in client.app.front_door._items if not key.startswith(b"/tiles/")], "tiles alone"
    assert answer(client.get(URLS[0])) == answer(tile)

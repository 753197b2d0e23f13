"""Per-client rate limit: a token bucket per client address, as pure ASGI middleware.

`SOUNDSCAPE_RATE_LIMIT="20/s burst 100"` lets each client make 20 requests a second on average
and 100 at once; over it a request is answered 429 with `Retry-After` and a one-sentence detail,
before any work. With `delay 2` ("20/s burst 100 delay 2") a request over the burst that its
tokens would allow within 2 s waits for them instead, as nginx's limit_req without nodelay does:
a GIS client that reads a whole layer at once (GDAL asks a tileset's tiles five at a time, and
gives up on the first 429) then gets every tile at the average rate, while a flood still meets
429s. A client's waiting requests never hold more than `delay` seconds of its tokens. Off when
unset. With Redis (`SOUNDSCAPE_REDIS_URL`) the buckets live there, so every worker and replica
that shares it counts a client's requests together; without it, or while it cannot be reached,
each worker process counts its own, and a client whose connections reach several workers gets up
to that many times the limit. Clients are keyed by their address (an IPv6 client by its /64,
which one host usually holds whole). Behind a proxy, `soundscape serve --trusted-proxies` has uvicorn take the client's
address from X-Forwarded-For, so the key is the real client. The bucket table holds at most
`max_clients` entries, the least recently seen dropped first, so its memory is bounded whatever
the number of addresses.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from redis.commands.core import AsyncScript
from starlette.types import ASGIApp, Receive, Scope, Send

from server.cache import RedisCache

EXEMPT_PATHS = ("/healthz", "/readyz")  # orchestrators' probes are never limited
MAX_CLIENTS = 100_000  # buckets kept (about 200 bytes each)
MAX_DELAY_S = 30.0  # a waiting request holds a connection
_SPEC = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*(?:burst\s+(\d+))?\s*"
    r"(?:delay\s+(\d+(?:\.\d+)?)\s*s?)?\s*$"
)


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: int
    delay_s: float = 0.0  # how long a request over the burst may wait for its tokens (0: none)

    @classmethod
    def parse(cls, spec: str) -> Rate:
        """'20/s burst 100', '600/min' (burst: one second's worth, at least 1), '20/s burst 100
        delay 2' (seconds, at most MAX_DELAY_S)."""
        match = _SPEC.match(spec.lower())
        if not match or float(match.group(1)) <= 0:
            raise ValueError(f"rate limit {spec!r} is not like '20/s burst 100', '20/s burst 100 delay 2' or '600/min'")
        per_s = float(match.group(1)) / (60.0 if match.group(2).startswith("m") else 1.0)
        burst = int(match.group(3)) if match.group(3) else max(1, math.ceil(per_s))
        if burst < 1:
            raise ValueError(f"rate limit {spec!r} needs a burst of at least 1")
        delay_s = float(match.group(4) or 0)
        if delay_s > MAX_DELAY_S:
            raise ValueError(f"rate limit {spec!r} delays requests at most {MAX_DELAY_S:g} s, not {delay_s:g}")
        return cls(per_s, burst, delay_s)

    def __str__(self) -> str:
        delayed = f", more waiting up to {self.delay_s:g} s" if self.delay_s else ""
        return f"{self.per_s:g} requests per second (bursts of {self.burst}{delayed})"


def client_key(scope: Scope) -> str:
    """The address a request is counted against: the client's, an IPv6 client's /64."""
    client = (scope.get("client") or ("unknown", 0))[0]
    return address_key(client) if len(client) <= 64 else client[:64]  # longer: no address, cut


@functools.lru_cache(maxsize=4096)
def address_key(client: str) -> str:
    """client_key of an address of at most 64 characters, kept for the last 4,096 (256 KB at
    most, whatever X-Forwarded-For names): parsing one took 2.3 us, 7 % of a warm tile hit's
    time in its worker under a rate limit (py-spy; BENCHMARKS.md, "Rate limit counted in each
    worker or in Redis")."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class TokenBuckets:
    """Tokens per key, refilled at `rate.per_s` up to `rate.burst`; LRU-bounded."""

    def __init__(self, rate: Rate, max_clients: int = MAX_CLIENTS):
        self.rate = rate
        self.max_clients = max_clients
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time)

    def take(self, key: str, now: float | None = None, cost: int = 1) -> float:
        """The seconds until the request may go ahead (0: at once). Within the rate's delay its
        `cost` tokens (at most a burst's) are spent now, the bucket going below zero, so the
        requests after it wait behind it; beyond, nothing is spent and it is to be refused."""
        now = time.monotonic() if now is None else now
        cost = min(cost, self.rate.burst)
        tokens, then = self.buckets.pop(key, (float(self.rate.burst), now))
        tokens = min(float(self.rate.burst), tokens + (now - then) * self.rate.per_s)
        wait = 0.0 if tokens >= cost else (cost - tokens) / self.rate.per_s
        self.buckets[key] = (tokens - cost if wait <= self.rate.delay_s else tokens, now)
        if len(self.buckets) > self.max_clients:
            self.buckets.popitem(last=False)
        return wait


# TokenBuckets.take in Redis, one hash per client (`RATE_KEY` + its key) that expires once full
# again, timed by Redis's clock so the replicas' clocks do not matter. KEYS[1]: the bucket; ARGV:
# tokens a second, burst, longest wait in seconds, cost, lease. When the bucket holds a lease (at
# least the cost), the lease is taken for the process to spend locally; else the cost alone, as
# TokenBuckets.take would. Answers "wait granted" (Redis turns a Lua number into an integer).
TAKE = """
local per_s, burst, delay = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'time')
local tokens = burst
if held[1] then
  tokens = math.min(burst, tonumber(held[1]) + math.max(0, now - tonumber(held[2])) * per_s)
end
local wait, granted = 0, 0
if tokens >= lease then
  tokens, granted = tokens - lease, lease
else
  if tokens < cost then wait = (cost - tokens) / per_s end
  if wait <= delay then tokens, granted = tokens - cost, cost end
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'time', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / per_s * 1000) + 1000)
return string.format('%.17g %d', wait, granted)
"""
RATE_KEY = "st:rate:"


# A process takes a tenth of a client's burst from Redis at a time (at least a request's cost),
# when the bucket holds it, and spends it within LEASE_S: a client well under its limit costs a
# Redis round trip (about 0.13 ms here) per tenth of a burst, not per request. Leased tokens are
# spent in Redis, and lost if not spent in time; a client's count is off by at most a lease per
# process it talks to (tokens held while its bucket refills, or lost unspent).
LEASE_SHARE = 10
LEASE_S = 1.0


class Leases:
    """Tokens this process took from the shared buckets ahead of its requests, per client, each
    lease good for LEASE_S seconds; LRU-bounded."""

    def __init__(self, max_clients: int = MAX_CLIENTS):
        self.max_clients = max_clients
        self.held: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, good until)

    def spend(self, key: str, cost: int, now: float | None = None) -> bool:
        """Spend `cost` of the client's leased tokens; False when it has not that many."""
        now = time.monotonic() if now is None else now
        tokens, until = self.held.get(key, (0.0, 0.0))
        if now > until or tokens < cost:
            return False
        self.held[key] = (tokens - cost, until)
        self.held.move_to_end(key)
        return True

    def keep(self, key: str, tokens: float, now: float | None = None) -> None:
        """Hold `tokens` more for the client, until LEASE_S from now."""
        now = time.monotonic() if now is None else now
        left, until = self.held.pop(key, (0.0, 0.0))
        tokens += left if now <= until else 0.0
        if tokens > 0:
            self.held[key] = (tokens, now + LEASE_S)
            if len(self.held) > self.max_clients:
                self.held.popitem(last=False)


def one(scope: Scope) -> int:
    """Every request spends one token."""
    return 1


class Limiter:
    """Every client's tokens: in this process (TokenBuckets), or in Redis (`shared`) through this
    process's leases of them. The rate limit middleware and the front door of cache hits
    (server/fastpath.py) spend from one Limiter, through `admit`."""

    def __init__(self, rate: Rate, max_clients: int = MAX_CLIENTS, shared: RedisCache | None = None):
        self.rate = rate
        self.buckets = TokenBuckets(rate, max_clients)
        self.shared = shared
        self._take = shared.script(TAKE) if shared is not None else None
        self.leases = Leases(max_clients)
        self._fetching: dict[str, asyncio.Future[None]] = {}  # clients whose lease is being asked for

    async def admit(self, key: str, cost: int) -> float | None:
        """Let a request of `cost` tokens go: at once, or once it has slept its wait within the
        rate's delay (None); else the seconds it would have to wait, nothing spent (a 429)."""
        wait = await self.wait(key, cost)
        if wait > self.rate.delay_s:
            return wait
        if wait > 0.0:
            await asyncio.sleep(wait)
        return None

    async def wait(self, key: str, cost: int) -> float:
        """TokenBuckets.take of the shared buckets (through this process's lease of the client's
        tokens, when it holds enough), else (no Redis, or none answering) of this process's own."""
        cost = min(cost, self.rate.burst)
        if self.shared is None or self._take is None:
            return self.buckets.take(key, cost=cost)
        while not self.leases.spend(key, cost):
            fetching = self._fetching.get(key)
            if fetching is None:
                return await self._fetch(self.shared, self._take, key, cost)
            await asyncio.shield(fetching)  # then spend what it leased, or ask in turn
        return 0.0

    async def _fetch(self, shared: RedisCache, take: AsyncScript, key: str, cost: int) -> float:
        """Ask Redis for the client's lease, or its cost's wait: one request at a time per client
        and process, or concurrent requests would each lease ten and drain the bucket unspent."""
        rate, done = self.rate, asyncio.get_running_loop().create_future()
        self._fetching[key] = done
        try:
            lease = max(cost, rate.burst // LEASE_SHARE)
            answer = await shared.run(take, [RATE_KEY + key], [rate.per_s, rate.burst, rate.delay_s, cost, lease])
            if answer is None:
                return self.buckets.take(key, cost=cost)
            wait, granted = answer.split()
            if int(granted) > cost:
                self.leases.keep(key, int(granted) - cost)
            return float(wait)
        finally:
            del self._fetching[key]
            done.set_result(None)


class RateLimit:
    """Pure ASGI middleware answering 429 to a client over its rate. `cost` says how many tokens a
    request spends, so a request that does many requests' work counts as many."""

    def __init__(self, app: ASGIApp, limiter: Limiter, cost: Callable[[Scope], int] = one):
        self.app = app
        self.limiter = limiter
        self.cost = cost

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        refused = await self.limiter.admit(client_key(scope), self.cost(scope))
        if refused is None:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(refused))
        body = json.dumps(
            {"detail": f"too many requests from this address: the limit is {self.limiter.rate}; retry after {retry} s"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(retry).encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

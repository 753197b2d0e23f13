"""A lean path for tiles and maps already answered: the same URL is answered again from the bytes
the route sent, without FastAPI's routing, parameter validation and dependency injection.

Those cost ~1 ms of CPU per warm tile (three thread-pool hops for sync dependencies, pydantic,
two SHA-256 keys), about 8x the HTTP server's own work (BENCHMARKS.md "Performance harness").
A tile's bytes and headers are a function of its URL alone (the ids of the bundle and store are
fixed for the process; a query id, once registered, is never removed), so the first 200 answer of
a tile route is recorded under its exact raw path and query string and replayed verbatim. So is
an OGC tileset's (`/tiles/{tms}`), but only when its links do not come from the Host header (with
SOUNDSCAPE_PUBLIC_URL set): a replay to another host would point it elsewhere. So is a map's
(`/collections/{id}/map`), whose answer is also its URL's alone, in a table of its own (a few
large maps must not push out the many small tiles): a GIS client reading a map's GeoTIFF in byte
ranges (GDAL's /vsicurl/) has it drawn once, not once a range. The rate limit reads the maps'
table too: a map's replay spends a token a MiB it sends, whatever drawing it once cost.

It runs inside HttpPolicy (HEAD, metrics), the host policy, CORS and the rate limit, so those
apply to a replay exactly as to the normal path; GZip runs inside it (it never compresses a tile's
media type; an answer carrying Content-Encoding is not recorded). If-Match and If-None-Match are
answered 412 and 304 with the recorded ETag, like `server.http.precondition_failed` and
`not_modified`. Bounded in bytes, least recently used first out.

`FrontDoor` goes one step further for the commonest hit, a tile's (GET or HEAD, no If-(None-)Match
or Range, one the rate limit lets through, if any; maps are rare and heavy): it answers before
FastAPI's own wrappers and every middleware, with the bytes and headers the whole stack sent for
the same URL, Origin and Accept-Encoding (the only request headers those layers read for a
tile), counted in /metrics as HttpPolicy counts. Those layers cost ~80 us per hit in process,
more than the replay itself (BENCHMARKS.md "Performance harness").
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.http import HEAD_ASKED, not_modified, precondition_failed, request_series
from server.maps import MAP_PATH
from server.ranges import bytes_sent
from server.ratelimit import Limiter, client_key
from server.urls import embeds_host

TILE_PREFIX = "/tiles/"
ENTRY_OVERHEAD = 512  # bytes counted per entry besides key and body (headers, tuple, dict slot)
REPLAY_BYTES_PER_TOKEN = 1 << 20  # a replay draws nothing: its rate-limit cost is the bytes it sends
TILE_HITS = metrics.CACHE.labels("tile", "hit")
# Request headers whose answer is not the recorded one: a tile has no Last-Modified, so
# If-Unmodified-Since never fails (RFC 9110 13.1.4) and If-Modified-Since never answers 304.
CONDITIONS = frozenset({b"if-none-match", b"if-match"})


def replayable(path: str) -> bool:
    """A tile's or a map's path (a request's or its route's template): answers that may be replayed."""
    return path.startswith(TILE_PREFIX) or MAP_PATH.match(path) is not None


@dataclass(frozen=True)
class Recorded:
    """A tile or map route's 200 answer: its headers and body, and the route that answered (metrics)."""

    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    etag: str
    cache_control: str
    route: Any
    endpoint: Any

    @property
    def size(self) -> int:
        return len(self.body) + ENTRY_OVERHEAD


class Recordings:
    """Recorded answers by key, bounded in bytes, least recently used first out."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, Recorded] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> Recorded | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: bytes, value: Recorded) -> None:
        size = value.size + len(key)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.size + len(key)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                gone_key, gone = self._items.popitem(last=False)
                self._bytes -= gone.size + len(gone_key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


async def answer_of(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> Recorded | None:
    """Run `app`, passing on what it sends; that answer when it is a whole 200 of a tile or map
    route with an ETag and Cache-Control, no Content-Encoding and no URL made from the Host
    header (a tileset's links: server/urls.py), else None: what may be replayed."""
    start: Message | None = None
    parts: list[Message] = []

    async def watch(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = {**message, "headers": list(message.get("headers", []))}
        elif message["type"] == "http.response.body":
            parts.append(message)
        await send(message)

    await app(scope, receive, watch)
    route = scope.get("route")
    if (
        start is None
        or start["status"] != 200
        or len(parts) != 1
        or parts[0].get("more_body", False)
        or not replayable(getattr(route, "path", ""))
        or embeds_host(scope)
    ):
        return None
    headers = Headers(raw=start["headers"])
    etag, cache_control = headers.get("etag"), headers.get("cache-control")
    if etag is None or cache_control is None or "content-encoding" in headers:
        return None
    return Recorded(
        tuple(start["headers"]), parts[0].get("body", b""), etag, cache_control, route, scope.get("endpoint")
    )


class Replays:
    """The answers TileFastPath replays: tiles and maps in tables of their own, so that a few
    large maps never push out the many small tiles. The rate limit reads them too (`cost`)."""

    def __init__(self, tile_bytes: int, map_bytes: int):
        self.tiles = Recordings(tile_bytes)
        self.maps = Recordings(map_bytes)

    def table(self, path: str) -> Recordings | None:
        """The table of a request path's (or route template's) answers; None: never replayed."""
        if not replayable(path):
            return None
        return self.tiles if path.startswith(TILE_PREFIX) else self.maps

    def cost(self, scope: Scope) -> int | None:
        """The rate-limit tokens of a GET of a map that would be replayed: one a MiB it is sent (a
        byte range, its part's; a HEAD, which HttpPolicy asks as a GET, one), since it draws
        nothing; None when no map is recorded for it (a tile spends one token, drawn or not). So
        the ranges GDAL reads of a map after its first cost a token or a few, not the map's drawing."""
        if scope["method"] != "GET" or MAP_PATH.match(scope["path"]) is None:
            return None
        found = self.maps.get(tile_key(scope))
        if found is None:
            return None
        sent = 0 if scope.get(HEAD_ASKED) else bytes_sent(scope, found.etag, len(found.body))
        return max(1, math.ceil(sent / REPLAY_BYTES_PER_TOKEN))

    def clear(self) -> None:
        self.tiles.clear()
        self.maps.clear()


def tile_key(scope: Scope) -> bytes:
    """A tile or map request's raw path and query string: its answer is a function of them alone."""
    return (scope.get("raw_path") or scope["path"].encode()) + b"?" + scope.get("query_string", b"")


class TileFastPath:
    """Pure ASGI middleware: replays recorded tile and map answers keyed by raw path + query string."""

    def __init__(self, app: ASGIApp, replays: Replays):
        self.app = app
        self.replays = replays

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        table = self.replays.table(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if table is None:
            await self.app(scope, receive, send)
            return
        key = tile_key(scope)
        found = table.get(key)
        if found is None:
            recorded = await answer_of(self.app, scope, receive, send)
            if recorded is not None:
                table.put(key, recorded)
            return
        scope["route"], scope["endpoint"] = found.route, found.endpoint  # HttpPolicy labels metrics by route
        if any(name in CONDITIONS for name, _ in scope["headers"]):  # the same 412 or 304 as the route's own
            request = Request(scope)
            held = precondition_failed(request, found.etag) or not_modified(request, found.etag, found.cache_control)
            if held is not None:
                await held(scope, receive, send)
                return
        TILE_HITS.inc()  # as the route's own cache lookup counts it
        # Fresh message dicts and header lists: CORS and GZip edit the start message in place.
        await send({"type": "http.response.start", "status": 200, "headers": list(found.headers)})
        await send({"type": "http.response.body", "body": found.body})


class FrontDoor(Recordings):
    """Answers a recorded tile hit before the app's middleware stack (module docstring); every
    other request goes to `app` unchanged. Under a rate limit a hit spends its token here, waiting
    for it as RateLimit would (`Limiter.admit`); one the limit refuses goes through the stack,
    whose RateLimit answers the 429 inside the CORS policy."""

    def __init__(self, max_bytes: int, limiter: Limiter | None = None):
        super().__init__(max_bytes)
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD") or not scope["path"].startswith(TILE_PREFIX):
            await app(scope, receive, send)
            return
        origin = encoding = None  # the first of each, as Starlette's Headers.get reads them
        for name, value in scope["headers"]:
            if name == b"origin" and origin is None:
                origin = value
            elif name == b"accept-encoding" and encoding is None:
                encoding = value
            elif name in CONDITIONS or name == b"range":  # TileFastPath and ByteRanges decide, inside the policies
                await app(scope, receive, send)
                return
        key = b"\0".join((tile_key(scope), origin or b"", encoding or b""))
        found = self.get(key)
        if found is None:
            if method != "GET":
                await app(scope, receive, send)
            elif (recorded := await answer_of(app, scope, receive, send)) is not None:
                self.put(key, recorded)
            return
        # A hit waits for its token here as RateLimit would make it (with no token at hand it took
        # the whole stack before); refused, it goes on to the RateLimit inside: its 429, behind CORS
        if self.limiter is not None and await self.limiter.admit(client_key(scope), 1) is not None:
            await app(scope, receive, send)
            return
        began = time.perf_counter()
        TILE_HITS.inc()
        await send({"type": "http.response.start", "status": 200, "headers": list(found.headers)})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else found.body})
        requests, latency = request_series(found.route.path, method, 200)  # as HttpPolicy counts the normal path
        requests.inc()
        latency.observe(time.perf_counter() - began)

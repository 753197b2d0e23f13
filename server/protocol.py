"""The HTTP/1.1 protocol `soundscape serve` runs: uvicorn's httptools protocol plus the limits a
server on the open internet needs and uvicorn does not have.

- Request head (request line and headers) at most `max_header_bytes`, counted as bytes arrive,
  before the parser sees them: httptools joins a long header piece by piece, so a 100 MB header
  held the event loop (every client) for 21 s: 414 when the request line alone is over it (its
  URL is what is too long), else 431. At most `max_headers` header lines: 431.
- A head must arrive within `header_timeout_s` of the connection opening or the previous
  response ending, and a body within `body_timeout_s` of its head: a client that trickles bytes
  is answered 408 and closed (uvicorn's keep-alive timeout stops at the first byte); one that
  sent nothing is closed without an answer. A client that reads less than
  MIN_PROGRESS_BYTES of an answer in `body_timeout_s` (the socket's buffers full) is
  disconnected; one that keeps reading, however slowly, is not cut mid-body.
- At most `max_connections` open connections per worker: more are answered 503 and closed
  within a second, so idle sockets cannot exhaust file descriptors; and once a worker holds more
  than half that, an address holding more than `max_connections_per_address` (an IPv6 client's
  /64; a trusted proxy's are not counted, its clients are behind it) is refused too, so one client
  holding idle sockets cannot keep every other out, while a server that sees every client through
  one address (a proxy it does not trust, a container's port forwarding) still takes half its cap
  from it. At most `max_pipelined`
  requests wait behind the one being answered on a connection (uvicorn queues every request of
  a read: 100,000 pipelined requests grew it by 110 MB); a connection with more is dropped.
- At most `max_unsent_mb` of answers held per worker for clients whose buffers are full (an
  answer is written whole, so a 2048 px map waits in memory until its client reads it: 64 clients
  asking for one each and reading nothing took a worker from 310 MB to 2 GB). Past it the
  clients that have read nothing for longest are dropped, never the answer just written.

These refusals carry the CORS headers the app's policy gives its own answers (serve
--cors-origins): without them a page on another origin saw a network error, not the 503, its
Retry-After or the sentence.

Limits come from SOUNDSCAPE_* variables (`ConnectionLimits.from_env`, a model like
server/settings.Settings), since uvicorn builds the protocol itself in every worker; `soundscape
serve` checks them before starting; docs/reliability.md lists them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections import Counter
from functools import lru_cache
from typing import Any

from pydantic import Field
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from server.ratelimit import address_key
from server.settings import Count, CountOrZero, EnvSettings, Names, Positive, cors_origins_field

HEAD_END = b"\r\n\r\n"
# What a client with a full send buffer must read each body_timeout_s to be kept: 64 KiB, about
# 1 KiB/s at the default 60 s, far below any link that reads at all.
MIN_PROGRESS_BYTES = 64 * 1024


class ConnectionLimits(EnvSettings):
    max_header_bytes: Count = Field(
        16 * 1024, description="bytes of a request line and headers; more: 414 in the request line, else 431"
    )
    max_headers: Count = Field(100, description="header lines of a request; more: 431")
    header_timeout_s: Positive = Field(10.0, description="seconds a request head may take to arrive; then 408")
    body_timeout_s: Positive = Field(
        60.0, description="seconds a body may take to arrive (then 408) or a full send buffer may stall (then dropped)"
    )
    max_connections: Count = Field(1024, description="open connections per worker; more are answered 503")
    max_connections_per_address: Count = Field(
        64,
        description="open connections per worker from one address (IPv6: /64), trusted proxies apart, once the "
        "worker holds half max_connections; more: 503",
    )
    max_unsent_mb: Positive = Field(
        256.0, description="MB of answers a worker holds for clients not reading them; past it the stalest are dropped"
    )
    max_pipelined: CountOrZero = Field(
        32, description="requests waiting on one connection; more drop it (0: no pipelining)"
    )


class RefusalOrigins(EnvSettings):
    """The CORS origins serve's app answers (SOUNDSCAPE_CORS_ORIGINS, checked by serve), read
    again here since uvicorn builds the protocol in every worker."""

    cors_origins: Names = cors_origins_field()


@lru_cache(maxsize=1)
def process_limits() -> ConnectionLimits:
    return ConnectionLimits.from_env()


@lru_cache(maxsize=1)
def process_origins() -> tuple[str, ...]:
    return RefusalOrigins.from_env().cors_origins


# An Origin header in the raw bytes of a head not parsed yet (a connection over the cap is refused
# before its request is parsed).
RAW_ORIGIN = re.compile(rb"\r\norigin:[ \t]*([^\r\n]*?)[ \t]*\r\n", re.IGNORECASE)


@lru_cache(maxsize=1)
def trusted_networks(config: Config) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """The proxies serve trusts (`--trusted-proxies`, checked there), whose connections carry many
    clients; None when it trusts any address."""
    if not config.proxy_headers:
        return ()
    names = config.forwarded_allow_ips
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
    if "*" in names:
        return None
    return tuple(ipaddress.ip_network(n, strict=False) for n in names if n)


def is_trusted(config: Config, host: str) -> bool:
    """Whether a connection from `host` is a trusted proxy's (asked once per connection)."""
    networks = trusted_networks(config)
    if not networks:
        return networks is None  # any address, or none
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


# Per worker (one server a process): open connections by address, and the connections whose
# answers wait in memory for their client (the transport paused its writing).
ADDRESSES: Counter[str] = Counter()
STALLED: set[HardenedHttpProtocol] = set()


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the protocol answers `status`."""


class HardenedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = process_limits()
        self.reading_head = True  # between requests or inside a head: bytes count against the limit
        self.reading_body = False
        self.head_bytes = 0
        self.header_count = 0
        self.hosts = 0  # Host headers of the request read
        self.tail = b""  # last bytes of the head so far, to find its end across reads
        self.line_end: int | None = None  # where in the head the request line ends, once read
        self.deadline: asyncio.TimerHandle | None = None
        self.refusal: tuple[int, str] | None = None
        self.over_capacity: str | None = None  # the 503's sentence when the connection is over a cap
        self.write_deadline: asyncio.TimerHandle | None = None
        self.unsent = 0  # bytes queued for the client when its write deadline was armed
        self.answering: Any = None  # the request whose answer is being written
        self.address: str | None = None  # counted against max_connections_per_address
        self.read_mark = (0, 0.0)  # (bytes queued, when) the client last read MIN_PROGRESS_BYTES

    # Connection and timers ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client is not None and not is_trusted(self.config, self.client[0]):
            self.address = address_key(self.client[0])
            ADDRESSES[self.address] += 1
        # Over a cap the 503 waits for the request (at most a second), so that it is read
        # rather than lost in a reset: a socket closed before the request arrives resets it.
        self.over_capacity = self.capacity_refusal()
        self.arm(min(1.0, self.limits.header_timeout_s) if self.over_capacity else self.limits.header_timeout_s)

    def capacity_refusal(self) -> str | None:
        if len(self.connections) > self.limits.max_connections:
            return f"the server holds its limit of {self.limits.max_connections} connections; retry later"
        crowded = len(self.connections) > self.limits.max_connections // 2
        if crowded and self.address is not None and ADDRESSES[self.address] > self.limits.max_connections_per_address:
            limit = self.limits.max_connections_per_address
            return f"your address holds the server's limit of {limit} connections from one address; retry later"
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
        STALLED.discard(self)
        if self.address is not None:
            ADDRESSES[self.address] -= 1
            if not ADDRESSES[self.address]:
                del ADDRESSES[self.address]
            self.address = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client reads slower than we write: it is dropped once it reads less than
        MIN_PROGRESS_BYTES in `body_timeout_s`, or sooner when the answers waiting for their
        clients pass `max_unsent_mb`."""
        super().pause_writing()
        if self.write_deadline is None:
            self.arm_write_deadline()
        if self not in STALLED:
            STALLED.add(self)
            self.read_mark = (self.transport.get_write_buffer_size(), self.loop.time())
            self.keep_unsent_within_budget()

    def keep_unsent_within_budget(self) -> None:
        """Drop the stalled clients that have read nothing for longest until the answers waiting
        fit the budget; never this one, whose answer was just written: a client reading a large
        answer at all keeps it, and one that reads nothing is dropped by the next to stall."""
        budget = self.limits.max_unsent_mb * 2**20
        held = {p: p.transport.get_write_buffer_size() for p in STALLED}
        total = sum(held.values())
        if total <= budget:
            return
        now = self.loop.time()
        for p, size in held.items():
            if p.read_mark[0] - size >= MIN_PROGRESS_BYTES:
                p.read_mark = (size, now)
        for p in sorted(STALLED - {self}, key=lambda p: p.read_mark[1]):
            if total <= budget:
                break
            total -= held[p]
            p.drop()

    def arm_write_deadline(self) -> None:
        self.unsent = self.transport.get_write_buffer_size()
        self.write_deadline = self.loop.call_later(self.limits.body_timeout_s, self.on_write_deadline)

    def on_write_deadline(self) -> None:
        """The transport resumes writing only once a whole answer written at once (a map) has
        drained: a slow link that keeps reading it is given another period, not cut mid-body."""
        self.write_deadline = None
        if self.unsent - self.transport.get_write_buffer_size() >= MIN_PROGRESS_BYTES:
            self.arm_write_deadline()
        else:
            self.drop()

    def drop(self) -> None:
        """Close at once without an answer. Every request of the connection (the one answering
        may precede pipelined ones) is disconnected first, so the app's next send returns
        instead of writing to a dead socket."""
        STALLED.discard(self)
        for cycle in (self.answering, self.cycle, *(c for c, _ in self.pipeline)):
            if cycle is not None:
                cycle.disconnected = True
        self.pipeline.clear()
        self.transport.abort()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self.answering = cycle
        super()._start_asgi_task(cycle, app)

    def resume_writing(self) -> None:
        STALLED.discard(self)
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None
        super().resume_writing()

    def arm(self, seconds: float) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(seconds, self.on_deadline)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def on_deadline(self) -> None:
        self.deadline = None
        if self.cycle is not None and not self.cycle.response_complete and not self.reading_body:
            self.arm(self.limits.header_timeout_s)  # a pipelined request is being answered
        elif self.reading_head and self.head_bytes == 0:
            self.transport.close()  # idle: nothing to answer (a 408 could be read as the next answer)
        elif self.reading_head:
            self.refuse(408, f"the request head did not arrive within {self.limits.header_timeout_s:g} s")
        elif self.reading_body:
            self.refuse(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s")

    def refuse(self, status: int, message: str, head: bytes = b"") -> None:
        """Answer `status` with a one-sentence JSON detail (unless a response has begun) and close.
        `head`: the raw bytes of a request not parsed, where its Origin may be read."""
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if not answering:
            body = json.dumps({"detail": message}).encode()
            extra = (b"retry-after: 1\r\n" if status == 503 else b"") + self.cors_lines(head)
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[status],
                        *(n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers),
                        b"content-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\n",
                        extra,
                        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n",
                        body,
                    ]
                )
            )
        self.transport.close()

    def cors_lines(self, head: bytes) -> bytes:
        """The CORS header lines of a refusal: the app's policy's for a request from the origin
        read so far (any origin when it allows all)."""
        origins = process_origins()
        if "*" in origins:
            return b"access-control-allow-origin: *\r\naccess-control-expose-headers: Retry-After\r\n"
        parsed = [value for name, value in self.headers or () if name == b"origin"]
        origin = parsed[0] if parsed else (found.group(1) if (found := RAW_ORIGIN.search(head)) else None)
        if origin is None or origin.decode("latin-1") not in origins:
            return b""
        return (
            b"access-control-allow-origin: " + origin + b"\r\nvary: Origin\r\n"
            b"access-control-expose-headers: Retry-After\r\n"
        )

    # Reading ------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.over_capacity:
            self.refuse(503, self.over_capacity, data)
            return
        if self.reading_head and not self.head_fits(data):
            limit = self.limits.max_header_bytes
            if self.line_end is None or self.line_end > limit:
                self.refuse(414, f"the request line (method, path and query) is over {limit} bytes")
            else:
                self.refuse(431, f"the request line and headers are over {limit} bytes")
            return
        super().data_received(data)

    def head_fits(self, data: bytes) -> bool:
        """Count `data` against the head limit; False once the head, whose end may lie in this
        read (a body may follow it), runs past the limit."""
        seen = self.tail + data
        if self.line_end is None and (crlf := seen.find(b"\r\n")) >= 0:
            self.line_end = self.head_bytes + crlf - len(self.tail)
        end = seen.find(HEAD_END)
        used = len(data) if end < 0 else end + len(HEAD_END) - len(self.tail)
        self.head_bytes += used
        self.tail = seen[-(len(HEAD_END) - 1) :] if end < 0 else b""
        return self.head_bytes <= self.limits.max_header_bytes

    def send_400_response(self, msg: str) -> None:
        status, message = self.refusal or (400, "the request is not valid HTTP/1.1")
        self.refuse(status, message)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.max_headers:
            self.refusal = (431, f"the request has more than {self.limits.max_headers} header lines")
            raise _Refused
        self.hosts += name.lower() == b"host"
        if self.hosts > 1:  # RFC 9112 3.2: which one a URL, the allowed hosts or a proxy read would be a guess
            self.refusal = (400, "the request has more than one Host header")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if (version := self.parser.get_http_version()) not in ("1.0", "1.1"):  # HTTP/2.0 was answered as 1.1
            self.refusal = (505, f"HTTP/{version} is not served here: send HTTP/1.1")
            raise _Refused
        self.reading_head, self.reading_body = False, True
        self.arm(self.limits.body_timeout_s)
        super().on_headers_complete()
        if len(self.pipeline) > self.limits.max_pipelined:
            self.drop()  # answers must go in order: no room for a refusal between them
            raise _Refused

    def on_message_complete(self) -> None:
        # The next request's head may follow at once (pipelining): count it from here; its
        # timeout starts when this response ends (the app's time is not the client's).
        self.reading_head, self.reading_body = True, False
        self.head_bytes, self.header_count, self.hosts, self.tail, self.line_end = 0, 0, 0, b"", None
        self.disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.reading_head and not self.transport.is_closing():
            self.arm(self.limits.header_timeout_s)

"""Byte ranges (RFC 9110 14): a GET with `Range: bytes=...` gets 206 and that part of an answer
with a strong ETag (tiles, maps, legends: the same bytes on every request, so parts of separate
answers fit together). GDAL's `/vsicurl/` (QGIS opening a URL) reads a GeoTIFF in ranges and
gives up on a server that answers a range with the whole body, once the body is larger than the
first part it asked for (a 512 px `.tif` tile; a map's values).

One range per request: a request for several, one that does not parse, or an `If-Range` other
than the answer's ETag gets the whole answer (200), as the RFC allows; a range that starts past
the end answers 416 with `Content-Range: bytes */LENGTH`. Documents (weak ETags), errors and
gzipped answers are sent as they are."""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
MAX_HEADER = 200  # bytes of a Range or If-Range header read: longer ones are not one range


def requested(header: str, length: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) of a single `bytes=` range within `length`, clipped
    to it; (length, length) for one that cannot be satisfied (it starts past the end, or asks the
    last 0 bytes); None for none at all: a list of several or a malformed one."""
    found = RANGE.fullmatch(header.strip())
    if found is None:
        return None
    first, last = found.groups()
    if not first:  # bytes=-N: the last N bytes, none of an empty answer
        if not last:
            return None
        if int(last) == 0 or length == 0:
            return length, length
        return max(0, length - int(last)), length - 1
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= length:
        return length, length
    return start, length - 1 if not last else min(int(last), length - 1)


def range_headers(scope: Scope) -> tuple[str | None, bytes | None]:
    """A request's first Range header (None without one, or one over MAX_HEADER bytes: not one
    range) and first If-Range."""
    asked = if_range = None
    for name, value in scope["headers"]:
        if name == b"range" and asked is None:
            asked = value[: MAX_HEADER + 1].decode("latin-1")
        elif name == b"if-range" and if_range is None:
            if_range = value[: MAX_HEADER + 1]
    return (None if asked is None or len(asked) > MAX_HEADER else asked), if_range


def bytes_sent(scope: Scope, etag: str, length: int) -> int:
    """How many bytes of a 200 answer of `length` bytes and strong `etag` a GET is sent: its
    range's (none for a 416), else all of them, as ByteRanges answers it."""
    asked, if_range = range_headers(scope)
    if asked is None or (if_range is not None and if_range != etag.encode("latin-1")):
        return length
    part = requested(asked, length)
    if part is None:
        return length
    first, last = part
    return 0 if first >= length else last + 1 - first


class ByteRanges:
    """Pure ASGI middleware: answers a GET with one byte range from the whole answer the app
    gives (module docstring). Requests without a Range header pass untouched."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        asked, if_range = range_headers(scope)
        if asked is None:
            await self.app(scope, receive, send)
            return
        start: Message | None = None  # the start of an answer to range, held until its body ends
        body: list[bytes] = []

        async def held(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and rangeable(message, if_range):
                start = message
            elif start is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await answer_range(start, b"".join(body), asked, send)
            else:
                await send(message)

        await self.app(scope, receive, held)


def rangeable(start: Message, if_range: bytes | None) -> bool:
    """A 200 with a strong ETag (If-Range, when given, naming it) and no Content-Encoding."""
    if start["status"] != 200:
        return False
    headers = dict(start.get("headers", []))
    etag = headers.get(b"etag", b"")
    strong = etag.startswith(b'"')
    return strong and b"content-encoding" not in headers and (if_range is None or if_range == etag)


async def answer_range(start: Message, body: bytes, asked: str, send: Send) -> None:
    """`body` whole (200), its range (206) or a 416, as `asked` reads."""
    length = len(body)
    part = requested(asked, length)
    headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
    if part is None:
        status, headers, body = 200, [*headers, (b"content-length", str(length).encode())], body
    elif part[0] >= length:
        detail = f"range {asked!r} starts past the end of this answer's {length} bytes"
        body = json.dumps({"detail": detail}).encode()
        kept = [(k, v) for k, v in headers if k not in (b"content-type", b"etag")]
        headers = [*kept, (b"content-type", b"application/json"), (b"content-range", f"bytes */{length}".encode())]
        status, headers = 416, [*headers, (b"content-length", str(len(body)).encode())]
    else:
        first, last = part
        body = body[first : last + 1]
        status = 206
        headers = [
            *headers,
            (b"content-range", f"bytes {first}-{last}/{length}".encode()),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"accept-ranges", b"bytes")]})
    await send({"type": "http.response.body", "body": body})

"""Request bodies a client controls: read within a byte limit and a worker's memory budget, and
JSON decoded strictly (UTF-8 only, each key once, a bounded nesting), each refusal a sentence.
POST /queries (a text or a recording) and POST /statistics (a GeoJSON area) read theirs here."""

from __future__ import annotations

import json
import re

import numpy as np
from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

from server.service import Body
from server.settings import MB


def readable_size(n: int) -> str:
    """A limit as the settings and docs state it ("10 MB", "8 KiB"), with its bytes: a person
    reads the one, a client compares the other."""
    unit, name = (MB, "MB") if n >= MB else (1024, "KiB")
    return f"{n / unit:g} {name} ({n} bytes)"


async def read_capped(request: Request, limit: int, body: Body) -> bytes:
    """The request body, or 413 as soon as it passes `limit` bytes (declared or streamed); each
    chunk counted into `body`'s budget as it arrives (503 when the worker holds the budget's
    worth); 408 when a newer body took the bytes of this one, still arriving `hold_s` after it began."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the upload is {int(declared)} bytes; the limit is {readable_size(limit)}")
    chunks, size = [], 0
    try:
        with body.read:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"the upload is over the limit of {readable_size(limit)}")
                body.take(len(chunk))
                chunks.append(chunk)
    except ClientDisconnect:  # e.g. closed by the body timeout (server/protocol.py)
        raise HTTPException(400, "the connection closed before the whole body arrived") from None
    if body.cut:  # the rest of it is not read: the connection closes
        hold_s = body.budget.hold_s
        raise HTTPException(
            408,
            f"the body was still arriving {hold_s:g} s after it began while newer {body.budget.what} needed the "
            f"memory it held: send it again, whole within {hold_s:g} s",
            headers={"Connection": "close"},
        )
    body.arriving = False
    return b"".join(chunks)


# A string, to its closing quote or the body's end: matched left to right, never backtracking
# (requiring the closing quote made a body of `"\` repeated take time quadratic in its length).
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?', re.DOTALL)
NOT_A_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (brackets inside strings do not
    count), found without parsing, as json.loads recurses once per level; by regular expressions
    and numpy, not a Python loop over the body's bytes."""
    brackets = np.frombuffer(NOT_A_BRACKET.sub(b"", JSON_STRING.sub(b"", body)), np.uint8)
    if not len(brackets):
        return 0
    opens = (brackets == ord("[")) | (brackets == ord("{"))
    return int(np.cumsum(np.where(opens, 1, -1)).max(initial=0))


def load_json(body: bytes, max_depth: int, shape: str) -> object:
    """The JSON value of a body, or 422 with a sentence: nested deeper than `max_depth` (said
    with the `shape` the route takes), not UTF-8, a key given twice, or not JSON at all."""
    if json_depth(body) > max_depth:
        raise HTTPException(422, f"the JSON body nests deeper than {max_depth} levels; send {shape}")
    # UTF-8, as RFC 8259 requires (a BOM taken, as it allows): json.loads of bytes reads UTF-16 and
    # UTF-32 too. A NUL is no character of a JSON text: it is how their ASCII reads as UTF-8.
    try:
        text: str | None = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise HTTPException(
            422, "the body is not valid JSON: JSON is sent as UTF-8, not UTF-16, UTF-32 or another encoding"
        )
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _RepeatedKey as exc:  # json.loads would keep the last one silently
        raise HTTPException(422, f"the JSON body gives {str(exc)[:40]!r} more than once: give each key once") from None
    except (ValueError, RecursionError):  # also a number of more than 4300 digits
        raise HTTPException(422, "the body is not valid JSON") from None


class _RepeatedKey(Exception):
    """A JSON object naming one key twice (its args: the key)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)

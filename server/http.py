"""HTTP behaviour shared by the routes: one error shape (`{"detail": "<one sentence>"}`) for
every 4xx and 5xx, HEAD on every GET route, conditional requests, Cache-Control on successes
only, and per-route Prometheus metrics."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware, GZipResponder, IdentityResponder
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.queries import QueryError, shown

# nginx's code for "client closed the request": counted in /metrics instead of a 500.
CLIENT_CLOSED = 499
OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
# A sentence quotes a value back cut (`shown`) and is itself cut at MAX_SENTENCE_CHARS; a 422
# names each bad parameter, at most one sentence per parameter the route takes (about 15), and
# the whole detail is cut at MAX_DETAIL_CHARS: whatever the query string, the answer stays small.
MAX_SENTENCE_CHARS = 300
MAX_DETAIL_CHARS = 4096
# A sentence lists a parameter's values up to this many (the store's levels, the sources); more
# (rio-tiler's colormaps) it names by their OpenAPI schema.
MAX_LISTED = 30
# The error types of an integer parameter not written in plain decimal digits, and of a number
# parameter not written as a decimal number (server/params.py), and what each sentence adds.
INTEGER_SPELLING = "int_spelling"
NUMBER_SPELLING = "float_spelling"
SPELLINGS = {
    INTEGER_SPELLING: "written in plain decimal digits (no leading zero, sign, space or fraction)",
    NUMBER_SPELLING: "written as a decimal number (ASCII digits, a sign, a point and an exponent at most; "
    "no space or underscore)",
}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})  # others: "other"
# HttpPolicy answers a HEAD through the GET route; this scope key tells the layers inside that
# nothing but headers will be sent (the rate limit's cost of a replayed map: server/fastpath.py).
HEAD_ASKED = "soundscape.head_asked"
# RFC 9110 14.2: range handling is defined for GET only, so a HEAD's Range is ignored: it answers
# as the HEAD of the whole (a client asking a file's length with a leftover Range was told a part's).
RANGE_HEADERS = (b"range", b"if-range")
NO_STORE = "no-store"  # errors and live answers
# asctime's HTTP-date (RFC 9110 5.6.7), "Sun Nov  6 08:49:37 1994": GMT, though it names no zone.
ASCTIME = re.compile(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}")


class ErrorBody(BaseModel):
    """Every error answer (4xx and 5xx) has this shape."""

    detail: str = Field(
        description="One sentence: what was wrong and how to fix it.",
        examples=["hour must be an integer in 0..23, not '25'"],
    )


ERROR_DESCRIPTIONS = {
    400: "A Host header this server does not answer for (SOUNDSCAPE_ALLOWED_HOSTS), or a malformed request.",
    404: "Not found: outside the tile matrix set, an unknown name or an unknown query id.",
    412: "If-Match names none of this answer's strong ETags, or it changed after If-Unmodified-Since.",
    413: "The upload is too large or the audio too long.",
    415: "Not JSON, a form or audio (wav, flac, ogg, mp3).",
    422: "Invalid parameters.",
    429: "Too many requests from this client; retry after Retry-After seconds.",
    503: "Busy (large fusions running) or the query registry unavailable; retry after Retry-After.",
    507: "The query registry is full (SOUNDSCAPE_MAX_QUERIES).",
}


# OpenAPI `content` of a binary answer (an image, .npy) and of a text one (XML, Prometheus).
BINARY = {"schema": {"type": "string", "format": "binary"}}
TEXT = {"schema": {"type": "string"}}


def errors(*codes: int, notes: dict[int, str] | None = None) -> dict[int | str, dict]:
    """OpenAPI `responses` for these error statuses (`notes` replaces a default description);
    `document_errors` gives every error response the one error model."""
    notes = notes or {}
    return {code: {"description": notes.get(code, ERROR_DESCRIPTIONS[code])} for code in codes}


# What the connection (server.protocol) answers any request before a route sees it.
CONNECTION_ERRORS = {
    "408": "The request head or body did not arrive in time.",
    "414": "The request line (method, path and query) is over the server's limit in bytes.",
    "431": "The request line and headers are over the server's limit, in bytes or in header lines.",
}


def operations(document: dict) -> Iterator[dict]:
    """Every operation of an OpenAPI document, of every path and method."""
    return (operation for methods in document["paths"].values() for operation in methods.values())


def document_errors(app: FastAPI) -> None:
    """Make app.openapi() document every 4xx and 5xx response of every route, whoever declared
    it, as ErrorBody in application/json, in place of FastAPI's list-shaped 422 model (this
    server never answers that shape); the connection's 408, 414 and 431 stand on every operation, as
    any request may draw them (a schema-driven client otherwise reads them as undocumented)."""
    generate = app.openapi
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}

    def openapi() -> dict:
        document = generate()  # FastAPI caches it: the edit below runs once
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorBody" not in schemas:
            for operation in operations(document):
                for code, description in CONNECTION_ERRORS.items():
                    operation.setdefault("responses", {}).setdefault(code, {"description": description})
                for code, response in operation.get("responses", {}).items():
                    if code[0] in "45":
                        response["content"] = error_content
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            schemas["ErrorBody"] = ErrorBody.model_json_schema()
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to change the schema


def document_choices(app: FastAPI, choices: dict[str, tuple[str, Sequence[str] | Sequence[int]]]) -> None:
    """Make app.openapi() state the values of each query or path parameter the server checks
    against a list it holds (`choices`: parameter -> (schema name, values); rio-tiler's colormaps,
    the bundle's sources, the store's levels, the tile matrix sets, the collections): one named
    schema in components, referenced by every parameter of that name, so a schema-driven client
    offers only values taken and the document states the list once."""
    generate = app.openapi

    def openapi() -> dict:
        document = generate()  # FastAPI caches it: the edit below runs once
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        if all(name in schemas for name, _ in choices.values()):
            return document
        for name, values in choices.values():
            kind = "integer" if all(isinstance(value, int) for value in values) else "string"
            schemas[name] = {"type": kind, "enum": list(values), "title": name}
        for operation in operations(document):
            for parameter in operation.get("parameters", []):
                if parameter["in"] in ("query", "path") and parameter["name"] in choices:
                    parameter["schema"] = {"$ref": f"#/components/schemas/{choices[parameter['name']][0]}"}
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def error_response(
    status: int, detail: str, headers: dict[str, str] | None = None, limit: int = MAX_SENTENCE_CHARS
) -> JSONResponse:
    """The one error shape, `detail` cut at `limit` characters. Python object reprs that library
    messages carry (libsndfile's `<_io.BytesIO object at 0x...>`) become "the upload": a client
    reads no internals."""
    return JSONResponse(
        {"detail": _bounded(OBJECT_REPR.sub("the upload", detail), limit)}, status_code=status, headers=headers
    )


def _bounded(detail: str, limit: int = MAX_SENTENCE_CHARS) -> str:
    """A detail cut at `limit` characters: a value quoted back cannot make an answer large."""
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


class Refused(StarletteHTTPException):
    """A 422 whose detail names several bad parameters, each in a sentence of its own
    (`Refusals`): the detail as a whole may exceed one sentence's MAX_SENTENCE_CHARS."""

    def __init__(self, detail: str) -> None:
        super().__init__(422, detail)


class _Keeping:
    """`Refusals.on`'s context manager (a class: a generator-based one costs each tile request
    about 1 us per block)."""

    __slots__ = ("names", "refusals")

    def __init__(self, refusals: Refusals, names: str) -> None:
        self.refusals, self.names = refusals, names

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: object) -> bool:
        return exc is not None and self.refusals.keep(self.names, exc)


class Refusals:
    """The sentences of a request's bad parameters, so that one 422 names each of them: the
    parameters are checked in stages (FastAPI's own validation of each, then the server's rules in
    server/params.py), and a client fixing its URL would otherwise meet the problems one round at
    a time."""

    def __init__(self) -> None:
        self.names: set[str] = set()  # the parameters refused so far
        self._sentences: list[str] = []

    def __bool__(self) -> bool:
        return bool(self._sentences)

    def refuse(self, names: str, sentence: str) -> None:
        """Keep `sentence` about `names` (space-separated); the first sentence of a name stands."""
        if not self.names.issuperset(names.split()):
            self.names.update(names.split())
            self._sentences.append(_bounded(sentence, MAX_SENTENCE_CHARS))

    def on(self, names: str) -> _Keeping:
        """A block whose 422 is kept here instead of raised (`with refusals.on("rescale"): ...`).
        `names` are the parameters the block reads: when one of them is refused already, its
        sentence would be about a value the client did not send (a default in its place), and is
        dropped. A value the block sets is read only after `raise_any`."""
        return _Keeping(self, names)

    def keep(self, names: str, exc: BaseException) -> bool:
        """Whether `exc` is a 422 (its sentence kept, unless about a refused parameter)."""
        if isinstance(exc, StarletteHTTPException):
            status, detail = exc.status_code, str(exc.detail)
        elif isinstance(exc, QueryError):
            status, detail = exc.status, str(exc)
        else:
            return False
        if status == 422 and not self.names.intersection(names.split()):
            self.refuse(names, detail)
        return status == 422

    @property
    def detail(self) -> str:
        """One sentence naming each refusal, joined by '; '."""
        return _bounded("; ".join(self._sentences), MAX_DETAIL_CHARS)

    def raise_any(self) -> None:
        """One 422 naming every refusal, if there is one."""
        if self._sentences:
            raise Refused(self.detail)


# Caching and conditional requests ---------------------------------------------------------


@dataclass(frozen=True)
class CachePolicy:
    """How one kind of answer may be cached: its Cache-Control (None: the server's own,
    SOUNDSCAPE_CACHE_CONTROL) and its entity tag. A strong tag names exact bytes: images and .npy,
    which GZip never re-encodes. A weak one (`W/"..."`) names a JSON, XML or HTML answer, which
    GZip may send compressed under the same tag (RFC 9110 8.8.1: then only weak is honest)."""

    cache_control: str | None
    etag: Literal["strong", "weak"] | None


CachingKind = Literal["tile", "document", "page", "live"]
# The one table: every answer with a body takes its Cache-Control and ETag from here
# (`conditional`); errors are `no-store` whatever a route set (HttpPolicy).
CACHE_POLICIES: dict[CachingKind, CachePolicy] = {
    # Images and values named by their URL (tiles, basemap, legend ramps).
    "tile": CachePolicy(None, "strong"),
    # Documents named by their URL and this server's ids (TileJSON, WMTS, search, points, queries,
    # tile matrix sets, colormap names).
    "document": CachePolicy(None, "weak"),
    # The viewer and docs pages and the static files they load: they change with the server, so
    # a cache asks again each time (a 304 when unchanged).
    "page": CachePolicy("no-cache", "weak"),
    # Health, readiness, metrics: true only now.
    "live": CachePolicy(NO_STORE, None),
}


def cache_control(request: Request, kind: CachingKind) -> str:
    """The Cache-Control of a successful answer of this kind."""
    return CACHE_POLICIES[kind].cache_control or request.app.state.settings.cache_control


def body_etag(body: bytes, weak: bool) -> str:
    """An entity tag naming these bytes."""
    tag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    return "W/" + tag if weak else tag


def listed(request: Request, name: str) -> list[str] | None:
    """The elements of a list header over all its lines, None when it is not sent. RFC 9110 5.3:
    lines of one name are one comma-separated list; the first alone answered `If-Match: "x"`
    then `If-Match: <the tag>` 412, and missed a 304 the second line of If-None-Match named."""
    lines = request.headers.getlist(name)
    return [each.strip() for line in lines for each in line.split(",") if each.strip()] if lines else None


def if_none_match_tags(request: Request) -> list[str]:
    """The entity tags of If-None-Match, `*` included."""
    return listed(request, "if-none-match") or []


def not_modified(request: Request, etag: str, control: str) -> Response | None:
    """304 when the client holds this ETag already (RFC 9110 weak comparison), else None. The
    caller checks that the resource exists before, since `*` matches any current representation."""
    tags = if_none_match_tags(request)
    if "*" in tags or any(t.removeprefix("W/") == etag.removeprefix("W/") for t in tags):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": control})
    return None


def _http_date(value: str) -> datetime | None:
    """An HTTP-date in any of its three forms (RFC 9110 5.6.7: a recipient must accept them all),
    or None for one that does not parse or, but in asctime's form, names no zone (an HTTP-date is
    GMT): RFC 9110 ignores such a condition. asctime's names none and is GMT; it was ignored."""
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if date.tzinfo is None and ASCTIME.fullmatch(value):
        return date.replace(tzinfo=UTC)
    return date if date.tzinfo is not None else None


def precondition_failed(request: Request, etag: str, last_modified: str | None = None) -> Response | None:
    """412 when If-Match names none of this answer's tags (strong comparison: a weak tag never
    matches, `*` matches what exists) or, without If-Match, the answer changed after
    If-Unmodified-Since (RFC 9110 13.1.1, 13.1.4, evaluated before If-None-Match), else None.
    A client sends these to be told when the resource it holds is no longer what it is."""
    if (tags := listed(request, "if-match")) is not None:
        if "*" in tags or (not etag.startswith("W/") and etag in tags):
            return None
        return error_response(412, f"If-Match: the current ETag is {etag}")
    since = request.headers.get("if-unmodified-since")
    if since is None or last_modified is None or (limit := _http_date(since)) is None:
        return None
    modified = _http_date(last_modified)
    if modified is None or modified <= limit:
        return None
    return error_response(412, f"If-Unmodified-Since: modified since, at {last_modified}")


def unchanged_since(request: Request, response: Response, etag: str, control: str) -> Response | None:
    """304 when If-Modified-Since is at or after the response's Last-Modified (the static files'),
    else None. RFC 9110 13.1.3: only without If-None-Match, and a date that does not parse is
    ignored."""
    since, modified = request.headers.get("if-modified-since"), response.headers.get("last-modified")
    if since is None or modified is None or "if-none-match" in request.headers:
        return None
    held, changed = _http_date(since), _http_date(modified)
    if held is None or changed is None or changed > held:
        return None
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": control, "Last-Modified": modified})


def held(request: Request, etag: str, kind: CachingKind) -> Response | None:
    """The 412 or 304 a request gets from an entity tag known before its body is made (a tile's
    name), so that neither is rendered for nothing; None when the body is to be sent."""
    return precondition_failed(request, etag) or not_modified(request, etag, cache_control(request, kind))


def conditional(request: Request, response: Response, kind: CachingKind, etag: str | None = None) -> Response:
    """`response` with its kind's Cache-Control and ETag (`etag`, else its body's), a 412 when
    If-Match or If-Unmodified-Since fails (`precondition_failed`), or a 304 when
    If-None-Match already holds that tag (or, without it, If-Modified-Since is not before its
    Last-Modified). HEAD needs nothing here: HttpPolicy answers it with the GET answer, body
    dropped."""
    policy = CACHE_POLICIES[kind]
    control = cache_control(request, kind)
    response.headers["Cache-Control"] = control
    if policy.etag is None:
        return response
    etag = etag or body_etag(bytes(response.body), weak=policy.etag == "weak")
    response.headers["ETag"] = etag
    return (
        precondition_failed(request, etag, response.headers.get("last-modified"))
        or not_modified(request, etag, control)
        or unchanged_since(request, response, etag, control)
        or response
    )


# Error answers -----------------------------------------------------------------------------


def _documented_parameters(request: Request) -> dict[tuple[str, str], dict]:
    """(in, name) -> JSON schema of the matched operation's parameters, from the app's own
    OpenAPI document: the rule a sentence states is the rule the contract publishes."""
    route = request.scope.get("route")
    document = request.app.openapi()
    operation = document["paths"].get(getattr(route, "path", ""), {}).get(request.method.lower(), {})
    return {(p["in"], p["name"]): _resolved(document, p.get("schema", {})) for p in operation.get("parameters", [])}


def _resolved(document: dict, schema: dict) -> dict:
    """A parameter's schema, its reference to a named one followed (`document_choices`' lists: the
    store's levels, the sources), so that a sentence states that list."""
    reference = schema.get("$ref", "")
    return document["components"]["schemas"].get(reference.rsplit("/", 1)[-1], schema) if reference else schema


def _rule(schema: dict, error_type: str) -> str:
    """What a valid value is, in words, from a parameter's JSON schema."""
    schema = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
    if "enum" in schema and len(schema["enum"]) > MAX_LISTED:
        rule = (
            f"one of the {len(schema['enum'])} values the OpenAPI document lists as {schema.get('title', 'its enum')}"
        )
    elif "enum" in schema:
        rule = "one of " + ", ".join(str(v) for v in schema["enum"])
    else:
        kind = {
            "integer": "an integer",
            "number": "a finite number" if error_type == "finite_number" else "a number",
            "string": "a text",
            "boolean": "true or false",
        }.get(schema.get("type", ""), "a valid value")
        rule = _within(schema, kind)
    return rule + (f", {SPELLINGS[error_type]}" if error_type in SPELLINGS else "")


def _within(schema: dict, kind: str) -> str:
    """`kind` with the schema's range or length."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        return f"{kind} in {lo:g}..{hi:g}"
    if lo is not None or hi is not None:
        return f"{kind} {'>=' if lo is not None else '<='} {lo if lo is not None else hi:g}"
    if "maxLength" in schema:
        return f"{kind} of at most {schema['maxLength']} characters"
    return kind


def refuse_invalid(request: Request, problems: Sequence[dict], refusals: Refusals) -> None:
    """A sentence in `refusals` for each parameter FastAPI's validation refused (`problems`, as
    RequestValidationError.errors() lists them) with its rule, e.g. "hour must be an integer in
    0..23, not '25'"."""
    documented = _documented_parameters(request)
    for problem in problems:
        loc = [str(p) for p in problem.get("loc", ())]
        where, name = (loc[0], loc[-1]) if len(loc) > 1 else ("", loc[0] if loc else "the request")
        if problem.get("type") == "missing":
            refusals.refuse(name, f"{name} is required")
        elif (where, name) in documented:
            rule = _rule(documented[where, name], problem.get("type", ""))
            refusals.refuse(name, f"{name} must be {rule}, not {shown(problem.get('input'))}")
        else:
            message = str(problem.get("msg", "is invalid"))
            refusals.refuse(name, f"{name}: {message[:1].lower()}{message[1:]}")


async def query_error_handler(request: Request, exc: QueryError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return error_response(exc.status, str(exc), headers)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """HTTPException with our sentence; Starlette's bare phrases (unknown path, wrong method)
    become sentences that say what to do."""
    detail, headers = str(exc.detail), dict(exc.headers or {})
    if exc.status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"nothing at {request.url.path}: GET /openapi.json lists the routes"
    elif exc.status_code == 405:
        allowed = [m.strip() for m in headers.get("Allow", "").split(",") if m.strip()]
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.append("HEAD")  # HttpPolicy serves HEAD with every GET route
        headers["Allow"] = ", ".join(allowed)
        if detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
            detail = f"{request.url.path} answers {' and '.join(allowed) or 'no method'} only"
    limit = MAX_DETAIL_CHARS if isinstance(exc, Refused) else MAX_SENTENCE_CHARS
    return error_response(exc.status_code, detail, headers, limit)


async def server_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The last resort (Starlette logs the traceback): still the one error shape, never cached."""
    return error_response(500, "the server failed on this request; the error is logged", {"Cache-Control": NO_STORE})


def install_error_handlers(
    app: FastAPI, validation_error_handler: Callable[[Request, RequestValidationError], Awaitable[Response]]
) -> None:
    """Every error in the one shape (ours, FastAPI's validation, Starlette's 404/405, the rest),
    and so documented. FastAPI's validation errors go to `validation_error_handler`, which names
    the server's own refusals with them (server/params.py)."""
    document_errors(app)
    # Starlette types a handler as taking any Exception; each of these gets only the class it is registered for.
    app.add_exception_handler(QueryError, query_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, server_error_handler)


# Middleware --------------------------------------------------------------------------------


def _as_error_shape(start: Message, body: bytes) -> tuple[Message, Message]:
    """(start, body) messages of a non-JSON error answer rewritten as {"detail": ...}."""
    headers = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-type", b"content-length", b"content-encoding")
    ]
    try:
        phrase = HTTPStatus(start["status"]).phrase
    except ValueError:
        phrase = "the request failed"
    encoded = dict(start.get("headers", [])).get(b"content-encoding")
    detail = (body.decode("utf-8", "replace").strip() if not encoded else "") or phrase
    content = json.dumps({"detail": _bounded(detail)}).encode()
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    return {**start, "headers": headers}, {"type": "http.response.body", "body": content}


def _route_label(scope: Scope, root_path: str) -> str:
    """The route template that answered (a mount by its path, e.g. "/static"); "unmatched" for
    paths no route knows."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    if "endpoint" in scope:
        mounted = scope.get("root_path", "")[len(root_path) :]
        if mounted:  # a mount: the router adds its path to root_path
            return mounted
        # A plain Starlette route (FastAPI's /openapi.json) names no route in the scope: its template
        # is that of the app's route with this endpoint.
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
        endpoint = scope["endpoint"]
        return next((r.path for r in routes if getattr(r, "endpoint", None) is endpoint and hasattr(r, "path")), "/")
    return "unmatched"


_SERIES: dict[tuple[str, str, int], tuple] = {}  # bounded: route templates x METHODS x statuses


def request_series(route: str, method: str, status: int) -> tuple:
    """The request counter and latency histogram of a label set, resolved once (prometheus_client's
    `labels()` validates and locks on every call: a few us of a cache hit's ~30)."""
    found = _SERIES.get((route, method, status))
    if found is None:
        found = _SERIES[route, method, status] = (
            metrics.REQUESTS.labels(route, method, str(status)),
            metrics.LATENCY.labels(route),
        )
    return found


class HttpPolicy:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware):
    - HEAD is served by the GET route with the body dropped (same status and headers), its
      Range ignored (RANGE_HEADERS);
    - errors are never cached (`Cache-Control: no-store` replaces whatever a route set), and
      one that is not JSON yet (StaticFiles' plain-text refusal of a range) takes the one shape;
    - every request is counted per route template; a client that hung up before the answer
      is counted as 499 (nobody received what the app answered then), not as a 400 or 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        head, root_path = scope["method"] == "HEAD", scope.get("root_path", "")
        inner = scope
        if head:
            headers = [(name, value) for name, value in scope["headers"] if name not in RANGE_HEADERS]
            inner = {**scope, "method": "GET", "headers": headers, HEAD_ASKED: True}
        status: int | None = None
        hung_up = False

        async def watch_receive() -> Message:
            nonlocal hung_up
            message = await receive()
            hung_up = hung_up or (message["type"] == "http.disconnect" and status is None)
            return message

        held: Message | None = None  # the start of an error answer that is not JSON, until its body
        held_body: list[bytes] = []

        async def send_with_policy(message: Message) -> None:
            nonlocal status, held
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                    message = {**message, "headers": [*headers, (b"cache-control", NO_STORE.encode())]}
                    if not dict(headers).get(b"content-type", b"").startswith(b"application/json"):
                        held = message
                        return
            elif message["type"] == "http.response.body":
                if held is not None:
                    held_body.append(message.get("body", b""))
                    if message.get("more_body", False):
                        return
                    opening, message = _as_error_shape(held, b"".join(held_body))
                    held = None
                    await send(opening)
                if head:
                    message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(inner, watch_receive, send_with_policy)
        except ClientDisconnect:
            hung_up = True  # nobody is left to answer
        finally:
            name = _route_label(inner, root_path)
            counted = CLIENT_CLOSED if hung_up else status or 500
            method = scope["method"] if scope["method"] in METHODS else "other"  # bounded labels
            requests, latency = request_series(name, method, counted)
            requests.inc()
            latency.observe(time.perf_counter() - began)


# What each of the refusals Starlette's CORS names ("Disallowed CORS origin, method") means, said
# to the page's developer: what is not allowed, and how the server's operator allows it.
CORS_REFUSALS = {
    "origin": "the origin {origin} is not one of this server's CORS origins: its operator allows it by adding it "
    "to SOUNDSCAPE_CORS_ORIGINS (serve --cors-origins)",
    "method": "the method {method} is not one this server answers a page on another origin: {methods} only",
    "headers": "the headers {headers} are not ones this server lets a page on another origin send",
    "private-network": "this server does not let a page on a public address call it on a private one "
    "(Access-Control-Request-Private-Network)",
}
CORS_REFUSED = "Disallowed CORS "  # Starlette's refusal, before the names of what it refused


class CorsPolicy(CORSMiddleware):
    """Starlette's CORS, but a refused preflight says what is not allowed, and how it would be,
    in the one error shape: Starlette's plain-text "Disallowed CORS origin" named neither."""

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code != 400:
            return answer
        asked = {
            "origin": shown(request_headers["origin"]),
            "method": shown(request_headers["access-control-request-method"]),
            "headers": shown(request_headers.get("access-control-request-headers", "")),
            "methods": ", ".join(self.allow_methods),
        }
        refused = bytes(answer.body).decode().removeprefix(CORS_REFUSED).split(", ")
        detail = "; ".join(
            CORS_REFUSALS.get(each, f"the request's {each} is not allowed").format(**asked) for each in refused
        )
        headers = {
            name: value for name, value in answer.headers.items() if name not in ("content-type", "content-length")
        }
        return error_response(400, detail, headers, MAX_DETAIL_CHARS)


def weighted(header: str) -> Iterator[tuple[str, float]]:
    """Each entry of a header of weighted values (Accept, Accept-Encoding; RFC 9110 12.4.2):
    its value, lowercased, and its quality: 1 when none is given, 0 when it cannot be read."""
    for entry in header.split(","):
        value, *params = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(number)
                except ValueError:
                    quality = 0.0
        yield value.lower(), quality


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether Accept-Encoding names gzip (or x-gzip) with a quality above 0 (RFC 9110 12.5.3):
    `gzip;q=0` says the client cannot read it. An unreadable quality counts as 0 (identity is
    always readable); `*` alone is not taken as gzip, as Starlette never took it."""
    return any(coding in ("gzip", "x-gzip") and 0.0 < q <= 1.0 for coding, q in weighted(accept_encoding))


class NegotiatedGZip(GZipMiddleware):
    """Starlette's GZip, but by what Accept-Encoding means: Starlette looked for the substring
    "gzip", so `gzip;q=0` (or `nogzip`) got a gzipped body, and `GZIP` (codings are
    case-insensitive) did not. No image is gzipped: a tile's strong ETag names its exact bytes,
    and Starlette's list of types left out image/tiff (a GeoTIFF tile, compressed within)."""

    def __init__(self, app: ASGIApp, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self.exclude_content_types = (*self.exclude_content_types, "image/*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        accept = next((v for k, v in scope["headers"] if k == b"accept-encoding"), b"")
        responder: ASGIApp
        if gzip_accepted(accept.decode("latin-1")):
            responder = GZipResponder(
                self.app,
                self.minimum_size,
                compresslevel=self.compresslevel,
                thread_minimum_size=self.thread_minimum_size,
                exclude_content_types=self.exclude_content_types,
            )
        else:
            responder = IdentityResponder(self.app, self.minimum_size, exclude_content_types=self.exclude_content_types)
        await responder(scope, receive, vary_on_encoding(send))


def vary_on_encoding(send: Send) -> Send:
    """`send`, adding `Vary: Accept-Encoding` to every answer with a weak ETag (one GZip may
    encode) that lacks it: Starlette adds it to a body GZip considered, never to a 304 or a body
    under minimum_size, and a cache takes a 304's Vary for the stored answer's (RFC 9111 4.3.4),
    so a gzipped copy revalidated by a 304 without it was served to clients without gzip."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            if headers.get("etag", "").startswith("W/") and "accept-encoding" not in headers.get("vary", "").lower():
                headers.add_vary_header("Accept-Encoding")
        await send(message)

    return sending

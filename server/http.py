"""HTTP behaviour shared by the routes: conditional requests, Cache-Control on successes only,
query errors as 4xx, and per-route Prometheus metrics."""
from __future__ import annotations

import time

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import metrics
from server.queries import QueryError


def get_and_head(router: APIRouter, path: str, **kwargs) -> Callable:
    """Register a route for GET and HEAD as two operations (distinct OpenAPI operation ids)."""
    def register(endpoint: Callable) -> Callable:
        router.get(path, **kwargs)(endpoint)
        router.head(path, **kwargs)(endpoint)
        return endpoint

    return register


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 weak comparison of If-None-Match against our (strong) ETag."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def cached_response(request: Request, etag: str, cache_control: str) -> Response | None:
    """304 when the client holds this ETag already, else None."""
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache_control})
    return None


async def query_error_handler(request: Request, exc: QueryError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


class HttpPolicy:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): errors are never
    cached (`Cache-Control: no-store` replaces whatever a route set) and every request is
    counted per route template."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_policy(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                    message = {**message, "headers": headers + [(b"cache-control", b"no-store")]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_policy)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(name, scope["method"], str(status)).inc()
            metrics.LATENCY.labels(name).observe(time.perf_counter() - start)

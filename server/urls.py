"""The one place absolute URLs of this server are made (TileJSON, WMTS, POST /queries links), and
the one tile URL template.

Cached responses must not carry a host a client made up: with `public_url` set every URL starts
with it; otherwise the request's Host header is used only when it names one of `allowed_hosts`
(else 400), and the response gets `Vary: Host` so a shared cache keeps one copy per host.
Redirects carry a relative Location, never the Host header.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.settings import Settings

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_VARY_HOST = "vary_host"  # scope["state"] flag: this response embeds the Host header


def host_name(host: str) -> str:
    """The name of a Host header value without its port ('[::1]:8000' -> '::1')."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether the Host header names an allowed host: exact names, `.example.org` for it and
    its subdomains, or `*` for any."""
    name = host_name(host)
    if not name:
        return False
    for entry in allowed:
        entry = entry.lower()
        if entry == "*" or name == entry or (entry.startswith(".") and (name == entry[1:] or name.endswith(entry))):
            return True
    return False


def embeds_host(scope: Scope) -> bool:
    """Whether the answer to this request holds URLs made from its Host header (`base_url`): one
    that must not be replayed to a request of another host."""
    return bool(scope.get("state", {}).get(_VARY_HOST))


def base_url(request: Request) -> str:
    """Scheme, host and root path of absolute URLs in this response, without a trailing slash;
    a route works it out once per answer."""
    settings: Settings = request.app.state.settings
    if settings.public_url:
        return settings.public_url
    if not host_allowed(request.headers.get("host", ""), settings.allowed_hosts):
        raise HTTPException(
            400,
            "the Host header is not one of this server's allowed hosts "
            "(SOUNDSCAPE_ALLOWED_HOSTS), and no SOUNDSCAPE_PUBLIC_URL is set",
        )
    request.scope.setdefault("state", {})[_VARY_HOST] = True
    return str(request.base_url).rstrip("/")


def tile_template(
    base: str,
    query: str,
    tms: str | None = None,
    cell: tuple[str, str, str] = ("{z}", "{x}", "{y}"),
    fmt: str = "png",
) -> str:
    """`{base}/tiles[/{tms}]/{z}/{x}/{y}.{fmt}?{query}`: the URL template of tiles in TileJSON,
    WMTS (`cell` names its placeholders), query links and the start-up banner."""
    return f"{base}/tiles/{tms + '/' if tms else ''}{'/'.join(cell)}.{fmt}" + (f"?{query}" if query else "")


class HostPolicy:
    """Pure ASGI middleware: `Vary: Host` on a response whose URLs came from the Host header, and
    a redirect's Location made relative when it would echo that header (Starlette's trailing-slash
    redirects build it from Host: `/colormaps/` -> `http://<any host>/colormaps`)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                redirect = 300 <= message["status"] < 400
                headers = [
                    (k, _relative(v) if redirect and k.lower() == b"location" else v)
                    for k, v in message.get("headers", [])
                ]
                if embeds_host(scope):
                    vary = [v for k, v in headers if k.lower() == b"vary"]
                    if not any(b"host" in v.lower() for v in vary):
                        headers = [(k, v) for k, v in headers if k.lower() != b"vary"]
                        headers.append((b"vary", b", ".join([*vary, b"Host"])))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_policy)


def _relative(location: bytes) -> bytes:
    """`http://host/path?q` -> `/path?q` (this server only ever redirects to itself)."""
    for scheme in (b"http://", b"https://"):
        if location.lower().startswith(scheme):
            rest = location[len(scheme) :]
            slash = rest.find(b"/")
            return rest[slash:] if slash >= 0 else b"/"
    return location

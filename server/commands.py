"""`soundscape serve`: the tile server over a bundle and a store."""
from __future__ import annotations

import argparse
import errno
import os
import socket
from urllib.parse import quote

import uvicorn

from model.bundle import Bundle
from precompute.store import Store


def check_port(host: str, port: int) -> None:
    """ValueError (exit 2, one sentence) when uvicorn could not listen on host:port, before anything
    is printed; bound the way uvicorn binds (SO_REUSEADDR), then released."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is already in use: stop what listens there or pass "
                             "another --port") from None
        raise ValueError(f"cannot listen on {host}:{port} ({(exc.strerror or str(exc)).lower()}): "
                         "check --host and --port") from None


def serve(bundle: str, store: str, host: str, port: int, workers: int = 1,
          redis_url: str | None = None) -> None:
    """Check the pair, then run uvicorn; workers share nothing but Redis."""
    loaded = Bundle(bundle)
    Store(store).check_bundle(loaded.id)
    examples = loaded.manifest.get("examples") or []
    check_port(host, port)
    os.environ["SOUNDSCAPE_BUNDLE"] = str(bundle)
    os.environ["SOUNDSCAPE_STORE"] = str(store)
    if redis_url:
        os.environ["SOUNDSCAPE_REDIS_URL"] = redis_url
    if workers > 1:
        # Each worker's compute pool gets its share of the cores, so workers do not oversubscribe them.
        os.environ.setdefault("SOUNDSCAPE_COMPUTE_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        if not redis_url:
            print("note: without --redis-url each worker has its own cache, and a query registered "
                  "with POST /queries is known only to the worker that took it", flush=True)
    print(banner(f"http://{host}:{port}", examples), flush=True)
    uvicorn.run("server.asgi:create_app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="warning")


def banner(base: str, examples: list[str]) -> str:
    """Where to look first: the viewer, and tile URLs for the bundle's own example queries (its
    manifest's `examples`; without them, the query-free uncertainty layer)."""
    lines = [f"viewer:            {base}/"]
    if examples:
        q = quote(examples[0])
        lines += [f"tile URL template: {base}/tiles/{{z}}/{{x}}/{{y}}.png?q={q}",
                  f"TileJSON:          {base}/tilejson.json?q={q}",
                  "example queries:   " + "; ".join(examples)]
    else:
        lines += [f"tile URL template: {base}/tiles/{{z}}/{{x}}/{{y}}.png?q=YOUR+QUERY (or layer=uncertainty)",
                  f"TileJSON:          {base}/tilejson.json?layer=uncertainty"]
    return "\n".join(lines)


def apply_http_options(args: argparse.Namespace) -> None:
    """HTTP options travel to the workers as SOUNDSCAPE_* variables (see Settings.from_env)."""
    if args.cache_control is not None:
        os.environ["SOUNDSCAPE_CACHE_CONTROL"] = args.cache_control
    if args.cors_origins is not None:
        os.environ["SOUNDSCAPE_CORS_ORIGINS"] = args.cors_origins


def _serve(args: argparse.Namespace) -> int:
    apply_http_options(args)
    serve(args.bundle, args.store, args.host, args.port, args.workers, args.redis_url)
    return 0


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--redis-url", default=os.environ.get("SOUNDSCAPE_REDIS_URL"),
                   help="cache tiles in Redis (default: $SOUNDSCAPE_REDIS_URL, else in process)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve heatmap and uncertainty tiles",
                       description="Serve XYZ tiles, TileJSON, WMTS, search, point profiles and the "
                                   "viewer for a bundle and a store built by that bundle.")
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--store", required=True, help="embedding store directory")
    add_server_options(p)
    p.add_argument("--cache-control", help="Cache-Control of successful responses "
                                           "(default: $SOUNDSCAPE_CACHE_CONTROL, else public, max-age=86400)")
    p.add_argument("--cors-origins", help="comma-separated CORS origins, '' for none "
                                          "(default: $SOUNDSCAPE_CORS_ORIGINS, else *)")
    p.set_defaults(handler=_serve)

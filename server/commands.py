"""`soundscape serve`: the tile server over a bundle and a store."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from pathlib import Path
from urllib.parse import quote

import redis
from redis.connection import parse_url

from runtime.arguments import integer_in, parsed_by
from runtime.bundle import Bundle
from runtime.contract import PRECISIONS
from runtime.errors import UsageError
from server import pack, serving
from server.protocol import ConnectionLimits
from server.registry import SqliteRecords
from server.settings import Settings, check_variable_names
from server.urls import LOOPBACK_HOSTS, tile_template
from store.reader import Store

REDIS_PROBE_S = 1.0  # how long serve waits for Redis's answer at start, before saying it has none
# Options for a server on the open internet (docs/reliability.md); each is a SOUNDSCAPE_* variable.
INTERNET_OPTIONS = {
    "public-url": "scheme://host[:port][/prefix] that every absolute URL starts with "
    "(default: $SOUNDSCAPE_PUBLIC_URL, else built from allowed Host headers)",
    "allowed-hosts": "comma-separated Host names URLs may be built from without --public-url, "
    ".example.org for it and its subdomains (default: $SOUNDSCAPE_ALLOWED_HOSTS, "
    "else loopback names and --host)",
    "rate-limit": "per-client rate limit, e.g. '20/s burst 100 delay 2': 20 a second, 100 at once, "
    "more waiting up to 2 s (default: $SOUNDSCAPE_RATE_LIMIT, else none)",
    "trusted-proxies": "comma-separated proxy IP addresses or networks (10.0.0.5,172.16.0.0/12; * alone "
    "trusts any) whose X-Forwarded-For names the client (default: $SOUNDSCAPE_TRUSTED_PROXIES, else none)",
    "max-connections": "open connections per worker; more are answered 503 "
    "(default: $SOUNDSCAPE_MAX_CONNECTIONS, else 1024)",
}


def check_port(host: str, port: int) -> None:
    """UsageError (exit 2, one sentence) when uvicorn could not listen on host:port, before anything
    is printed; bound the way uvicorn binds (SO_REUSEADDR), then released."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use: stop what listens there or pass another --port"
            ) from None
        raise UsageError(
            f"cannot listen on {host}:{port} ({(exc.strerror or str(exc)).lower()}): check --host and --port"
        ) from None


def serve(
    bundle: str,
    store: str,
    host: str,
    port: int,
    workers: int = 1,
    redis_url: str | None = None,
    query_db: str | None = None,
    precision: str = "fp32",
) -> None:
    """Check the pair and the query registry, then run uvicorn; workers share the registry file
    and Redis."""
    loaded = Bundle(bundle, precision=precision)
    opened = Store(store)
    opened.check_bundle(loaded.id)
    check_port(host, port)
    examples = loaded.manifest.get("examples") or []
    os.environ["SOUNDSCAPE_BUNDLE"] = str(bundle)
    os.environ["SOUNDSCAPE_STORE"] = str(store)
    os.environ["SOUNDSCAPE_STORE_ID"] = opened.id  # each worker, restarted too, serves this store or none
    os.environ["SOUNDSCAPE_PRECISION"] = precision
    if query_db:
        os.environ["SOUNDSCAPE_QUERY_DB"] = str(Path(query_db).resolve())
    if redis_url:
        os.environ["SOUNDSCAPE_REDIS_URL"] = redis_url
    if workers > 1:
        # Each worker's compute pool gets its share of the cores, so workers do not oversubscribe them.
        os.environ.setdefault("SOUNDSCAPE_COMPUTE_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    settings = check_internet_options(host)
    for note in (workers_note(settings, workers), redis_note(settings.redis_url)):
        if note is not None:
            print(note, flush=True)
    ConnectionLimits.from_env()  # each worker's protocol reads them: checked here, before starting
    SqliteRecords(settings.query_db, 0).close()  # one it cannot open or write: RegistryUnavailable (exit 2)
    print(banner(f"http://{host}:{port}", examples), flush=True)
    # The protocol adds header size, header/body timeouts and a connection cap (server/protocol.py).
    config = serving.ServeConfig(
        "server.asgi:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        http="server.protocol:HardenedHttpProtocol",
        timeout_keep_alive=settings.keep_alive_s,
        backlog=settings.backlog,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        log_config=serving.LOG_CONFIG,
    )
    serving.run(config)


def workers_note(settings: Settings, workers: int) -> str | None:
    """What several workers without Redis do not share: each has its own tile cache, and counts
    a rate limit apart, so a client whose connections reach several gets up to that many times it."""
    if workers < 2 or settings.redis_url:
        return None
    if settings.rate_limit:
        return (
            f"note: without --redis-url each of the {workers} workers has its own tile cache and counts "
            f"the rate limit apart: a client may get up to {workers} times {settings.rate_limit!r}"
        )
    return "note: without --redis-url each worker has its own tile cache"


def redis_note(url: str | None) -> str | None:
    """A line when Redis does not answer as the server starts. It serves all the same, computing
    what it would have read there until Redis answers (docs/reliability.md), so a wrong
    --redis-url went unseen; the line names where it was asked, not the URL's password."""
    if not url:
        return None
    try:
        redis.Redis.from_url(url, socket_connect_timeout=REDIS_PROBE_S, socket_timeout=REDIS_PROBE_S).ping()
    except (redis.RedisError, OSError) as exc:
        found = parse_url(url)
        where = found.get("path") or f"{found.get('host', 'localhost')}:{found.get('port', 6379)}"
        return f"note: Redis at {where} does not answer ({exc}): serving without it until it does"
    return None


def check_internet_options(host: str) -> Settings:
    """The settings the SOUNDSCAPE_* variables (and so the options) give, every value checked
    before starting (a bad one: SettingsError, one sentence, exit 2); URLs may name the bind host
    unless SOUNDSCAPE_ALLOWED_HOSTS says otherwise; warn when a public bind has no public URL."""
    check_variable_names((Settings, ConnectionLimits), os.environ)
    wildcard = host in ("0.0.0.0", "::", "")
    if "SOUNDSCAPE_ALLOWED_HOSTS" not in os.environ:
        os.environ["SOUNDSCAPE_ALLOWED_HOSTS"] = ",".join((*LOOPBACK_HOSTS, *(() if wildcard else (host,))))
    settings = Settings.from_env()
    if host not in LOOPBACK_HOSTS and not settings.public_url:
        print(
            f"note: TileJSON, WMTS and query links are refused (400) for a Host header outside "
            f"{os.environ['SOUNDSCAPE_ALLOWED_HOSTS']}: set --public-url or SOUNDSCAPE_ALLOWED_HOSTS",
            flush=True,
        )
    return settings


def banner(base: str, examples: list[str]) -> str:
    """Where to look first: the viewer, and tile URLs for the bundle's own example queries (its
    manifest's `examples`; without them, the query-free uncertainty layer)."""
    lines = [f"viewer:            {base}/"]
    if examples:
        q = quote(examples[0])
        lines += [
            f"tile URL template: {tile_template(base, f'q={q}')}",
            f"TileJSON:          {base}/tilejson.json?q={q}",
            "example queries:   " + "; ".join(examples),
        ]
    else:
        lines += [
            f"tile URL template: {tile_template(base, 'q=YOUR+QUERY')} (or layer=uncertainty)",
            f"TileJSON:          {base}/tilejson.json?layer=uncertainty",
        ]
    return "\n".join(lines)


def apply_http_options(args: argparse.Namespace) -> None:
    """HTTP options travel to the workers as SOUNDSCAPE_* variables (see Settings.from_env)."""
    if args.cache_control is not None:
        os.environ["SOUNDSCAPE_CACHE_CONTROL"] = args.cache_control
    if args.cors_origins is not None:
        os.environ["SOUNDSCAPE_CORS_ORIGINS"] = args.cors_origins
    for option in INTERNET_OPTIONS:
        value = getattr(args, option.replace("-", "_"))
        if value is not None:
            os.environ[f"SOUNDSCAPE_{option.upper().replace('-', '_')}"] = str(value)


def _serve(args: argparse.Namespace) -> int:
    apply_http_options(args)
    serve(args.bundle, args.store, args.host, args.port, args.workers, args.redis_url, args.query_db, args.precision)
    return 0


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=integer_in(1, 65535), default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=integer_in(1), default=1, help="uvicorn worker processes (default 1)")
    add_service_options(p)


def add_service_options(p: argparse.ArgumentParser) -> None:
    """The options of the tile service itself: where queries are kept and which graphs run."""
    p.add_argument(
        "--redis-url",
        default=os.environ.get("SOUNDSCAPE_REDIS_URL"),
        help="cache tiles and share registered queries in Redis (default: $SOUNDSCAPE_REDIS_URL, else in process)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("SOUNDSCAPE_PRECISION", "fp32"),
        help="which of the bundle's graphs run: int8 embeds new text queries at 0.4-0.6 of "
        "fp32's CPU, for bundles exported with --int8 (default: $SOUNDSCAPE_PRECISION, else fp32)",
    )
    p.add_argument(
        "--query-db",
        default=None,
        help="SQLite file of the queries registered with POST /queries, kept across restarts "
        "(default: $SOUNDSCAPE_QUERY_DB, else queries.sqlite in $SOUNDSCAPE_DATA_DIR, else "
        "~/.local/share/soundscape-tiles/queries.sqlite, or under $XDG_DATA_HOME when set)",
    )


def shown(value: object) -> str:
    """A setting's default as a variable would spell it."""
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def variables_epilog(parser: argparse.ArgumentParser) -> str:
    """Every SOUNDSCAPE_* variable that no option of `parser` sets, with its default and what it
    sets, so `--help` names every setting of the server."""
    options = {action.dest for action in parser._actions}
    lines = ["settings without an option, as environment variables (default):"]
    for model in (Settings, ConnectionLimits):
        for name, field in model.model_fields.items():
            if name not in options and not field.is_required():
                default = "" if field.default_factory else f" ({shown(field.default)})"
                lines.append(f"  SOUNDSCAPE_{name.upper()}{default}: {field.description}")
    return "\n".join(lines)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve heatmap and uncertainty tiles",
        description="Serve XYZ tiles, TileJSON, WMTS, search, point profiles and the "
        "viewer for a bundle and a store built by that bundle.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--store", required=True, help="embedding store directory")
    add_server_options(p)
    p.add_argument(
        "--cache-control",
        help="Cache-Control of successful responses (default: $SOUNDSCAPE_CACHE_CONTROL, else "
        f"{Settings.model_fields['cache_control'].default})",
    )
    p.add_argument(
        "--cors-origins", help="comma-separated CORS origins, '' for none (default: $SOUNDSCAPE_CORS_ORIGINS, else *)"
    )
    for option, text in INTERNET_OPTIONS.items():
        p.add_argument(f"--{option}", type=integer_in(1) if option == "max-connections" else str, help=text)
    p.epilog = variables_epilog(p)
    p.set_defaults(handler=_serve)
    add_pack_command(sub)


def pack_settings(args: argparse.Namespace) -> Settings:
    """The settings `soundscape pack` runs the app with: serve's (the SOUNDSCAPE_* variables and
    the service options), but the app answers this process alone: no rate limit, no public URL,
    the in-process requests' host allowed, and a small tile cache (each tile is asked for once)."""
    check_variable_names((Settings, ConnectionLimits), os.environ)
    given = {"bundle": str(args.bundle), "store": str(args.store), "precision": args.precision}
    if args.query_db:
        given["query_db"] = str(Path(args.query_db).resolve())
    if args.redis_url:
        given["redis_url"] = args.redis_url
    return Settings.from_env(
        **given, rate_limit=None, public_url=None, allowed_hosts=(pack.HOST,), lru_mb=pack.CACHE_MB
    )


def _pack(args: argparse.Namespace) -> int:
    from server.app import create_app  # here: importing the app costs every soundscape command 0.2 s

    query = pack.map_query(args.map)
    if args.query_db and "&query=" in f"&{query}" and not Path(args.query_db).is_file():
        # a slip of its name: no id resolves, and the registry opened would be a new empty file
        raise UsageError(f"--query-db {args.query_db}: no such file; a query= id is read from the file serve keeps")
    app = create_app(pack_settings(args))  # its engine refuses a store another bundle built
    plan, count = pack.pack(app, query, Path(args.out), args.zooms, args.bbox, args.max_tiles, args.overwrite)
    low, high = plan.metadata["minzoom"], plan.metadata["maxzoom"]
    zooms = f"zoom {low}" if low == high else f"zooms {low}-{high}"
    print(f"{args.out}: {plan.count} tiles of {zooms} ({count} made by this run), {plan.metadata['name']}")
    return 0


def add_pack_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="write a map's tiles into one MBTiles or PMTiles file, or its values into a GeoTIFF, for offline use",
        description="Write the tiles of one map (a query, hour, month, source, layer and colours, as\n"
        "the tile URL's parameters name them) into an MBTiles or PMTiles file: exactly the tiles\n"
        "`serve` draws for this bundle and store, made in this process. QGIS and GDAL open\n"
        "MBTiles; web maps read PMTiles from any static web host through pmtiles.js. OUT ending\n"
        "in .tif holds the layer's values instead (float32, its .tif tiles of one zoom side by\n"
        "side) as a Cloud Optimized GeoTIFF, for GIS work. The tiles go into OUT.partial, which\n"
        "becomes OUT when complete: run the same command again to resume an interrupted run.",
        epilog="examples:\n"
        "  soundscape pack --bundle B --store S 'q=birdsong&hour=6' birdsong.mbtiles\n"
        "  soundscape pack --bundle B --store S --zooms 0-9 --bbox -10,35,30,60 \\\n"
        "      'http://127.0.0.1:8000/tiles/{z}/{x}/{y}.png?q=birdsong&layer=heatmap' europe.mbtiles\n"
        "  soundscape pack --bundle B --store S 'q=birdsong&tile_format=webp' birdsong.pmtiles\n"
        "  soundscape pack --bundle B --store S --bbox -10,35,30,60 'q=birdsong&hour=6' birdsong-values.tif",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--store", required=True, help="embedding store directory")
    p.add_argument(
        "map",
        metavar="MAP",
        help="the map's tile parameters as a query string ('q=birdsong&hour=6&layer=contrast'), or a "
        'URL holding them, such as the viewer\'s "Copy XYZ URL"; tile_format=webp for WebP tiles '
        "(default PNG)",
    )
    p.add_argument(
        "out",
        metavar="OUT",
        help="the file to write: a PMTiles archive when it ends in .pmtiles, a Cloud Optimized GeoTIFF of the "
        "values when it ends in .tif (or .tiff), else MBTiles",
    )
    p.add_argument(
        "--zooms",
        type=parsed_by(pack.zoom_argument),
        help="zooms, e.g. 0-5 or 2,4-6 (default: the store's, minzoom to maxzoom as TileJSON gives them); one "
        "zoom for a GeoTIFF (default: the store's full resolution, its finest cells 16 pixels a side)",
    )
    p.add_argument(
        "--bbox",
        type=parsed_by(pack.box_argument),
        help="west,south,east,north in degrees; west above east crosses the antimeridian (default: the store's bounds)",
    )
    p.add_argument(
        "--max-tiles",
        type=integer_in(1),
        default=pack.DEFAULT_MAX_TILES,
        help=f"refuse a map of more tiles than this (default {pack.DEFAULT_MAX_TILES})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT, once the new file is complete")
    add_service_options(p)
    p.set_defaults(handler=_pack, resumes=True)

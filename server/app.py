"""The FastAPI application: wires settings, the service, middleware and the routers
(docs/api.md describes the HTTP surface)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import faiss
import numpy as np
from fastapi import Depends, FastAPI
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES
from starlette.types import Receive, Scope, Send
from threadpoolctl import threadpool_limits

from runtime.bundle import Bundle
from server import maps
from server.engine import LAYERS, QueryMetadata
from server.fastpath import FrontDoor, Replays, TileFastPath
from server.http import CorsPolicy, HttpPolicy, NegotiatedGZip, document_choices, errors, install_error_handlers
from server.params import TMS_IDS, each_once, refuse_everything
from server.ranges import ByteRanges
from server.ratelimit import Limiter, Rate, RateLimit
from server.render import colormap_names
from server.routes import meta, queries, rest, tiles, viewer
from server.routes.viewer import STATIC, StaticAssets
from server.service import SoundscapeService
from server.settings import Settings, SettingsError
from server.urls import HostPolicy
from store.reader import Store

# What a page on another origin may read of an answer besides the CORS-safelisted headers
# (Content-Type, Content-Length, Last-Modified, ...): every response header docs/api.md tells
# clients to read. Without Content-Bbox and Content-Crs a page never saw the box and CRS of the
# map values it got, nor Retry-After on a 429 or 503.
EXPOSED_HEADERS = (
    "ETag",
    "Cache-Control",
    "Location",  # POST /queries' 201: the registered query
    "Content-Range",  # a byte range's place in the whole, which geotiff.js reads
    "Accept-Ranges",
    "Content-Bbox",  # a map's box as drawn
    "Content-Crs",
    "Retry-After",  # 429, 503
    "Allow",  # 405
)


def warm_up(service: SoundscapeService) -> None:
    """Create the onnxruntime sessions and the contrast layer's reference now, so no request pays
    for loading a graph or embedding the 24 reference prompts (~60 ms, once per worker)."""
    engine = service.engine
    engine.embed_text("warm up")
    _ = engine.reference, engine.scale_sample  # cached properties: computed here, once
    level = service.store.levels[service.store.minlevel]
    engine.fuse(level, np.arange(min(1, len(level))), QueryMetadata(hour=0))
    engine.stats.clear()


def request_cost(replays: Replays) -> Callable[[Scope], int]:
    """The rate limit's tokens for a request: a map's replay's by the bytes it is sent, anything
    else by the work it asks (a map's by its size: server/maps.py)."""

    def cost(scope: Scope) -> int:
        replayed = replays.cost(scope)
        return maps.request_cost(scope) if replayed is None else replayed

    return cost


def registry_lifespan(service: SoundscapeService) -> Callable[[SoundscapeApp], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the query registry's while the server runs (QueryRegistry.serving)."""

    @asynccontextmanager
    async def lifespan(app: SoundscapeApp) -> AsyncIterator[None]:
        async with service.registry.serving():
            yield

    return lifespan


class SoundscapeApp(FastAPI):
    """FastAPI with a front door for tiles answered before: a cache hit skips FastAPI's own
    wrappers and the middleware stack, and gets the bytes and headers they sent for the same
    request (server/fastpath.py FrontDoor)."""

    front_door: FrontDoor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front_door is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
        else:
            await self.front_door(scope, receive, send, super().__call__)


def create_app(settings: Settings) -> SoundscapeApp:
    # One BLAS thread: the small matrix products of a tile are 600x slower when OpenBLAS's
    # threads contend with the compute pool for the cores (16 ms instead of 0.03 ms, measured).
    threadpool_limits(1, user_api="blas")
    # Likewise FAISS's OpenMP threads: a top-10 search of the demo's level 7 took 16.6 ms with
    # them on a busy 2-core machine, 0.87 ms with one (benchmarks/run.py, search).
    faiss.omp_set_num_threads(1)
    bundle = Bundle(settings.bundle, threads=settings.ort_threads, precision=settings.precision)
    store = Store(settings.store)
    if settings.store_id is not None and store.id != settings.store_id:
        # A worker restarted after `precompute --overwrite` replaced the store would answer from
        # the new one while the others answer from the old: two maps under one server.
        raise SettingsError(
            f"the store at {settings.store} is now {store.id}, not the {settings.store_id} this server started "
            "with (replaced since): restart the server to serve it"
        )
    service = SoundscapeService(bundle, store, settings)
    warm_up(service)
    app = SoundscapeApp(
        title="Soundscape tiles",
        version="0.2.0",
        description="Heatmap and uncertainty tiles of where a sound is likely to be heard, "
        "with TileJSON, WMTS, search and point profiles. See docs/api.md.",
        docs_url=None,
        redoc_url=None,
        lifespan=registry_lifespan(service),
    )  # server/routes/viewer.py serves them from vendored assets
    app.state.service = service
    app.state.settings = settings
    for router in (tiles.router, queries.router, rest.router, meta.router, viewer.router):
        # host check, validation, rate limit; a parameter given twice is refused before any is read
        app.include_router(router, dependencies=[Depends(each_once)], responses=errors(400, 422, 429))
    app.mount("/static", StaticAssets(directory=STATIC), name="static")
    install_error_handlers(app, refuse_everything)
    document_choices(
        app,
        {
            "colormap_name": ("ColormapName", colormap_names()),
            "source": ("Source", bundle.sources.names),
            "level": ("Level", sorted(store.levels)),
            "tms": ("TileMatrixSetId", TMS_IDS),
            "collectionId": ("CollectionId", LAYERS),
        },
    )
    # Middleware: the last added runs first. Images and .npy are not gzipped (no gain, CPU cost).
    app.add_middleware(
        NegotiatedGZip,  # Starlette's GZip, only for clients that accept gzip
        minimum_size=500,
        compresslevel=6,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/x-npy"),
    )
    # A tile or map URL answered before is replayed here, behind every policy but GZip, which leaves
    # tiles as they are (server/fastpath.py).
    replays = app.state.replays = Replays(tile_bytes=settings.lru_bytes // 4, map_bytes=settings.lru_bytes // 8)
    app.add_middleware(TileFastPath, replays=replays)
    limiter = None
    if settings.rate_limit:  # inside CORS, so a browser can read its 429
        # The caches' Redis: one connection pool, and one breaker when Redis stops answering.
        limiter = Limiter(Rate.parse(settings.rate_limit), shared=service.redis)
        app.add_middleware(RateLimit, limiter=limiter, cost=request_cost(replays))
    # Bodies are mostly the same bytes objects as the replays'; a hit spends the limiter's token there.
    app.front_door = FrontDoor(settings.lru_bytes // 4, limiter)
    if settings.cors_origins:
        app.add_middleware(
            CorsPolicy,  # a refused preflight in a sentence
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(HostPolicy)  # Vary: Host where URLs came from it; relative redirects (server/urls.py)
    app.add_middleware(ByteRanges)  # a part of a tile or map, as GDAL's /vsicurl/ reads (server/ranges.py)
    app.add_middleware(HttpPolicy)
    return app

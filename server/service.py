"""The async side of the server: caches, single-flight and the compute thread pool around the
engine. Routes call this; it never blocks the event loop (onnxruntime, numpy and encoding run
in a bounded thread pool)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Literal, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from runtime.bundle import Bundle
from runtime.clock import clocks_at
from runtime.imagery import FILE_NODATA_REMEDY, Imagery, ImageryError, check_black_borders, is_remote
from runtime.scoring import CONTRAST_RULE
from runtime.text import normalise_text
from server import metrics, render
from server.batching import Batcher
from server.cache import BYTES, Codec, LRUCache, RedisCache, SingleFlight, TieredCache, cache_key, digest, named_key
from server.engine import (
    GRID,
    QUERY_LAYERS,
    CellEmbeddings,
    Engine,
    QueryEmbedding,
    QueryMetadata,
    Scale,
    candidate_count,
    cells_certainly_within,
    rows_within,
    split_parts,
)
from server.queries import QueryError, QueryRecord, decode_upload, shown, text_record
from server.registry import QueryRegistry
from server.settings import Settings
from store.reader import Level, Store

log = logging.getLogger(__name__)
T = TypeVar("T")
QUERY_LRU_BYTES = 32 * 1024 * 1024
# Whole levels fused under some metadata (/search with hour and month, or a source), kept in
# process: 2 MB for the demo's finest level, so a few dozen (level, metadata) pairs fit.
LEVEL_FUSION_LRU_BYTES = 128 * 1024 * 1024
FUSION_RETRY_AFTER_S = 5
# A fusion of more cells than this is "large" (bounded by settings.full_fusions): a 512 px tile
# reads 34 x 34 cells and a colour-scale sample 1024 (engine.SCALE_SAMPLE_CELLS), a whole level
# thousands.
LARGE_FUSION_CELLS = 2048
# Form and audio bodies decoded at once per worker (a decode up to ~120 MB), and as many waiting;
# more are refused with 503 rather than queued. Bodies still arriving hold no place, only the bytes received:
# at most MAX_UPLOADS x max_upload_bytes of them per worker (BodyBudget), so clients that send a
# body's first bytes and stall cannot keep everyone else's uploads out.
MAX_UPLOADS = 4
# JSON bodies (a text, at most 97 KiB: server/routes/queries.py) have a budget of their own, so
# uploads filling theirs keep no text out: 84 of the largest, hundreds of thousands of typed texts.
JSON_BODIES_BYTES = 8 * 1024 * 1024
# A body still arriving this long after it began gives the bytes it holds to a newer body that
# needs them (BodyBudget): 10 MB in 10 s is 8 Mbit/s. A client that sends most of a body and then
# stalls held them until the body timeout (60 s); now it must send a new body every 10 s.
BODY_HOLD_S = 10.0
# Maps (server/maps.py) hold their value tiles, a mosaic of them and the map until it is encoded:
# about 85 MB for a 2048 px .npy map of 100 tiles. At most this many tiles' worth (256 px tiles;
# a 512 px tile counts 4) are held by the maps drawing at once per worker, two of the largest, and
# maps of as many again eight times over wait their turn; more are refused with 503. 64 such maps
# asked at once, each holding its tiles while it waited for the compute threads, took a worker
# from 310 MB to over 2 GB.
MAP_TILES_AT_ONCE = 200
MAP_TILES_WAITING = 1600
# New texts per text graph run (server.batching): the demo's MiniLM costs 3.2 ms a text in a
# batch of 8, 3.3 in 16, 6.4 alone; a batch pads to its longest text (at most max_length tokens).
TEXT_BATCH = 8
SCALE_CACHE_ENTRIES = 4096
# The colour-scale sample's cells with float32 means, per metadata: every new query scores them,
# and widening 1,024 float16 rows at each query cost more than the scoring (BENCHMARKS.md, sixteenth
# pass). 264 KB an entry.
SCALE_SAMPLE_LRU_BYTES = 16 * 1024 * 1024
# Names the default-scale rule in tile keys and ETags: change it when the rule changes (v2: the
# uncertainty layer's store range is rounded outwards, as the percentile scales are).
DEFAULT_SCALE_KEY = "p2-p98-v2"


@dataclass(frozen=True)
class TileRequest:
    """A validated tile request; `canonical` names its content (cache key and ETag)."""

    z: int
    x: int
    y: int
    fmt: str = "png"
    size: int = 256
    layer: str = "heatmap"
    query: str | None = None  # query id (a text query is turned into its id first)
    meta: QueryMetadata = field(default_factory=QueryMetadata)
    colormap: str = "magma"
    rescale: tuple[float, float] | None = None  # None: the layer's default scale (`scale`)
    tms: str = GRID
    # An instant (UTC): each cell at its place's clock then (`meta` has no hour or month).
    moment: datetime | None = None

    def canonical(self, ids: dict) -> dict:
        styled = self.fmt not in render.VALUE_FORMATS  # .npy and .tif carry values: colours do not change them
        # The default scale is a function of the ids, query and metadata already in the key.
        rescale = (list(self.rescale) if self.rescale else DEFAULT_SCALE_KEY) if styled else None
        return {
            **ids,
            "encoders": render.ENCODERS,
            "tms": self.tms,
            "z": self.z,
            "x": self.x,
            "y": self.y,
            "fmt": self.fmt,
            "size": self.size,
            # contrast names its reference rule, so a change of it cannot serve stale tiles
            "layer": f"contrast:{CONTRAST_RULE}" if self.layer == "contrast" else self.layer,
            "query": self.query if self.layer in QUERY_LAYERS else None,
            "hour": self.meta.hour,
            "month": self.meta.month,
            "source": self.meta.source,
            "colormap": self.colormap if styled else None,
            "rescale": rescale,
            **({"moment": self.moment.isoformat()} if self.moment else {}),  # the keys of other tiles unchanged
        }


def warn_of_black_borders(imagery: Imagery) -> None:
    """Warn where a basemap mosaic's file has a black border over another file's pixels. Training
    and precompute refuse such imagery, since the cells they cut feed the model; the basemap is
    only a picture under the heatmap, so it is drawn as it is and the log says where and the fix."""
    try:
        check_black_borders(imagery, FILE_NODATA_REMEDY)
    except ImageryError as exc:
        log.warning("basemap: %s; the basemap draws that border black until then", exc)
    except Exception as exc:  # noqa: BLE001 (a thread of its own: an unreadable file is the tiles' to report)
        log.warning("basemap: the check for black borders could not read the imagery: %s", exc)


def store_imagery(store: Store) -> str | list[str] | None:
    """The imagery the store was built from (manifest["imagery"]["path"]: a file, directory or
    URL, or a list of them), each local path tried relative to the store directory (how precompute
    records it, so a store mounted elsewhere with its imagery still finds it), then as recorded
    and against the store's parent directories (older stores: relative to where precompute ran),
    then at the absolute path it was built from ("absolute"). None if any is missing."""
    record = store.manifest.get("imagery") or {}
    recorded = record.get("path")
    items, hints = _as_list(recorded), _as_list(record.get("absolute"))
    found = [_locate(str(item), store, hints[i] if i < len(hints) else None) for i, item in enumerate(items)]
    paths = [path for path in found if path is not None]
    if not paths or len(paths) < len(found):
        return None
    return paths[0] if isinstance(recorded, str) else paths


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value] if value else []


def _locate(item: str, store: Store, hint: str | None = None) -> str | None:
    if is_remote(item):
        return item
    path = Path(item)
    candidates = (
        [path]
        if path.is_absolute()
        else [store.path / path, path, *(parent / path for parent in store.path.resolve().parents)]
    )
    candidates += [Path(hint)] if hint else []
    return next((str(c.resolve()) for c in candidates if c.exists()), None)


class Places:
    """`count` of one kind of costly work at once; more wait their turn while the work waiting
    costs at most `waiting` (one a job, unless the caller counts a job's cost: a fusion's cells),
    and past that are refused at once with 503 and Retry-After. A burst waits, a flood cannot
    queue without bound, and the wait is bounded by the work ahead rather than by how many asked.
    One job always may wait, whatever its cost (its own limit is checked before it gets here)."""

    def __init__(self, count: int, what: str, why: str = "", waiting: int | None = None, unit: str = ""):
        self.count = max(1, count)
        self.waiting = self.count if waiting is None else max(1, waiting)
        self.what, self.why, self.unit = what, why, unit  # the 503's sentence
        self.queued = 0  # the cost of the jobs waiting for a place
        self._running = anyio.Semaphore(self.count)

    @asynccontextmanager
    async def place(self, cost: int = 1) -> AsyncIterator[None]:
        try:
            self._running.acquire_nowait()
        except anyio.WouldBlock:
            await self._wait(cost)
        try:
            yield
        finally:
            self._running.release()

    async def _wait(self, cost: int) -> None:
        """Wait for a place behind the jobs queued, or 503 when the wait would hold too much."""
        if self.queued and self.queued + cost > self.waiting:
            ahead = f"{self.queued} {self.unit}".strip()
            raise QueryError(
                503,
                f"{self.count} {self.what} are running and {ahead} wait (at most {self.waiting}); "
                f"retry in {FUSION_RETRY_AFTER_S} s{self.why}",
                FUSION_RETRY_AFTER_S,
            )
        self.queued += cost
        try:
            await self._running.acquire()
        finally:
            self.queued -= cost


class Budget:
    """At most `capacity` units of costly work at once (a map's tiles: their memory), first come
    first served; more wait their turn while the work waiting costs at most `waiting`, and past
    that are refused at once with 503 and Retry-After. A job over the capacity runs alone."""

    def __init__(self, capacity: int, waiting: int, what: str, unit: str):
        self.capacity, self.waiting, self.what, self.unit = capacity, waiting, what, unit
        self.used = 0  # the cost of the jobs running
        self.queue: deque[tuple[int, anyio.Event]] = deque()  # jobs waiting, in order, and their cost

    @property
    def queued(self) -> int:
        return sum(cost for cost, _ in self.queue)

    @asynccontextmanager
    async def take(self, cost: int) -> AsyncIterator[None]:
        cost = min(cost, self.capacity)
        if self.queue or self.used + cost > self.capacity:
            await self._wait(cost)
        else:
            self.used += cost
        try:
            yield
        finally:
            self._release(cost)

    async def _wait(self, cost: int) -> None:
        if self.queue and self.queued + cost > self.waiting:
            raise QueryError(
                503,
                f"{self.what} of {self.used} {self.unit} are running and {self.queued} {self.unit} wait "
                f"(at most {self.waiting}); retry in {FUSION_RETRY_AFTER_S} s",
                FUSION_RETRY_AFTER_S,
            )
        entry = (cost, anyio.Event())
        self.queue.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry in self.queue:  # cancelled while waiting: those behind it may fit now
                self.queue.remove(entry)
                self._admit()
            else:  # cancelled as its turn came: its cost was taken for it
                self._release(cost)
            raise

    def _release(self, cost: int) -> None:
        self.used -= cost
        self._admit()

    def _admit(self) -> None:
        """Start the jobs at the head of the queue that fit, in order."""
        while self.queue and (not self.used or self.used + self.queue[0][0] <= self.capacity):
            cost, event = self.queue.popleft()
            self.used += cost
            event.set()


@dataclass(eq=False)
class Body:
    """One request body in a BodyBudget, from its first byte until its request is answered: the
    bytes it holds, and the scope its read runs in (cancelled when the body is cut)."""

    budget: BodyBudget
    began: float
    read: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    held: int = 0
    arriving: bool = True  # False once the whole body is in (parsed, decoded, embedded)
    cut: bool = False  # its bytes given to a newer body: its request is answered 408

    def take(self, size: int) -> None:
        self.budget.take(self, size)


class BodyBudget:
    """The bytes of one kind of request body a worker holds at once, at most `limit`, counted as
    each chunk arrives. A body over it takes the bytes of bodies still arriving `hold_s` after they
    began, oldest first (they are cut: their reads cancelled, answered 408), where those free enough;
    else it is refused with 503 and a Retry-After of when they will: a client that sends most of a
    body and stalls holds the bytes for `hold_s`, not the body timeout. Bodies whole and being
    decoded are never cut: they let go within a few seconds."""

    def __init__(self, limit: int, what: str, hold_s: float = BODY_HOLD_S):
        self.limit, self.what, self.hold_s = limit, what, hold_s  # what: the 503's name of the bodies
        self.bodies: list[Body] = []  # oldest first
        self.held = 0

    @contextmanager
    def body(self) -> Iterator[Body]:
        """A body's place in the budget while its request is handled; its bytes let go at the end."""
        body = Body(self, time.monotonic())
        self.bodies.append(body)
        try:
            yield body
        finally:
            self.bodies.remove(body)
            self.held -= body.held

    def take(self, body: Body, size: int) -> None:
        """Count `size` more bytes of `body`, cutting bodies that held theirs `hold_s` where the
        budget is full, or 503. A cut body's chunk, arrived before its read was cancelled, is not
        counted: its request is answered 408 as its read ends."""
        if body.cut:
            return
        over = self.held + size - self.limit
        if over > 0:
            self._make_room(body, over, time.monotonic())
        body.held += size
        self.held += size

    def _make_room(self, body: Body, over: int, now: float) -> None:
        others = [other for other in self.bodies if other is not body and other.held]
        stale = [other for other in others if other.arriving and now - other.began >= self.hold_s]
        if sum(other.held for other in stale) < over:
            wait = self._free_in(others, over, now)
            raise QueryError(
                503,
                f"{self.what} being received hold {self.held} bytes (the limit is {self.limit}); retry in {wait} s",
                wait,
            )
        for other in stale:
            if over <= 0:
                break
            over -= other.held
            self.held -= other.held
            other.held, other.cut = 0, True
            other.read.cancel()

    def _free_in(self, others: list[Body], over: int, now: float) -> int:
        """Whole seconds (1 at least) until bodies holding `over` bytes may be cut, or have let go
        (a body whole is being decoded: counted as letting go at once)."""
        frees = sorted((other.began + self.hold_s if other.arriving else now, other.held) for other in others)
        freed = accumulate(held for _, held in frees)
        at = next((at for (at, _), total in zip(frees, freed, strict=True) if total >= over), now + self.hold_s)
        return max(1, math.ceil(at - now))


class SoundscapeService:
    def __init__(self, bundle: Bundle, store: Store, settings: Settings):
        self.engine = Engine(bundle, store)
        self.bundle, self.store, self.settings = bundle, store, settings
        # How cached values are stored in Redis (the LRU keeps the objects); reading checks the
        # bundle's dims, so an entry of another layout is a miss, never a broadcasting error.
        dim = bundle.embed_dim
        self.cells_codec: Codec[CellEmbeddings] = Codec(
            CellEmbeddings.to_bytes, partial(CellEmbeddings.from_bytes, dim=dim)
        )
        self.queries_codec: Codec[tuple[QueryRecord, QueryEmbedding]] = Codec(
            lambda v: v[0].to_bytes(v[1]), partial(QueryRecord.from_bytes, dim=dim)
        )
        shared = RedisCache(settings.redis_url, settings.cache_ttl_s) if settings.redis_url else None
        self.redis = shared
        self.tiles = TieredCache(LRUCache(settings.lru_bytes), shared)
        self.queries = TieredCache(LRUCache(QUERY_LRU_BYTES), shared)  # embeddings, evictable
        # Records the registry holds, as this process resolved or registered them: `query=` ids
        # resolve from here or the registry only, never from an embedding a q= merely cached.
        self.registered = LRUCache(QUERY_LRU_BYTES)
        self.registry = QueryRegistry(settings.query_db, settings.max_queries, settings.redis_url)
        self._scales: OrderedDict[tuple, Scale] = OrderedDict()
        self.scale_cells = LRUCache(SCALE_SAMPLE_LRU_BYTES)
        self.flight = SingleFlight()
        self.limiter = anyio.CapacityLimiter(max(1, settings.compute_threads))
        # New texts that arrive while the compute threads embed others are embedded together
        self.text_batcher: Batcher[str, QueryEmbedding] = Batcher(
            lambda texts: self.run(self.engine.embed_texts, texts), TEXT_BATCH, max(1, settings.compute_threads)
        )
        self.level_fusions = TieredCache(LRUCache(LEVEL_FUSION_LRU_BYTES))
        self.large_fusions = Places(
            settings.full_fusions,
            "large fusions",
            " (an hour with a month, or a source, is fused on demand)",
            waiting=settings.fusion_queue_cells,
            unit="cells",
        )
        self.fusion_limiter = anyio.CapacityLimiter(max(1, settings.full_fusions * settings.fusion_threads))
        self.upload_limiter = anyio.CapacityLimiter(2)
        self.decodes = Places(MAX_UPLOADS, "decodes of uploads")
        self.map_tiles = Budget(MAP_TILES_AT_ONCE, MAP_TILES_WAITING, "maps", "tiles")
        self.upload_bodies = BodyBudget(MAX_UPLOADS * settings.max_upload_bytes, "uploads")
        self.json_bodies = BodyBudget(JSON_BODIES_BYTES, "JSON bodies")
        self.ids = {"bundle": bundle.id, "store": store.id}
        # Text query ids name the graph that embeds them: an int8 server's query means differ a
        # little from fp32's, so servers of both precisions sharing a Redis never share an entry.
        self.text_namespace = bundle.id if bundle.precision == "fp32" else f"{bundle.id}/{bundle.precision}"
        self.imagery = self._open_imagery()
        # What a basemap tile's bytes depend on beyond z/x/y/size: stores that read one file
        # otherwise (other bands, nodata, rescale), the file rewritten, another WebP encoder.
        self.basemap_key = (
            {}
            if self.imagery is None
            else {
                "imagery": self.imagery.source,
                "reading": self.imagery.reading(),
                "files": self.imagery.file_stamps(),
                "encoders": render.ENCODERS,
            }
        )

    @property
    def stats(self):
        return self.engine.stats

    def _open_imagery(self) -> Imagery | None:
        """The basemap raster (settings.imagery, else the store's own), None if unreadable."""
        path = self.settings.imagery or store_imagery(self.store)
        if path is None:
            record = self.store.manifest.get("imagery") or {}
            if not record.get("path"):  # a store of no imagery (`soundscape store synth`): nothing to find
                log.info("no basemap: the store records no imagery; SOUNDSCAPE_IMAGERY sets one for /basemap")
                return None
            log.warning(
                "no basemap: the store's imagery %s is not found relative to %s (built from %s); "
                "set SOUNDSCAPE_IMAGERY to the imagery file to serve /basemap",
                record.get("path"),
                self.store.path,
                record.get("absolute", "an unrecorded path"),
            )
            return None
        record = {} if self.settings.imagery else self.store.manifest.get("imagery") or {}
        try:  # the store's own imagery is read as precompute read it: nodata, rescale range, bands
            imagery = Imagery.as_described(path, record)
        except ImageryError as exc:
            log.warning("no basemap: %s; set SOUNDSCAPE_IMAGERY to a readable imagery file", exc)
            return None
        # Off the start-up path: the check reads every file's edges (tens of ms a file), which for a
        # mosaic of thousands would hold up each worker's start for a warning.
        threading.Thread(target=warn_of_black_borders, args=(imagery,), name="basemap-borders", daemon=True).start()
        return imagery

    async def run(self, fn: Callable, *args):
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def cached(
        self, cache: TieredCache, kind: str, key: str, compute: Callable[[], Awaitable[T]], codec: Codec[T]
    ) -> T:
        """Cache lookup; on a miss compute once for all concurrent callers, then store."""
        value = await cache.get(key, codec)
        metrics.CACHE.labels(kind, "miss" if value is None else "hit").inc()
        if value is not None:
            return value

        async def fill() -> T:
            return await cache.set(key, await compute(), codec)

        return await self.flight.run(key, fill)

    # Queries ---------------------------------------------------------------------------------
    @staticmethod
    def _query_key(query_id: str) -> str:
        return f"st:query:{query_id}"

    async def _embed(
        self, record: QueryRecord, embed: Callable[[], Awaitable[QueryEmbedding]]
    ) -> tuple[QueryRecord, QueryEmbedding]:
        """The record with its embedding, cached (a cache entry: evictable, recomputed on a miss)."""

        async def compute() -> tuple[QueryRecord, QueryEmbedding]:
            embedding = await embed()
            metrics.COMPUTE.labels(f"{record.kind}_encoding").inc()
            return record, embedding

        return await self.cached(self.queries, "query", self._query_key(record.id), compute, self.queries_codec)

    async def text_query(self, text: str, register: bool = False) -> tuple[QueryRecord, QueryEmbedding]:
        """A text's record and embedding; `register` also stores it durably (POST /queries)."""
        record = text_record(self.text_namespace, text)
        normal = record.text
        assert normal is not None  # a text record holds its normalised text
        found = await self._embed(record, lambda: self._embed_text(normal))
        if register:
            await self._register(found)
        return found

    async def _register(self, found: tuple[QueryRecord, QueryEmbedding]) -> None:
        """Store a record durably (RegistryError if it cannot be) and resolve its id from now on."""
        body = self.queries_codec.encode(found)
        await self.registry.put(found[0].id, body)
        self.registered.set_now(self._query_key(found[0].id), found, len(body))

    async def _embed_text(self, normal: str) -> QueryEmbedding:
        """A new text's embedding (422 for a text the model cannot embed: `check_text`)."""
        self.check_text(normal)
        return await self.text_batcher(normal)

    def check_text(self, text: str) -> None:
        """422 for a text whose tokens the model all fails to know (control characters, a script
        or symbols outside its vocabulary): it would embed as the empty text, a map of nothing the
        user asked for. A tokenizer pass, no embedding: `If-None-Match: *` asks it of a tile."""
        if not self.bundle.tokenizer.known_tokens(text):
            raise QueryError(
                422, f"text {shown(normalise_text(text))} holds no word the text model knows (e.g. birdsong)"
            )

    async def audio_query(self, data: bytes) -> tuple[QueryRecord, QueryEmbedding]:
        """Decode, embed and register an audio upload (only registered ids can reach it later)."""
        # Decoding holds up to MAX_DECODED_SAMPLES floats (server/queries.py): two at a time.
        decoded = await anyio.to_thread.run_sync(
            decode_upload,
            self.bundle.id,
            data,
            self.bundle.audio_spec.sample_rate,
            self.settings.max_audio_s,
            limiter=self.upload_limiter,
        )
        found = await self._embed(
            decoded.record, lambda: self.run(self.engine.embed_wave, decoded.wave, decoded.sample_rate)
        )
        await self._register(found)
        return found

    async def resolve(self, query_id: str) -> tuple[QueryRecord, QueryEmbedding]:
        """A registered query id's record: as resolved before, else from the durable registry; 404
        when unknown. The embedding cache is not asked: it also holds the texts of q= (not
        registrations), whose ids would resolve only until the entry is evicted or the server
        restarts, so a saved link would work for a while and then die."""
        key = self._query_key(query_id)
        found = self.registered.get_now(key)
        if found is None:
            body = await self.registry.get(query_id)
            if body is None:
                raise QueryError(404, f"unknown query id {query_id!r}: register the query with POST /queries")
            found = self.queries_codec.decode(body)
            self.registered.set_now(key, found, len(body))
        return found

    async def layer_query(self, layer: str, query_id: str | None, text: str | None) -> QueryEmbedding | None:
        """The embedding a layer is drawn for: the heatmap's or contrast's query (a text `q=` is
        embedded on a miss, an id resolved), None for the uncertainty layer."""
        if layer not in QUERY_LAYERS:
            return None
        if text is not None:
            return (await self.text_query(text))[1]
        assert query_id is not None  # server.params asks a query layer for q= or query=
        return (await self.resolve(query_id))[1]

    async def _sample_values(
        self, layer: str, query: QueryEmbedding | None, meta: QueryMetadata, moment: datetime | None = None
    ) -> np.ndarray:
        """The layer's values over the colour-scale sample under `meta` (at `moment`)."""
        return self.engine.values(await self._scale_cells(meta, moment), layer, query)  # ~0.05 ms: less than a hop

    async def _scale_cells(self, meta: QueryMetadata, moment: datetime | None = None) -> CellEmbeddings:
        """The colour-scale sample's cells under `meta`, each at its clock at `moment` if given
        (their fusion is cached), their means widened to float32 once: scored alike, as the
        scoring widens them first."""
        key = f"{meta.hour}/{meta.month}/{meta.source}" + (f"/{moment.isoformat()}" if moment else "")
        found = self.scale_cells.get_now(key)
        if found is None:
            level, rows = self.engine.scale_sample
            block = {"level": level.level, "scale_sample": len(rows)}
            cells = await (
                self.cells(level, rows, meta, block)
                if moment is None
                else self.cells_at(level, rows, meta, moment, block)
            )
            found = CellEmbeddings(cells.mu.astype(np.float32), cells.s)
            self.scale_cells.set_now(key, found, found.mu.nbytes + found.s.nbytes)
        return found

    async def scale(
        self,
        layer: str,
        query_id: str | None,
        query: QueryEmbedding | None,
        meta: QueryMetadata,
        moment: datetime | None = None,
    ) -> Scale:
        """The layer's default colour scale under `meta` (each cell at its clock at `moment`, if
        given): for the heatmap (contrast) the 2nd-98th percentile of this query's match
        probability (contrast) over the scale sample (one scale for every tile and zoom of the query
        and metadata); for uncertainty the store's fixed S range, so hours and months compare.
        Either rounded outwards alike (round_scale). Cached per (layer, query, metadata, moment)."""
        key = (layer, query_id, meta, moment)
        found = self._scales.get(key)
        if found is not None:
            self._scales.move_to_end(key)
            return found
        values = await self._sample_values(layer, query, meta, moment)
        scale = self.engine.default_scale(values) if layer in QUERY_LAYERS else self.engine.uncertainty_scale(values)
        self._scales[key] = scale
        while len(self._scales) > SCALE_CACHE_ENTRIES:
            self._scales.popitem(last=False)
        return scale

    async def tile_scale(self, request: TileRequest, text: str | None) -> Scale:
        """The scale a tile request draws with: its `rescale`, or the layer's default."""
        query = await self.layer_query(request.layer, request.query, text)
        if request.rescale is None:
            return await self.scale(request.layer, request.query, query, request.meta, request.moment)
        values = await self._sample_values(request.layer, query, request.meta, request.moment)
        return Scale.over(values, *request.rescale)

    # Cells -----------------------------------------------------------------------------------
    async def cells(self, level: Level, index: np.ndarray, meta: QueryMetadata, block: dict) -> CellEmbeddings:
        """Embeddings of `index` under `meta`: stored, or fused and cached per (block, metadata).
        Stored cells are read in the event loop: a tile's window or the scale sample (1,024 rows)
        is a copy of 0.02-0.1 ms, less than the ~0.16 ms of CPU a thread-pool hop costs, and numpy
        holds the GIL for it either way (BENCHMARKS.md, tenth pass); on a cold page cache a tile of
        a 4 M-cell store held the loop up to 1.6 ms (eleventh pass)."""
        stored = self.engine.stored(level, index, meta)
        if stored is not None:
            return stored

        key = cache_key("fused", {**self.ids, **block, "hour": meta.hour, "month": meta.month, "source": meta.source})
        return await self.cached(self.tiles, "fused", key, lambda: self.fuse(level, index, meta), self.cells_codec)

    async def cells_at(
        self, level: Level, index: np.ndarray, meta: QueryMetadata, moment: datetime, block: dict | None = None
    ) -> CellEmbeddings:
        """Embeddings of `index` under `meta`, each cell at the hour and month its place's clocks
        show at `moment` (runtime.clock, at the cell's centre), in one fusion: cached per (block,
        moment) as `cells` caches its own, or, without a block, one bounded large fusion (a whole
        level or a bbox's rows for /search). No store holds a fusion of an hour and a month
        together, so none is read."""
        if len(index) == 0:
            return CellEmbeddings(np.asarray(level.arrays.mu[:0]), np.asarray(level.arrays.s[:0]))
        lonlat = np.asarray(level.arrays.lonlat[index])
        clocks = np.stack(await self.run(clocks_at, moment, lonlat[:, 1], lonlat[:, 0]), axis=1)
        if block is None:
            return await self.fuse(level, index, meta, large=True, clocks=clocks)
        key = cache_key("fused", {**self.ids, **block, "moment": moment.isoformat(), "source": meta.source})
        fill = partial(self.fuse, level, index, meta, clocks=clocks)
        return await self.cached(self.tiles, "fused", key, fill, self.cells_codec)

    async def fuse(
        self,
        level: Level,
        index: np.ndarray,
        meta: QueryMetadata,
        large: bool = False,
        clocks: np.ndarray | None = None,
    ) -> CellEmbeddings:
        """The fusion of `index` under `meta`, run in the compute pool. A large one (a whole level
        for /search, or over LARGE_FUSION_CELLS) costs up to seconds of CPU: at most
        `settings.full_fusions` run at once and others wait while the cells waiting number at most
        `settings.fusion_queue_cells`; more are refused with 503, so requests with many distinct
        metadata values cannot take the cores from tiles, and a search waits no longer than the
        work ahead of it takes."""
        if not large and len(index) <= LARGE_FUSION_CELLS:
            metrics.COMPUTE.labels("fusion").inc()
            return await self.run(self.engine.fuse, level, index, meta, True, clocks)
        async with self.large_fusions.place(len(index)):
            metrics.COMPUTE.labels("fusion").inc()
            return await self.fuse_in_parallel(level, index, meta, clocks)

    async def fuse_in_parallel(
        self, level: Level, index: np.ndarray, meta: QueryMetadata, clocks: np.ndarray | None = None
    ) -> CellEmbeddings:
        """One large fusion split over `settings.fusion_threads` threads, outside the compute
        pool (a worker's share of the cores): a whole level of the demo (16,384 cells) is about
        0.4 s of CPU, its answer waits on all of it, and only `settings.full_fusions` run at once."""
        parts = split_parts(np.arange(len(index)), self.settings.fusion_threads)
        fused: list[CellEmbeddings | None] = [None] * len(parts)

        async def part(i: int) -> None:
            at = parts[i]
            fused[i] = await anyio.to_thread.run_sync(
                self.engine.fuse,
                level,
                index[at],
                meta,
                False,
                None if clocks is None else clocks[at],
                limiter=self.fusion_limiter,
            )

        async with anyio.create_task_group() as group:
            for i in range(len(parts)):
                group.start_soon(part, i)
        self.stats["fusions"] += 1
        return CellEmbeddings.concat([f for f in fused if f is not None])

    # Tiles -----------------------------------------------------------------------------------
    def tile_name(self, request: TileRequest) -> str:
        """The hash of the tile's canonical parameters, worked out once per request: quoted, the
        tile's ETag; prefixed, its cache key."""
        return digest(request.canonical(self.ids))

    async def tile(
        self,
        request: TileRequest,
        text: str | None = None,
        name: str | None = None,
        draw: Callable[[], Awaitable[bytes]] | None = None,
    ) -> bytes:
        """Encoded tile; `text` is the raw q= of a text query (embedded on a miss); `name` is
        `tile_name(request)` when the caller has it already; `draw` renders a tile of another
        tile matrix set than the grid (server/maps.py), cached as the grid's are."""
        key = named_key("tile", name or self.tile_name(request))
        return await self.cached(self.tiles, "tile", key, draw or (lambda: self._render(request, text)), BYTES)

    async def _render(self, r: TileRequest, text: str | None) -> bytes:
        query = await self.layer_query(r.layer, r.query, text)
        window = self.engine.window(r.z, r.x, r.y, r.size)  # ~0.17 ms, in the loop as `cells`
        lo, hi = r.rescale or (0.0, 1.0)  # .npy and .tif carry values: their colours are never drawn
        if r.rescale is None and r.fmt not in render.VALUE_FORMATS and not window.empty:
            scale = await self.scale(r.layer, r.query, query, r.meta, r.moment)
            lo, hi = scale.lo, scale.hi
        # A tile with no cell is all no-data, in its format and, for a GeoTIFF, at its place
        cells = None
        if not window.empty:
            if r.moment is None:
                cells = await self.cells(window.level, window.present, r.meta, window.key)
            else:
                cells = await self.cells_at(window.level, window.present, r.meta, r.moment, window.key)
            metrics.COMPUTE.labels("render").inc()

        def draw() -> bytes:
            values = render.empty(r.size) if cells is None else self.engine.tile_values(window, cells, r.layer, query)
            return render.encode(values, r.fmt, lo, hi, r.colormap, (r.z, r.x, r.y), r.layer)

        return await self.run(draw)

    async def basemap(self, z: int, x: int, y: int, size: int) -> bytes | None:
        """A WebP tile of the store's imagery (the viewer's basemap) of `size` pixels a side, or
        None without imagery."""
        imagery = self.imagery
        if imagery is None:
            return None

        def draw() -> bytes:
            cell = imagery.cell(z, x, y, size, min_valid=0.0)  # draw whatever part has imagery
            if cell is None:
                return render.encode_rgba_webp(np.zeros((size, size, 3), np.uint8), np.zeros((size, size), bool))
            return render.encode_rgba_webp(cell.rgb, cell.valid)

        key = cache_key("basemap", {**self.basemap_key, "z": z, "x": x, "y": y, "size": size})
        return await self.cached(self.tiles, "basemap", key, lambda: self.run(draw), BYTES)

    # Points and search ----------------------------------------------------------------------
    def level(self, level: int | None) -> Level:
        if level is None:
            return self.store.levels[self.store.maxlevel]
        if level not in self.store.levels:
            raise QueryError(422, f"level must be one of the store's levels {sorted(self.store.levels)}")
        return self.store.levels[level]

    async def point(
        self, lon: float, lat: float, level: Level, meta: QueryMetadata, query: QueryEmbedding
    ) -> dict | None:
        """Score, contrast and S of the cell at (lon, lat), with its 24-hour and 12-month profiles
        and its values under each source. Each profile is read once: the cell under `meta` is
        its row of one of them."""
        row = await self.run(self.engine.cell_at, lon, lat, level)
        if row is None:
            return None
        runs = {axis: await self.profile(level, row, meta, axis) for axis in ("hour", "month")}
        here = await self.cell(level, row, meta, runs)
        hours = runs["hour"]
        # With an hour and a month, `here` is its row of the hours' run: the months' entry of the
        # month asked reads it too (each other month is its own run's row, of the same tokens).
        months = runs["month"].with_row(None if meta.month is None else meta.month - 1, here)
        # cell_values: each entry's number as the cell alone reads it, whatever the batch beside it
        scores = await self.run(self.engine.cell_values, CellEmbeddings.concat([here, hours, months]), "heatmap", query)
        by_source = await self.by_source(level, row, meta, query, here)

        def profile(cells: CellEmbeddings, values: np.ndarray, name: str, first: int) -> list[dict]:
            return [
                {name: first + i, "score": float(v), "uncertainty": float(s)}
                for i, (v, s) in enumerate(zip(values, cells.s, strict=True))
            ]

        lon_c, lat_c = (float(v) for v in level.arrays.lonlat[row])
        return {
            "cell": {"level": level.level, "lon": lon_c, "lat": lat_c},
            "score": float(scores[0]),
            "uncertainty": float(here.s[0]),
            "hours": profile(hours, scores[1:25], "hour", 0),
            "months": profile(months, scores[25:], "month", 1),
            "contrast": next(entry["contrast"] for entry in by_source if entry["source"] == meta.source),
            "by_source": by_source,
        }

    async def by_source(
        self, level: Level, row: int, meta: QueryMetadata, query: QueryEmbedding, here: CellEmbeddings
    ) -> list[dict]:
        """The cell's score, contrast and S under the unknown source and each of the bundle's
        sources (hour and month as given), each as the /point of that source reads it (`cell`);
        `here` is the cell under `meta`'s own source."""
        entries = []
        for source in (None, *self.bundle.sources.names):
            cells = here if source == meta.source else await self.cell(level, row, replace(meta, source=source))
            score = self.engine.cell_values(cells, "heatmap", query)
            contrast = await self.run(self.engine.cell_values, cells, "contrast", query)
            entries.append(
                {
                    "source": source,
                    "score": float(score[0]),
                    "contrast": float(contrast[0]),
                    "uncertainty": float(cells.s[0]),
                }
            )
        return entries

    async def cell(
        self, level: Level, row: int, meta: QueryMetadata, runs: dict[str, CellEmbeddings] | None = None
    ) -> CellEmbeddings:
        """The cell under `meta` as /point reports it (its score, and its `by_source` entries): with
        an hour, its row of the 24-hour profile; with a month alone, its row of the 12-month one;
        so a profile's entry and the /point of its hour (month) are one computation, whatever the
        fusion graph's batch does to its numbers. Else stored, or fused alone. `runs`: the
        profiles under `meta` by axis, where the caller has read them."""
        if meta.hour is not None:
            axis, i = "hour", meta.hour
        elif meta.month is not None:
            axis, i = "month", meta.month - 1
        else:
            return await self.cells(level, np.asarray([row]), meta, {"level": level.level, "rows": [row]})
        run = (runs or {}).get(axis)
        return (run if run is not None else await self.profile(level, row, meta, axis)).row(i)

    async def profile(self, level: Level, row: int, meta: QueryMetadata, axis: str) -> CellEmbeddings:
        """The cell at each hour (`axis` "hour", month and source as in `meta`) or each month: the
        store's fusion where it holds one (as a tile, /search or /point?hour= read it), else its
        row of one fused run of the axis (Engine.fuse_profile, ~0.8 ms), cached per cell and the
        metadata the run holds, so every hour's /point of a cell reads the same run."""
        values = range(24) if axis == "hour" else range(1, 13)
        index = np.asarray([row])
        stored = [self.engine.stored(level, index, meta.at(axis, v)) for v in values]
        if all(cells is not None for cells in stored):
            return CellEmbeddings.concat([cells for cells in stored if cells is not None])
        held = meta.at(axis, None)
        key = cache_key(
            "fused",
            {**self.ids, "level": level.level, "row": row, "profile": axis}
            | {"hour": held.hour, "month": held.month, "source": held.source},
        )
        run = await self.cached(
            self.tiles, "fused", key, lambda: self._fuse_profile(level, row, held, axis), self.cells_codec
        )
        return CellEmbeddings.concat([cells if cells is not None else run.row(i) for i, cells in enumerate(stored)])

    async def _fuse_profile(self, level: Level, row: int, meta: QueryMetadata, axis: str) -> CellEmbeddings:
        metrics.COMPUTE.labels("fusion").inc()
        return await self.run(self.engine.fuse_profile, level, row, meta, axis)

    async def search(
        self,
        level: Level,
        meta: QueryMetadata,
        query: QueryEmbedding,
        k: int,
        exact: bool = False,
        within: np.ndarray | None = None,
    ) -> tuple[np.ndarray, CellEmbeddings, int]:
        """Rows and embeddings of the k best cells under `meta`, best first, and how many cells
        were ranked: all of the level where its embeddings under `meta` are stored or fused
        already, or `exact` asks (a bounded large fusion); else the engine's candidates. With
        `within` (a bbox's rows), every one of those rows and no other."""
        if within is not None:
            return await self.search_within(level, meta, query, k, within)
        if meta.is_default:
            return (*await self.run(self.engine.top_k, level, None, query, k), len(level))
        count, limit = candidate_count(k, len(level)), self.settings.max_search_cells
        whole: CellEmbeddings | None = None
        if len(level) <= limit:  # a level's every cell is scanned only up to the limit
            whole = await self.run(self.engine.stored, level, np.arange(len(level)), meta)
            if whole is None:
                whole = await self.level_fusions.get(self._fused_level_key(level, meta), self.cells_codec)
        if whole is None and not exact and count is not None:
            rows = await self.run(self.engine.candidates, level, meta, query, count, limit)
            # Cached and shared like a fused level: the same search at once fuses once.
            key = cache_key(
                "candidates",
                {
                    "of": self._fused_level_key(level, meta),
                    "query": digest({"q": query.to_bytes().hex()}),
                    "count": count,
                },
            )
            cells = await self.cached(
                self.level_fusions,
                "candidates",
                key,
                lambda: self.fuse(level, rows, meta, large=True),
                self.cells_codec,
            )
            best, top = await self.run(self.engine.top_k, level, cells, query, k)
            return rows[best], top, len(rows)
        if len(level) > limit:
            raise QueryError(
                422,
                f"level {level.level} has {len(level)} cells; searching it exactly under "
                f"hour/month/source fuses every cell (limit {limit}): pass a coarser level= or a bbox= "
                "(or leave exact= out; rank_by=contrast with a source always searches exactly)",
            )
        cells = whole if whole is not None else await self.fused_level(level, meta)
        return (*await self.run(self.engine.top_k, level, cells, query, k), len(level))

    async def search_at(
        self,
        level: Level,
        meta: QueryMetadata,
        moment: datetime,
        query: QueryEmbedding,
        k: int,
        within: np.ndarray | None = None,
    ) -> tuple[np.ndarray, CellEmbeddings, int]:
        """The k best cells of the level (of `within`, a bbox's rows), each at the hour and month its
        place's clocks show at `moment`, and how many were ranked: every one of them, as an exact
        search ranks them (one bounded fusion of at most `settings.max_search_cells`)."""
        rows = np.arange(len(level)) if within is None else within
        if len(rows) > self.settings.max_search_cells:
            raise (
                self.too_many_cells(level, str(len(rows)))
                if within is not None
                else QueryError(
                    422,
                    f"level {level.level} has {len(level)} cells; a search at an instant ranks every cell at its "
                    f"own clock (limit {self.settings.max_search_cells}): pass a coarser level= or a bbox=",
                )
            )
        cells = await self.cells_at(level, rows, meta, moment)
        if len(rows) == 0:
            return rows, cells, 0
        best, top = await self.run(self.engine.top_k, level, cells, query, k)
        return rows[best], top, len(rows)

    async def rows_within(
        self, level: Level, bbox: tuple[float, float, float, float], what: Literal["bbox", "area"] = "bbox"
    ) -> np.ndarray:
        """The rows of the cells whose centre lies in bbox (engine.rows_within); a box that holds
        more than `settings.max_search_cells` by a bound counted first is refused before its rows
        are listed (a whole-world box of a planet-scale level would list millions). `what` the
        refusal calls the box: "bbox", or "area" for a GeoJSON area's box."""
        limit = self.settings.max_search_cells

        def bounded() -> tuple[int, np.ndarray | None]:
            at_least = cells_certainly_within(level, bbox)
            return at_least, rows_within(level, bbox) if at_least <= limit else None

        at_least, rows = await self.run(bounded)
        if rows is None:
            raise self.too_many_cells(level, f"at least {at_least}", what)
        return rows

    def too_many_cells(self, level: Level, count: str, what: Literal["bbox", "area"] = "bbox") -> QueryError:
        """The 422 of a bbox (or an area's box, `what` "area") holding more cells than an answer may read."""
        box, one = ("the bbox", "a bbox") if what == "bbox" else (f"the {what}'s box", f"an {what}")
        return QueryError(
            422,
            f"{box} holds {count} cells of level {level.level}; an answer within {one} reads every one "
            f"of them (limit {self.settings.max_search_cells}): pass a smaller {what} or a coarser level=",
        )

    def level_rows(self, level: Level) -> np.ndarray:
        """Every row of `level`, for an answer over all of its cells (/statistics without a bbox):
        refused past `settings.max_search_cells` (a planet-scale level holds millions)."""
        if len(level) > self.settings.max_search_cells:
            raise QueryError(
                422,
                f"level {level.level} has {len(level)} cells; an answer over a whole level reads every one "
                f"of them (limit {self.settings.max_search_cells}): pass a coarser level= or a bbox=",
            )
        return np.arange(len(level))

    async def search_within(
        self, level: Level, meta: QueryMetadata, query: QueryEmbedding, k: int, rows: np.ndarray
    ) -> tuple[np.ndarray, CellEmbeddings, int]:
        """The k best of `rows` under `meta`, each of them ranked exactly: stored embeddings where
        the store holds them, else a fusion of the rows (at most `settings.max_search_cells`)."""
        if len(rows) > self.settings.max_search_cells:
            raise self.too_many_cells(level, str(len(rows)))
        if len(rows) == 0:
            return rows, CellEmbeddings(np.asarray(level.arrays.mu[:0]), np.asarray(level.arrays.s[:0])), 0
        cells = await self.rows_embeddings(level, rows, meta)
        best, top = await self.run(self.engine.top_k, level, cells, query, k)
        return rows[best], top, len(rows)

    async def rows_embeddings(self, level: Level, rows: np.ndarray, meta: QueryMetadata) -> CellEmbeddings:
        """Embeddings of `rows` (at most `settings.max_search_cells`) under `meta`: stored where the
        store holds them, else from a fusion of the whole level under `meta` that an earlier
        search kept, else a fusion of the rows (bounded when large)."""
        cells = await self.run(self.engine.stored, level, rows, meta)
        if cells is not None:
            return cells
        whole = await self.level_fusions.get(self._fused_level_key(level, meta), self.cells_codec)
        if whole is not None:
            return CellEmbeddings(whole.mu[rows], whole.s[rows])
        return await self.fuse(level, rows, meta)

    def _fused_level_key(self, level: Level, meta: QueryMetadata) -> str:
        return cache_key(
            "fused_level",
            {**self.ids, "level": level.level, "hour": meta.hour, "month": meta.month, "source": meta.source},
        )

    async def fused_level(self, level: Level, meta: QueryMetadata) -> CellEmbeddings:
        """Every cell of `level` under `meta`: stored, or fused once per (level, metadata) (a
        bounded large fusion, `fuse`) and kept in a small in-process cache."""
        rows = np.arange(len(level))
        stored = await self.run(self.engine.stored, level, rows, meta)
        if stored is not None:
            return stored
        return await self.cached(
            self.level_fusions,
            "fused_level",
            self._fused_level_key(level, meta),
            lambda: self.fuse(level, rows, meta, large=True),
            self.cells_codec,
        )

"""Registered queries, kept durably: the ids `POST /queries` hands out are written into saved
links, QGIS connections and bookmarks, and an audio query cannot be recomputed from its id.

Every record goes to a SQLite file first (survives restarts with no Redis) and, with Redis
configured, to a key without a TTL (so every replica resolves it). Tiles and text embeddings are
cache entries with a TTL: under `maxmemory-policy volatile-lru` (docker-compose.yml) Redis evicts
only those, never a registered query. While Redis is down a record is kept in the file, marked
unshared, and shared as soon as Redis answers again (a retry every few seconds), so an outage
loses no registration. Redis that loses what it held (flushed, restarted without persistence, a
new one) is noticed by a marker key it no longer has (`watch`): every record in the file is
shared again. A registration the file could not take is an error to the client
(`RegistryError`: 503, or 507 when the registry is full), never a 201 for a record that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import anyio.to_thread
import redis
import redis.asyncio as aioredis

from runtime.errors import UserError
from server.queries import QueryError

log = logging.getLogger(__name__)
REDIS_PREFIX = "st:registered:"
HELD_MARKER = REDIS_PREFIX + "held"  # no query id (16 hex digits): set once Redis holds the file's records
WATCH_S = 10.0  # how often each worker checks that Redis still holds them
RETRY_AFTER_S = 5  # what a 503 of the registry tells the client to wait


class RegistryError(QueryError):
    """The registry could not store or read a record: the client should retry later (a 503 says
    when; a full registry, 507, will not change by itself)."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(status, message, RETRY_AFTER_S if status == 503 else None)


class RegistryUnavailable(UserError, OSError):
    """The query registry's file cannot be opened (not an SQLite file, or not writable): an
    OSError as before, and a user's mistake, so every command that opens it (serve, pack) says
    the sentence and exits 2."""


class SqliteRecords:
    """id -> record bytes in one SQLite file (WAL: workers of one host share it). Each write is one
    `BEGIN IMMEDIATE` transaction, so workers registering the same id at once store it once, and
    the count they check against the cap is the one they insert under."""

    def __init__(self, path: str | Path, max_records: int):
        self.path = Path(path).expanduser()
        self.max_records = max_records
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS queries (id TEXT PRIMARY KEY, record BLOB NOT NULL, "
                "created REAL NOT NULL, shared INTEGER NOT NULL DEFAULT 0)"
            )
            if "shared" not in {row[1] for row in self._db.execute("PRAGMA table_info(queries)")}:
                self._db.execute("ALTER TABLE queries ADD COLUMN shared INTEGER NOT NULL DEFAULT 1")
            self._db.execute("CREATE INDEX IF NOT EXISTS unshared ON queries (created) WHERE shared = 0")
            self._check_writable()
        except (OSError, sqlite3.Error) as exc:
            raise RegistryUnavailable(
                f"cannot open the query registry {self.path}: {exc}; set SOUNDSCAPE_QUERY_DB "
                "(serve --query-db) to a writable file"
            ) from None
        self._lock = threading.Lock()

    def _check_writable(self) -> None:
        """An existing file SQLite opened read-only (its mode, an immutable flag) answers reads and
        refuses every registration: a write undone at once finds it now, not at the first client."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(f"PRAGMA user_version = {int(version)}")
        finally:
            self._db.execute("ROLLBACK")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, taken before reading (so no other process writes in between);
        committed, or rolled back on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the file; the last connection to close folds the write-ahead log back into it, so
        the .sqlite file alone holds every record once the server has stopped."""
        with self._lock:
            self._db.close()

    def get(self, query_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM queries WHERE id = ?", (query_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, query_id: str, record: bytes, shared: bool = False) -> None:
        """Insert a record (kept as it is when the id is there already); `shared`: Redis has it."""
        with self._lock, self._writing():
            if self._db.execute("SELECT 1 FROM queries WHERE id = ?", (query_id,)).fetchone():
                return
            if self._count() >= self.max_records:
                raise RegistryError(
                    f"the query registry is full ({self.max_records} queries); "
                    "ask the operator to raise SOUNDSCAPE_MAX_QUERIES",
                    status=507,
                )
            self._db.execute(
                "INSERT INTO queries (id, record, created, shared) VALUES (?, ?, ?, ?)",
                (query_id, record, time.time(), int(shared)),
            )

    def unshared(self, limit: int = 256) -> list[tuple[str, bytes]]:
        """Records Redis does not hold yet (registered while it was down), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, record FROM queries WHERE shared = 0 ORDER BY created LIMIT ?", (limit,)
            ).fetchall()
        return [(qid, bytes(record)) for qid, record in rows]

    def mark_shared(self, ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("UPDATE queries SET shared = 1 WHERE id = ?", [(qid,) for qid in ids])

    def mark_all_unshared(self) -> None:
        """Every record to be shared again (Redis lost them)."""
        with self._lock:
            self._db.execute("UPDATE queries SET shared = 0 WHERE shared = 1")

    def unshared_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM queries WHERE shared = 0").fetchone()[0])

    def count(self) -> int:
        """Records in the file: a registration past `max_records` of them answers 507."""
        with self._lock:
            return self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM queries").fetchone()[0])


class QueryRegistry:
    """The durable record of every registered query: SQLite, plus Redis when configured."""

    def __init__(
        self,
        db_path: str | Path,
        max_records: int,
        redis_url: str | None = None,
        timeout_s: float = 1.0,
        retry_s: float = 2.0,
    ):
        self.local = SqliteRecords(db_path, max_records)
        self.client = (
            aioredis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
            if redis_url
            else None
        )
        self.eviction_policy = _eviction_policy(redis_url) if redis_url else None
        self.retry_s = retry_s
        self._sharing: asyncio.Task | None = None

    @property
    def durable(self) -> bool:
        """False when the shared Redis may evict keys without a TTL (an `allkeys-*` policy)."""
        return not _evicts_any_key(self.eviction_policy or "")

    async def get(self, query_id: str) -> bytes | None:
        """The record, None when no replica registered it, or RegistryError (503) when this file
        lacks it and Redis cannot be asked: another replica may hold it, so the answer is "retry",
        never a 404 that tells a saved link it is dead."""
        try:
            record = await anyio.to_thread.run_sync(self.local.get, query_id)
        except sqlite3.Error as exc:  # a damaged or busy file: retry, never a 500 nor a 404
            log.warning("reading query %s from %s failed: %s", query_id, self.local.path, exc)
            raise RegistryError(f"the query registry could not be read ({exc}); retry in {RETRY_AFTER_S} s") from None
        if record is None and self.client is not None:
            try:
                record = cast(bytes | None, await self.client.get(REDIS_PREFIX + query_id))  # bytes: no decoding
            except (redis.RedisError, OSError) as exc:
                log.warning("redis get of query %s failed: %s", query_id, exc)
                raise RegistryError(
                    f"query {query_id} is not in this server's registry file and the shared registry "
                    f"(Redis) is not answering; retry in {RETRY_AFTER_S} s"
                ) from None
            if record is not None:  # registered on another replica: keep a copy here too
                await anyio.to_thread.run_sync(self._put_local_quietly, query_id, record)
        return record

    async def put(self, query_id: str, record: bytes) -> None:
        """Store the record in the file (RegistryError if it cannot) and share it through Redis,
        now or, while Redis is down, as soon as it is back."""
        try:
            await anyio.to_thread.run_sync(self.local.put, query_id, record, self.client is None)
        except sqlite3.Error as exc:
            raise RegistryError(f"the query could not be stored ({exc}); try again") from None
        if self.client is not None and not await self.share():
            log.warning(
                "redis is down: query %s is kept in %s and shared when redis is back", query_id, self.local.path
            )
            if self._sharing is None or self._sharing.done():
                self._sharing = asyncio.get_running_loop().create_task(self._share_until_done())

    def close(self) -> None:
        """Close the registry's file (at the server's stop)."""
        self.local.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """While a server runs: with Redis, `watch` that it still holds the records; at the stop
        the file is closed, which folds its write-ahead log back into it (a copy of the .sqlite
        file alone then holds every record)."""
        watching = None if self.client is None else asyncio.get_running_loop().create_task(self.watch())
        try:
            yield
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            self.close()

    async def unshared(self) -> int:
        """Records Redis does not hold yet: other replicas cannot resolve them until it does."""
        return await anyio.to_thread.run_sync(self.local.unshared_count)

    @property
    def max_records(self) -> int:
        """The cap: a registration past this many records answers 507."""
        return self.local.max_records

    async def count(self) -> int | None:
        """Records in this server's file, or None when it cannot be read just now: an operator
        watches the count near `max_records` before registrations answer 507."""
        try:
            return await anyio.to_thread.run_sync(self.local.count)
        except sqlite3.Error as exc:
            log.warning("counting the queries in %s failed: %s", self.local.path, exc)
            return None

    async def watch(self) -> None:
        """While the server runs: when Redis lacks the marker (it lost its data, or is new), share
        every record of the file again, then set the marker. A Redis that does not answer is
        left to `put`'s retries."""
        assert self.client is not None
        while True:
            try:
                held = await self.client.exists(HELD_MARKER)
            except (redis.RedisError, OSError):
                held = 1
            if not held:
                await anyio.to_thread.run_sync(self.local.mark_all_unshared)
                if await self.share():
                    with contextlib.suppress(redis.RedisError, OSError):
                        await self.client.set(HELD_MARKER, b"1")
            await asyncio.sleep(WATCH_S)

    async def share(self) -> bool:
        """Copy every unshared record into Redis (no TTL); False if Redis failed."""
        assert self.client is not None  # without Redis every record is stored as shared
        while pending := await anyio.to_thread.run_sync(self.local.unshared):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for qid, record in pending:
                        pipe.set(REDIS_PREFIX + qid, record)
                    await pipe.execute()
            except (redis.RedisError, OSError):
                return False
            await anyio.to_thread.run_sync(self.local.mark_shared, [qid for qid, _ in pending])
        return True

    async def _share_until_done(self) -> None:
        while not await self.share():
            await asyncio.sleep(self.retry_s)
        log.warning("redis is back: the queries registered meanwhile are shared")

    def _put_local_quietly(self, query_id: str, record: bytes) -> None:
        try:
            self.local.put(query_id, record, shared=True)
        except (sqlite3.Error, RegistryError) as exc:
            log.warning("could not copy query %s into %s: %s", query_id, self.local.path, exc)


def _eviction_policy(url: str) -> str:
    """Redis's maxmemory-policy, warning when it may evict registered queries."""
    try:
        policy = (
            redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
            .config_get("maxmemory-policy")
            .get("maxmemory-policy")
        ) or "unknown"
    except (redis.RedisError, OSError):
        return "unknown"  # CONFIG may be disabled (managed Redis) or Redis not up yet
    if _evicts_any_key(policy):
        log.warning(
            "redis maxmemory-policy is %s: it may evict registered queries (kept without a TTL); "
            "use volatile-lru (tiles carry a TTL and are evicted first)",
            policy,
        )
    return policy


def _evicts_any_key(policy: str) -> bool:
    """An `allkeys-*` policy evicts keys without a TTL too: registered queries among them."""
    return policy.startswith("allkeys")

"""Registered queries, kept durably: the ids `POST /queries` hands out are written into saved
links, QGIS connections and bookmarks, and an audio query cannot be recomputed from its id.

Every record goes to a SQLite file (survives restarts with no Redis) and, with Redis configured,
to a key without a TTL (so every replica resolves it). Tiles and text embeddings are cache
entries with a TTL: under `maxmemory-policy volatile-lru` (docker-compose.yml) Redis evicts only
those, never a registered query. A registration that could not be stored is an error to the
client (`RegistryError`, 503), never a 201 for a record that is gone.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import anyio.to_thread
import redis
import redis.asyncio as aioredis

from server.queries import QueryError

log = logging.getLogger(__name__)
REDIS_PREFIX = "st:registered:"
SAFE_POLICIES = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


class RegistryError(QueryError):
    """The registry could not store or read a record: the client should retry later."""

    def __init__(self, message: str, status: int = 503):
        super().__init__(status, message)


class SqliteRecords:
    """id -> record bytes in one SQLite file (WAL: workers of one host share it)."""

    def __init__(self, path: str | Path, max_records: int):
        self.path = Path(path).expanduser()
        self.max_records = max_records
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS queries (id TEXT PRIMARY KEY, record BLOB NOT NULL, "
                             "created REAL NOT NULL)")
        except (OSError, sqlite3.Error) as exc:
            raise OSError(f"cannot open the query registry {self.path}: {exc}; set SOUNDSCAPE_QUERY_DB "
                          "(serve --query-db) to a writable file") from None
        self._lock = threading.Lock()

    def get(self, query_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM queries WHERE id = ?", (query_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, query_id: str, record: bytes) -> None:
        with self._lock:
            if self._db.execute("SELECT 1 FROM queries WHERE id = ?", (query_id,)).fetchone():
                return
            (count,) = self._db.execute("SELECT count(*) FROM queries").fetchone()
            if count >= self.max_records:
                raise RegistryError(f"the query registry is full ({self.max_records} queries); "
                                    "ask the operator to raise SOUNDSCAPE_MAX_QUERIES", status=507)
            self._db.execute("INSERT INTO queries (id, record, created) VALUES (?, ?, ?)",
                             (query_id, record, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM queries").fetchone()[0]


class QueryRegistry:
    """The durable record of every registered query: SQLite, plus Redis when configured."""

    def __init__(self, db_path: str | Path, max_records: int, redis_url: str | None = None,
                 timeout_s: float = 1.0):
        self.local = SqliteRecords(db_path, max_records)
        self.redis_url = redis_url
        self.client = (aioredis.Redis.from_url(redis_url, socket_timeout=timeout_s,
                                               socket_connect_timeout=timeout_s) if redis_url else None)
        self.eviction_policy = _eviction_policy(redis_url) if redis_url else None

    @property
    def durable(self) -> bool:
        """False when the shared Redis may evict keys without a TTL (an `allkeys-*` policy)."""
        return self.eviction_policy is None or self.eviction_policy in SAFE_POLICIES or \
            self.eviction_policy == "unknown"

    async def get(self, query_id: str) -> bytes | None:
        record = await anyio.to_thread.run_sync(self.local.get, query_id)
        if record is None and self.client is not None:
            try:
                record = await self.client.get(REDIS_PREFIX + query_id)
            except (redis.RedisError, OSError) as exc:
                log.warning("redis get of query %s failed: %s", query_id, exc)
                return None
            if record is not None:  # registered on another replica: keep a copy here too
                await anyio.to_thread.run_sync(self._put_local_quietly, query_id, record)
        return record

    async def put(self, query_id: str, record: bytes) -> None:
        """Store the record everywhere it must be; RegistryError if any store failed."""
        try:
            await anyio.to_thread.run_sync(self.local.put, query_id, record)
        except sqlite3.Error as exc:
            raise RegistryError(f"the query could not be stored ({exc}); try again") from None
        if self.client is None:
            return
        try:
            await self.client.set(REDIS_PREFIX + query_id, record)  # no TTL: never evicted by tiles
        except (redis.RedisError, OSError) as exc:
            raise RegistryError("the shared query store (Redis) is unavailable, so other servers could not "
                                f"resolve this query; try again ({exc})") from None

    def _put_local_quietly(self, query_id: str, record: bytes) -> None:
        try:
            self.local.put(query_id, record)
        except (sqlite3.Error, RegistryError) as exc:
            log.warning("could not copy query %s into %s: %s", query_id, self.local.path, exc)


def _eviction_policy(url: str) -> str:
    """Redis's maxmemory-policy, warning when it may evict registered queries."""
    try:
        policy = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0) \
            .config_get("maxmemory-policy").get("maxmemory-policy", "unknown")
    except (redis.RedisError, OSError):
        return "unknown"  # CONFIG may be disabled (managed Redis) or Redis not up yet
    if policy not in SAFE_POLICIES:
        log.warning("redis maxmemory-policy is %s: it may evict registered queries (kept without a TTL); "
                    "use volatile-lru (tiles carry a TTL and are evicted first)", policy)
    return policy

"""Byte caches shared by tiles, query embeddings and fused cell blocks.

An in-process LRU bounded in bytes; with Redis configured, the LRU sits in front of Redis (so
hot tiles never leave the process) and replicas share Redis. Keys are canonical and hashed, so
every process computes the same key. A Redis failure is a miss (the value is computed), never an
error, and a short circuit breaker stops a dead Redis from costing a timeout per request.
Concurrent identical misses are computed once (`SingleFlight`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis

from server import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


def canonical(params: dict) -> str:
    """The one text form of a parameter dict: sorted keys, no whitespace, None dropped."""
    return json.dumps(
        {k: v for k, v in params.items() if v is not None}, sort_keys=True, separators=(",", ":"), default=str
    )


def digest(params: dict, size: int = 32) -> str:
    """Stable hex hash of `canonical(params)`, the same in every process and machine."""
    return hashlib.sha256(canonical(params).encode()).hexdigest()[:size]


def cache_key(kind: str, params: dict) -> str:
    """`st:{kind}:{hash}`: the kind stays readable in Redis (`KEYS st:tile:*`)."""
    return f"st:{kind}:{digest(params)}"


class LRUCache:
    """In-process, thread-safe, bounded by the total size of its values."""

    name = "memory"

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_now(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def set_now(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._items[key] = value
            self._bytes += len(value)
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        self.set_now(key, value)


class RedisCache:
    """Redis through the asyncio client; failures are logged misses and open a breaker."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, *, timeout_s: float = 0.25, breaker_s: float = 2.0):
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.ttl_s = ttl_s
        self.breaker_s = breaker_s
        self._open_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def _failed(self, op: str, exc: Exception) -> None:
        metrics.REDIS_ERRORS.inc()
        if self.available:
            log.warning("redis %s failed, computing without it for %.0f s: %s", op, self.breaker_s, exc)
        self._open_until = time.monotonic() + self.breaker_s

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return None
        try:
            return await self.client.get(key)
        except (redis.RedisError, OSError) as exc:
            self._failed("get", exc)
            return None

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        if not self.available:
            return
        try:
            await self.client.set(key, value, ex=ttl_s or self.ttl_s)
        except (redis.RedisError, OSError) as exc:
            self._failed("set", exc)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (redis.RedisError, OSError):
            return False


class TieredCache:
    """The LRU in front of an optional shared cache; a shared hit is copied into the LRU."""

    def __init__(self, local: LRUCache, shared: RedisCache | None = None):
        self.local = local
        self.shared = shared
        self.name = shared.name if shared else local.name

    async def get(self, key: str) -> bytes | None:
        value = self.local.get_now(key)
        if value is None and self.shared is not None:
            value = await self.shared.get(key)
            if value is not None:
                self.local.set_now(key, value)
        return value

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        self.local.set_now(key, value)
        if self.shared is not None:
            await self.shared.set(key, value, ttl_s)


class SingleFlight:
    """Concurrent calls with one key share one computation (per process, per event loop)."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future] = {}

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        future = self._inflight.get(key)
        if future is not None:
            metrics.COALESCED.inc()
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await compute()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it themselves
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    def __len__(self) -> int:
        return len(self._inflight)

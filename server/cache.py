"""Caches shared by tiles, query embeddings and fused cell blocks.

An in-process LRU of objects bounded by their encoded size; with Redis configured, the LRU sits
in front of Redis (so hot tiles never leave the process) and replicas share Redis, which holds
bytes: a `Codec` turns a value into bytes and back, and only Redis sees them. Keys are canonical
and hashed, so every process computes the same key. A Redis failure is a miss (the value is computed), never an
error, and a short circuit breaker stops a dead Redis from costing a timeout per request.
Concurrent identical misses are computed once (`SingleFlight`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar, cast

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from runtime.files import canonical_json, json_sha256
from server import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# `{value}` when the key holds one, else `{}` having stored `ARGV[1]` with a TTL of `ARGV[2]` s.
# `SET NX GET` says the same in one command but only from Redis 7; Ubuntu 22.04's Redis (6.0)
# answers it "syntax error", which opened the breaker on every write. Scripts run atomically.
SET_FIRST = """
local held = redis.call('GET', KEYS[1])
if held then return {held} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {}
"""


def _given(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is not None}


def canonical(params: dict) -> str:
    """The one text form of a parameter dict: canonical JSON (runtime/files.py), None dropped."""
    return canonical_json(_given(params))


def digest(params: dict, size: int = 32) -> str:
    """Stable hex hash of `canonical(params)`, the same in every process and machine."""
    return json_sha256(_given(params), size)


def cache_key(kind: str, params: dict) -> str:
    """`st:{kind}:{hash}`: the kind stays readable in Redis (`KEYS st:tile:*`)."""
    return named_key(kind, digest(params))


def named_key(kind: str, name: str) -> str:
    """The key of a value whose hash (`digest`) the caller holds already (a tile's is its ETag)."""
    return f"st:{kind}:{name}"


class Codec(NamedTuple, Generic[T]):
    """A cached value's bytes (for Redis) and back."""

    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


def _same(data: bytes) -> bytes:
    return data


BYTES: Codec[bytes] = Codec(_same, _same)  # encoded tiles: already bytes


class LRUCache:
    """In-process, thread-safe, bounded by the total encoded size of its values."""

    name = "memory"

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_now(self, key: str) -> Any | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def set_now(self, key: str, value: Any, size: int) -> None:
        """Keep `value`, counted as `size` bytes (its encoded size)."""
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def drop(self, prefix: str = "") -> None:
        """Forget every entry whose key starts with `prefix` (all of them by default)."""
        with self._lock:
            for key in [k for k in self._items if k.startswith(prefix)]:
                self._bytes -= self._items.pop(key)[1]


class RedisCache:
    """Redis through the asyncio client; failures are logged misses and open a breaker."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, *, timeout_s: float = 0.25, breaker_s: float = 2.0):
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.ttl_s = ttl_s
        self.breaker_s = breaker_s
        self._open_until = 0.0
        self._set_first = self.script(SET_FIRST)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def _failed(self, op: str, exc: Exception) -> None:
        metrics.REDIS_ERRORS.inc()
        if self.available:
            log.warning("redis %s failed, going without it for %.0f s: %s", op, self.breaker_s, exc)
        self._open_until = time.monotonic() + self.breaker_s

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return None
        try:
            return cast(bytes | None, await self.client.get(key))  # decode_responses is off: bytes
        except (redis.RedisError, OSError) as exc:
            self._failed("get", exc)
            return None

    async def replace(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        """Store `value` whatever `key` holds (an entry this server cannot read)."""
        if not self.available:
            return
        try:
            await self.client.set(key, value, ex=ttl_s or self.ttl_s)
        except (redis.RedisError, OSError) as exc:
            self._failed("set", exc)

    async def set_first(self, key: str, value: bytes, ttl_s: int | None = None) -> bytes | None:
        """Store `value` unless `key` holds one already: the bytes the key holds now, the first
        stored; None when Redis cannot be reached. One script (`SET_FIRST`), so no other
        replica's write or the key's expiry falls between the read and the write."""
        held = await self.run(self._set_first, [key], [value, ttl_s or self.ttl_s])
        return None if held is None else cast(bytes, held[0]) if held else value

    def script(self, source: str) -> AsyncScript:
        """A Lua script for `run` (sent once, then called by its hash)."""
        return self.client.register_script(source)

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any | None:
        """The script's answer (a Redis nil is None, so answer a list or a string); None when
        Redis cannot be reached, which opens the breaker."""
        if not self.available:
            return None
        try:
            return await script(keys=keys, args=args)
        except (redis.RedisError, OSError) as exc:
            self._failed("script", exc)
            return None

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (redis.RedisError, OSError):
            return False


class TieredCache:
    """The LRU of objects in front of an optional shared cache of bytes; a shared hit is decoded
    once and kept in the LRU."""

    def __init__(self, local: LRUCache, shared: RedisCache | None = None):
        self.local = local
        self.shared = shared
        self.name = shared.name if shared else local.name

    async def get(self, key: str, codec: Codec[T]) -> T | None:
        value = self.local.get_now(key)
        if value is None and self.shared is not None:
            data = await self.shared.get(key)
            if data is not None:
                value = decoded(key, data, codec)
                if value is not None:
                    self.local.set_now(key, value, len(data))
        return value

    async def set(self, key: str, value: T, codec: Codec[T], ttl_s: int | None = None) -> T:
        """Store `value` and answer what is stored: in a shared cache the first value stored wins.
        Replicas that missed together compute an entry each, and a text embedded in a batch of
        new texts differs in its last bits from one embedded alone (onnxruntime sums in another
        order): keeping the first, every replica draws that text's tiles with the same bytes
        under their one ETag. Answered as decoded from its bytes, so a fresh value, an LRU hit
        and a Redis hit are equal to the last bit (dtypes and rounding included)."""
        data = codec.encode(value)
        if self.shared is not None:
            held = await self.shared.set_first(key, data, ttl_s)
            if held is not None and held != data:
                kept = decoded(key, held, codec)
                if kept is not None:
                    self.local.set_now(key, kept, len(held))
                    return kept
                await self.shared.replace(key, data, ttl_s)  # unreadable here: this server's value
        value = codec.decode(data)
        self.local.set_now(key, value, len(data))
        return value


def decoded(key: str, data: bytes, codec: Codec[T]) -> T | None:
    """A shared entry's value, or None (a miss) for bytes this server cannot read: another
    version's layout or another writer's, in a Redis that replicas and upgrades share."""
    try:
        return codec.decode(data)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("redis entry %s does not read as this server writes it (%s): computed again", key, exc)
        return None


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

"""Caches of encoded tiles: an in-process LRU bounded in bytes, or Redis shared by replicas.
Redis failures degrade to a miss (the tile is computed), never to an error."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict

import redis

log = logging.getLogger(__name__)


def cache_key(kind: str, params: dict) -> str:
    """A stable key: the same parameters in any order give the same key in every process."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return f"st:{kind}:{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


class LRUCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.name = "memory"

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def set(self, key: str, value: bytes) -> None:
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


class RedisCache:
    def __init__(self, url: str, ttl_s: int):
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ttl_s = ttl_s
        self.name = "redis"

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get(key)
        except redis.RedisError as exc:
            log.warning("redis get failed, computing instead: %s", exc)
            return None

    def set(self, key: str, value: bytes) -> None:
        try:
            self.client.set(key, value, ex=self.ttl_s)
        except redis.RedisError as exc:
            log.warning("redis set failed, not cached: %s", exc)


def make_cache(redis_url: str | None, ttl_s: int, lru_bytes: int) -> LRUCache | RedisCache:
    return RedisCache(redis_url, ttl_s) if redis_url else LRUCache(lru_bytes)

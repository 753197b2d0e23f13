"""Server settings, read from the environment (SOUNDSCAPE_*) so containers configure it."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    bundle: str
    store: str
    redis_url: str | None = None
    cache_ttl_s: int = 86400
    lru_bytes: int = 256 * 1024 * 1024
    threads: int = 0  # onnxruntime intra-op threads; 0 = its default

    @classmethod
    def from_env(cls) -> "Settings":
        try:
            bundle, store = os.environ["SOUNDSCAPE_BUNDLE"], os.environ["SOUNDSCAPE_STORE"]
        except KeyError as exc:
            raise RuntimeError(f"set {exc.args[0]} (the model bundle and store directories)") from None
        return cls(
            bundle=bundle, store=store, redis_url=os.environ.get("SOUNDSCAPE_REDIS_URL") or None,
            cache_ttl_s=int(os.environ.get("SOUNDSCAPE_CACHE_TTL_S", "86400")),
            lru_bytes=int(os.environ.get("SOUNDSCAPE_LRU_MB", "256")) * 1024 * 1024,
            threads=int(os.environ.get("SOUNDSCAPE_ORT_THREADS", "0")),
        )

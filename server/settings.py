"""Server settings, read from the environment (SOUNDSCAPE_*) so containers configure it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_list(name: str, default: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in os.environ.get(name, default).split(",") if v.strip())


@dataclass(frozen=True)
class Settings:
    bundle: str
    store: str
    redis_url: str | None = None
    cache_ttl_s: int = 86400
    query_ttl_s: int = 30 * 86400  # registered queries (audio cannot be recomputed from its id)
    lru_bytes: int = 256 * 1024 * 1024
    # onnxruntime intra-op threads per graph run. Requests already run in parallel on the compute
    # pool (one per core), so more would oversubscribe the cores: 1 measured 2x faster under load.
    threads: int = 1
    compute_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Sent with successful responses of cacheable routes only; errors get `no-store`.
    cache_control: str = "public, max-age=86400"
    cors_origins: tuple[str, ...] = ("*",)  # empty = no CORS headers
    max_upload_bytes: int = 10 * 1024 * 1024
    max_audio_s: float = 60.0
    # /search with non-default metadata fuses the whole level; refuse levels larger than this.
    max_search_cells: int = 250_000
    imagery: str | None = None  # basemap raster; default: the path in the store manifest

    @classmethod
    def from_env(cls) -> "Settings":
        try:
            bundle, store = os.environ["SOUNDSCAPE_BUNDLE"], os.environ["SOUNDSCAPE_STORE"]
        except KeyError as exc:
            raise RuntimeError(f"set {exc.args[0]} (the model bundle and store directories)") from None
        env = os.environ.get
        return cls(
            bundle=bundle, store=store, redis_url=env("SOUNDSCAPE_REDIS_URL") or None,
            cache_ttl_s=int(env("SOUNDSCAPE_CACHE_TTL_S", "86400")),
            lru_bytes=int(env("SOUNDSCAPE_LRU_MB", "256")) * 1024 * 1024,
            threads=int(env("SOUNDSCAPE_ORT_THREADS", "1")),
            compute_threads=int(env("SOUNDSCAPE_COMPUTE_THREADS", str(os.cpu_count() or 1))),
            cache_control=env("SOUNDSCAPE_CACHE_CONTROL", cls.cache_control),
            cors_origins=_env_list("SOUNDSCAPE_CORS_ORIGINS", "*"),
            max_upload_bytes=int(float(env("SOUNDSCAPE_MAX_UPLOAD_MB", "10")) * 1024 * 1024),
            max_audio_s=float(env("SOUNDSCAPE_MAX_AUDIO_S", "60")),
            imagery=env("SOUNDSCAPE_IMAGERY") or None,
        )

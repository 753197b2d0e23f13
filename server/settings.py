"""Server settings, read from the environment (SOUNDSCAPE_*) so containers configure it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def default_query_db() -> str:
    """$SOUNDSCAPE_QUERY_DB, else queries.sqlite in $SOUNDSCAPE_DATA_DIR (the server's writable
    state; docker-compose.yml sets it), else in the user's data directory (XDG)."""
    if os.environ.get("SOUNDSCAPE_QUERY_DB"):
        return os.environ["SOUNDSCAPE_QUERY_DB"]
    if os.environ.get("SOUNDSCAPE_DATA_DIR"):
        return os.path.join(os.environ["SOUNDSCAPE_DATA_DIR"], "queries.sqlite")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "soundscape-tiles", "queries.sqlite")


def _env_list(name: str, default: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in os.environ.get(name, default).split(",") if v.strip())


@dataclass(frozen=True)
class Settings:
    bundle: str
    store: str
    redis_url: str | None = None
    cache_ttl_s: int = 86400
    # Registered queries (POST /queries) live in this SQLite file, and in Redis without a TTL.
    query_db: str = field(default_factory=lambda: default_query_db())
    max_queries: int = 100_000
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
    # The open internet (docs/reliability.md). Absolute URLs start with public_url when set, else
    # with the request's Host only if it is in allowed_hosts (server/urls.py). rate_limit, e.g.
    # "20/s burst 100", is per client address (server/ratelimit.py); None = off.
    public_url: str | None = None
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    rate_limit: str | None = None
    full_fusions: int = 1  # whole-level fusions (/search under hour/month/source) run at once

    @classmethod
    def from_env(cls) -> Settings:
        try:
            bundle, store = os.environ["SOUNDSCAPE_BUNDLE"], os.environ["SOUNDSCAPE_STORE"]
        except KeyError as exc:
            raise RuntimeError(f"set {exc.args[0]} (the model bundle and store directories)") from None
        env = os.environ.get
        return cls(
            bundle=bundle,
            store=store,
            redis_url=env("SOUNDSCAPE_REDIS_URL") or None,
            cache_ttl_s=int(env("SOUNDSCAPE_CACHE_TTL_S", "86400")),
            lru_bytes=int(env("SOUNDSCAPE_LRU_MB", "256")) * 1024 * 1024,
            threads=int(env("SOUNDSCAPE_ORT_THREADS", "1")),
            compute_threads=int(env("SOUNDSCAPE_COMPUTE_THREADS", str(os.cpu_count() or 1))),
            cache_control=env("SOUNDSCAPE_CACHE_CONTROL", cls.cache_control),
            cors_origins=_env_list("SOUNDSCAPE_CORS_ORIGINS", "*"),
            max_upload_bytes=int(float(env("SOUNDSCAPE_MAX_UPLOAD_MB", "10")) * 1024 * 1024),
            max_audio_s=float(env("SOUNDSCAPE_MAX_AUDIO_S", "60")),
            imagery=env("SOUNDSCAPE_IMAGERY") or None,
            query_db=default_query_db(),
            max_queries=int(env("SOUNDSCAPE_MAX_QUERIES", "100000")),
            public_url=env("SOUNDSCAPE_PUBLIC_URL") or None,
            allowed_hosts=_env_list("SOUNDSCAPE_ALLOWED_HOSTS", ",".join(cls.allowed_hosts)),
            rate_limit=env("SOUNDSCAPE_RATE_LIMIT") or None,
            full_fusions=int(env("SOUNDSCAPE_FULL_FUSIONS", "1")),
        )

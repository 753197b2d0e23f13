"""Prometheus metrics (GET /metrics). Per process: with several workers each reports its own."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Per route template (a mount by its path, e.g. "/static"; "unmatched" = a path no route knows);
# status 499 = the client hung up before the answer.
REQUESTS = Counter("soundscape_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "soundscape_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
CACHE = Counter("soundscape_cache_total", "Cache lookups", ["cache", "result"])
COMPUTE = Counter(
    "soundscape_compute_total", "Work done on cache misses", ["kind"]
)  # render, fusion, text_encoding, audio_encoding
COALESCED = Counter("soundscape_coalesced_total", "Requests that waited on an identical miss")
REDIS_ERRORS = Counter("soundscape_redis_errors_total", "Redis operations that failed")
# Read from the registry file at each scrape (every worker of a host reads the same file).
REGISTERED = Gauge("soundscape_registered_queries", "Queries in this server's registry file")
REGISTERED_MAX = Gauge(
    "soundscape_registered_queries_max", "The registry's cap (SOUNDSCAPE_MAX_QUERIES): POST /queries answers 507 at it"
)


def exposition() -> tuple[bytes, str]:
    """(body, content type) of the Prometheus text format."""
    return generate_latest(), CONTENT_TYPE

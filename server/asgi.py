"""ASGI entry for uvicorn/gunicorn: `uvicorn --factory server.asgi:create_app_from_env`."""

import gc

from fastapi import FastAPI

from server.app import create_app
from server.settings import Settings


def create_app_from_env() -> FastAPI:
    """The app of a server process, its startup's objects left out of the garbage collector's
    full passes: a worker holds about 130 k of them (modules, FastAPI's routes and models, the
    libraries' bindings), which each full pass walked in 40-60 ms, stalling every request in
    flight; under a rate limit kept in Redis (more objects made per request, so more full
    passes) that set the p99 of warm tiles at 46-53 ms against 6-8 ms with them frozen
    (BENCHMARKS.md, "Rate limit counted in each worker or in Redis"). What a test process
    builds is left to the collector."""
    app = create_app(Settings.from_env())
    gc.collect()
    gc.freeze()
    return app

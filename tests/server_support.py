"""Helpers for the server tests: the app over the session's bundle and store, a real uvicorn
on a loopback port, and decoding of tiles."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.cache import RedisCache
from server.settings import Settings
from tests.conftest import free_port, wait_for_port

# A tile of the fixture with land and sea: the Alps to the Baltic, Italy and the Adriatic.
LAND_TILE = (3, 4, 2)
REPO = Path(__file__).resolve().parent.parent


def soundscape_here(monkeypatch, capfd, argv: list[str], env: dict[str, str] | None = None):
    """`soundscape <argv>` run by the CLI's main in this process, as a CompletedProcess (exit
    status, stdout, stderr), with no SOUNDSCAPE_* variables but `env`. For refusals: each needs no
    process of its own, and a process costs a second and a half to start. A serve that gets past
    its checks fails the test instead of serving. The variables are as they were afterwards: serve
    writes its options into them for its workers, before it checks them."""
    from cli.main import main
    from server import serving

    def started(config) -> None:
        raise AssertionError(f"serve started on port {config.port} instead of refusing {argv}")

    monkeypatch.setattr(serving, "run", started)
    before = dict(os.environ)
    for name in [k for k in os.environ if k.startswith("SOUNDSCAPE_")]:
        del os.environ[name]
    os.environ.update(env or {})
    capfd.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's refusals: the process's exit status
        code = exit.code
    finally:
        os.environ.clear()
        os.environ.update(before)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def fresh_query_db() -> str:
    """A registry file of the test's own: tests never share the user's registered queries."""
    return str(Path(tempfile.mkdtemp(prefix="soundscape-queries-")) / "queries.sqlite")


def make_client(bundle_path, store_path, **settings) -> TestClient:
    settings.setdefault("query_db", fresh_query_db())
    # A loopback Host, one of the default allowed hosts (server/urls.py), as a local browser sends.
    return TestClient(
        create_app(Settings(bundle=str(bundle_path), store=str(store_path), **settings)), base_url="http://127.0.0.1"
    )


def localhost_client(bundle_path, store_path, **settings) -> TestClient:
    """make_client whose requests name Host localhost, as the URLs TileJSON, WMTS and links embed
    are written in the tests that compare them."""
    client = make_client(bundle_path, store_path, **settings)
    client.base_url = "http://localhost"
    return client


def refused(response: httpx.Response) -> str:
    """The detail of a 422, which it must be."""
    assert response.status_code == 422, (response.status_code, response.text[:300])
    return response.json()["detail"]


def concurrent_gets(app, path: str, params: list[dict]) -> list[httpx.Response]:
    """GET `path` once per params, all at once through the ASGI app (one event loop), so the
    requests meet in its caches and thread pool as a burst of clients' would."""

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await asyncio.gather(*[http.get(path, params=p) for p in params])

    return asyncio.run(burst())


def decode_png(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.mode == "P"
    return np.asarray(image)


def png_difference(found: bytes, expected: bytes) -> str:
    """How two PNG tiles that should be byte for byte the same differ: their pixels (how many,
    by how many palette steps at most, the first) or only their compressed bytes. A failed
    comparison then says which step of the drawing varied (the values, or the encoding)."""
    if found == expected:
        return "the same bytes"
    a, b = decode_png(found), decode_png(expected)
    if a.shape != b.shape:
        return f"other sizes: {a.shape} against {b.shape}"
    differ = np.argwhere(a != b)
    if len(differ) == 0:
        return f"the same pixels in other compressed bytes ({len(found)} against {len(expected)} bytes)"
    steps = np.abs(a.astype(np.int16) - b.astype(np.int16)).max()
    first = tuple(int(i) for i in differ[0])
    return f"{len(differ)} of {a.size} pixels differ, by up to {steps} palette steps, first at (row, col) {first}"


def tile_differences(found: dict, expected: dict) -> str:
    """Each tile of two {place: PNG bytes} maps that is missing from one or differs (png_difference)."""
    lines = [f"{k}: only in the expected tiles" for k in expected.keys() - found.keys()]
    lines += [f"{k}: not expected" for k in found.keys() - expected.keys()]
    lines += [
        f"{k}: {png_difference(found[k], expected[k])}"
        for k in sorted(found.keys() & expected.keys())
        if found[k] != expected[k]
    ]
    return "\n".join(lines[:20]) + (f"\n... and {len(lines) - 20} more" if len(lines) > 20 else "")


def decode_npy(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


def serve_command(bundle_path, store_path, port: int, *args: str) -> list[str]:
    """`soundscape serve` of a bundle and store on `port`, with more options."""
    command = [sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle_path), "--store", str(store_path)]
    return [*command, "--port", str(port), *args]


@contextlib.contextmanager
def live_server(
    bundle_path,
    store_path,
    *,
    workers: int = 1,
    redis_url: str | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """`soundscape serve` (real uvicorn) on a random loopback port, with no SOUNDSCAPE_* variables
    but those in `env`; yields its base URL."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SOUNDSCAPE_")},
        "SOUNDSCAPE_QUERY_DB": fresh_query_db(),
        **(env or {}),
    }
    proc = subprocess.Popen(
        serve_command(
            bundle_path,
            store_path,
            port,
            "--workers",
            str(workers),
            *(["--redis-url", redis_url] if redis_url else []),
            *args,
        ),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def beside_stalled_uploads(
    app, whole: bytes, first: int, count: int, then: Callable
) -> tuple[list[httpx.Response], list]:
    """`then(http)`'s answers while `count` uploads of `whole` have sent `first` bytes and stall
    (through the ASGI app, on one event loop); then the stalled ones send the rest: their answers."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=30) as http:
        release = asyncio.Event()

        async def stalled_body():
            yield whole[:first]
            await release.wait()
            yield whole[first:]

        stalled = [
            asyncio.create_task(http.post("/queries", content=stalled_body(), headers={"Content-Type": "audio/wav"}))
            for _ in range(count)
        ]
        await asyncio.sleep(0.3)
        answers = await then(http)
        release.set()
        return [await task for task in stalled], answers


def patient_redis(url: str) -> RedisCache:
    """The server's Redis cache with a timeout of 5 s, not its 0.25 s: on a loaded 2-core box a
    connection once took longer and opened the breaker in a test of what is stored, not of the
    breaker (tests/test_server_cache.py, 2026-12-08)."""
    return RedisCache(url, ttl_s=60, timeout_s=5.0)

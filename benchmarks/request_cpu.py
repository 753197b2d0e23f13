"""CPU time of one request through the whole ASGI app, in process, by kind of tile request.

    python benchmarks/request_cpu.py --data-dir data/demo [--precision int8] [--json FILE]

Each kind is requested one at a time through httpx's ASGI transport (every middleware, FastAPI's
routing and validation, the service's caches and thread-pool hops; no sockets), and the process's
CPU time (all threads) is divided by the requests: the median of `--rounds` rounds of
`--requests`. Where a wall clock swings with the machine's other jobs, CPU time per request
moves less, so two builds compare here within a few percent (BENCHMARKS.md, tenth pass).

Kinds, each a tile never drawn before unless named (checked by the server's count of tiles drawn):
- floor: the same client against an ASGI app that answers at once (what the client costs);
- hit: a tile already answered (the front door's replay);
- cold uncertainty: a tile of the uncertainty layer (no query);
- cold tile, known text: a new `rescale=` of a text whose embedding is cached;
- cold tile, new text: a text never seen (its embedding, its colour scale and the tile);
- cold tile, new text, its graph free: the same with the engine answering every text at once with
  one embedding, as a text tower that cost nothing would: what a new text costs beyond its text
  graph (its record, its colour scale, the tile), which no cheaper text tower can remove;
- text embedding alone: the engine's text graph on one new text (no request).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import ValidationError

from benchmarks.provenance import emit, provenance
from benchmarks.server_latency import tiles_of
from runtime.errors import UserError
from server.app import create_app
from server.engine import Engine
from server.settings import Settings

# Each cold request names a tile the server has not drawn: a `rescale=` of span 1 whose low end
# steps by 0.001 (a rescale keeps 4 significant digits of its span, server/params.py), or a new text,
# on tiles of zoom 4 that hold cells (so none is a cheap blank).
ZOOM = 4
KINDS = {
    "hit": "/tiles/{z}/{x}/{y}.png?q=birdsong",
    "cold uncertainty": "/tiles/{z}/{x}/{y}.png?layer=uncertainty&rescale={rescale}",
    "cold tile, known text": "/tiles/{z}/{x}/{y}.png?q=birdsong&rescale={rescale}",
    "cold tile, new text": "/tiles/{z}/{x}/{y}.png?q=a+sound+never+heard+{r}x{i}",
    "cold tile, new text, its graph free": "/tiles/{z}/{x}/{y}.png?q=a+text+the+graph+skips+{r}x{i}",
}
FREE_GRAPH_KIND = "cold tile, new text, its graph free"


def url_of(kind: str, tiles: list[tuple[int, int, int]], r: int, i: int, n: int) -> str:
    """Request i of round r (1-based) of `kind`, on `tiles` in turn (the first for a hit)."""
    z, x, y = tiles[0 if kind == "hit" else i % len(tiles)]
    low = ((r - 1) * n + i) / 1000
    return KINDS[kind].format(z=z, x=x, y=y, r=r, i=i, rescale=f"{low:.3f},{low + 1:.3f}")


async def answer_at_once(scope, receive, send) -> None:
    """The floor: an ASGI app that answers a tile-sized body without looking at the request."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"image/png")]})
        await send({"type": "http.response.body", "body": bytes(16_000)})


@contextmanager
def text_graph_free(engine: Engine) -> Iterator[None]:
    """While open, the engine embeds any texts at once, each as "birdsong" (embedded before)."""
    real = engine.embed_texts
    fixed = real(["birdsong"])
    engine.embed_texts = lambda texts: fixed * len(texts)  # type: ignore[method-assign]
    try:
        yield
    finally:
        engine.embed_texts = real  # type: ignore[method-assign]


async def cpu_ms_per_item(run: Callable[[int, int], Awaitable[None]], rounds: int, n: int) -> float:
    """The median over rounds of process CPU per item; `run(round, i)` does item i."""
    samples = []
    for r in range(1, rounds + 1):
        began = time.process_time()
        for i in range(n):
            await run(r, i)
        samples.append((time.process_time() - began) / n * 1000)
    return round(statistics.median(samples), 3)


async def get_ok(client: httpx.AsyncClient, url: str) -> None:
    response = await client.get(url)
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}: {response.text[:200]}")


async def measure(settings: Settings, rounds: int, n: int) -> dict[str, float]:
    result = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=answer_at_once), base_url="http://t") as client:
        result["floor"] = await cpu_ms_per_item(lambda r, i: get_ok(client, f"/tiles/4/1/{i}.png"), rounds, n)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            tiles = tiles_of(app.state.service.store, ZOOM, 64)
            for i, (z, x, y) in enumerate(tiles[:20]):  # a process's first requests pay for first uses
                await get_ok(client, f"/tiles/{z}/{x}/{y}.png?q=warming+up+{i}")
            await get_ok(client, url_of("hit", tiles, 0, 0, 1))
            engine = app.state.service.engine
            for kind in KINDS:
                renders = engine.stats["renders"]
                with text_graph_free(engine) if kind == FREE_GRAPH_KIND else nullcontext():
                    encodings = engine.stats["text_encodings"]
                    result[kind] = await cpu_ms_per_item(
                        lambda r, i, kind=kind: get_ok(client, url_of(kind, tiles, r, i, n)), rounds, n
                    )
                    graph_runs = engine.stats["text_encodings"] - encodings
                drawn = engine.stats["renders"] - renders
                if drawn != (rounds * n if kind.startswith("cold") else 0):
                    raise SystemExit(f"{kind}: {drawn} tiles drawn in {rounds * n} requests")
                if kind == FREE_GRAPH_KIND and graph_runs:
                    raise SystemExit(f"{kind}: the text graph ran")

        async def embed(r: int, i: int) -> None:
            engine.embed_texts([f"a text never embedded {r}x{i}"])

        result["text embedding alone"] = await cpu_ms_per_item(embed, rounds, n)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data-dir", type=Path, default=Path("data/demo"), help="a built demo world")
    parser.add_argument("--precision", default="fp32", help="the text graph's precision (soundscape serve --precision)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per kind (the median is reported)")
    parser.add_argument("--requests", type=int, default=150, help="requests per round")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be at least 1")
    load = os.getloadavg()[0]  # before the measure, which loads one core itself
    try:
        settings = Settings(
            bundle=str(args.data_dir / "bundle"), store=str(args.data_dir / "store"), precision=args.precision
        )
        measured = asyncio.run(measure(settings, args.rounds, args.requests))
    except (UserError, ValidationError) as exc:
        parser.error(str(exc))
    emit({**provenance(), "load_average_1min": load, "cpu_ms_per_request": measured}, args.json)


if __name__ == "__main__":
    main()

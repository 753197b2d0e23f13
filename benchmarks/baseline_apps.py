"""The baselines `benchmarks/run.py` loads side by side with the tile server, each run by uvicorn
with the options `soundscape serve` uses (`python -m benchmarks.baseline_apps NAME --port P
--workers W`):

- `bare_asgi`: a pure ASGI app answering each tile URL with the bytes the tile server sent for it
  (read from $BASELINE_TILES, a directory written by run.py): the ceiling of warm tiles/s;
- `bare_fastapi`: the same bytes from one FastAPI route (what the framework alone costs);
- `titiler`: TiTiler (titiler.core, the `bench` extra) serving the store's GeoTIFF as XYZ tiles
  at /cog/tiles/WebMercatorQuad/{z}/{x}/{y}.png?url=...: a peer that renders every tile.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.types import Receive, Scope, Send

NOT_FOUND = b'{"detail":"no such tile in the baseline"}'


def recorded_tiles() -> dict[bytes, tuple[bytes, bytes]]:
    """raw path + "?" + query string -> (content type, body), from $BASELINE_TILES/index.json."""
    folder = Path(os.environ["BASELINE_TILES"])
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    return {url.encode(): (kind.encode(), (folder / name).read_bytes()) for url, (kind, name) in index.items()}


def make_bare_asgi():
    tiles = recorded_tiles()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        found = tiles.get(scope["raw_path"] + b"?" + scope["query_string"])
        kind, body = found if found else (b"application/json", NOT_FOUND)
        await send(
            {
                "type": "http.response.start",
                "status": 200 if found else 404,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def make_bare_fastapi():
    # Request is imported at module level: under postponed annotations FastAPI resolves the
    # route's annotations in the module's globals, and a local import made `request` a required
    # query parameter, so this route answered 422 to every request.
    tiles = recorded_tiles()
    app = FastAPI()

    @app.get("/tiles/{z}/{x}/{y}.png")
    async def tile(request: Request, z: int, x: int, y: int) -> Response:
        kind, body = tiles[request.scope["raw_path"] + b"?" + request.scope["query_string"]]
        return Response(body, media_type=kind.decode())

    return app


def make_titiler():
    from titiler.core.factory import TilerFactory

    app = FastAPI()
    app.include_router(TilerFactory().router, prefix="/cog")
    return app


FACTORIES = {"bare_asgi": "make_bare_asgi", "bare_fastapi": "make_bare_fastapi", "titiler": "make_titiler"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(FACTORIES))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    # As `soundscape serve` runs the tile server (server/commands.py), so only the app differs.
    uvicorn.run(
        f"benchmarks.baseline_apps:{FACTORIES[args.name]}",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        http="server.protocol:HardenedHttpProtocol",
        timeout_keep_alive=5,
        backlog=1024,
    )


if __name__ == "__main__":
    main()

"""A snapshot of the HTTP surface: a fixed list of requests covering every route, answered by one
tree of the code, written as JSON (status, headers, sha256 of the body per request); `--compare`
prints how two snapshots differ. It shows that a refactor left the responses as they were
(issue 12: "the HTTP responses of a fixed list of requests are byte-identical before and after").

    python benchmarks/http_snapshot.py --out before.json --tree /tmp/before   # an older checkout
    python benchmarks/http_snapshot.py --out after.json                      # this tree
    python benchmarks/http_snapshot.py --compare before.json after.json

The app runs twice: in process (the ASGI app through fastapi's TestClient) and as `soundscape
serve` (a real uvicorn on loopback), each over the same bundle and store (default: the demo world
of `soundscape demo`) with a fresh query registry and no Redis. Every request sends the same
Host (`127.0.0.1:8000`, so URLs in bodies do not carry a random port) and `Accept-Encoding:
identity` unless it asks for gzip. Bodies are hashed after content decoding (a gzip stream holds
its creation time). Left out as volatile: the headers `date` and `server` (uvicorn's clock and
name); `etag` and `last-modified` of the files served as they are (the viewer `/` and `/static/`:
Starlette derives them from the file's mtime, which differs between checkouts); the body of
`/metrics` and its length (counters and latencies).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEMO = Path("/work/demo-data")
HOST = "127.0.0.1:8000"
VOLATILE_HEADERS = ("date", "server")
VOLATILE_FILE_HEADERS = ("etag", "last-modified")
VOLATILE_BODIES = ("/metrics",)


def tone_wav(seconds: float = 3.0, rate: int = 44100) -> bytes:
    """A deterministic 16-bit mono WAV: a 440 Hz tone gliding to 880 Hz under a little noise."""
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.4 * np.sin(2 * np.pi * (440 * t + 220 * t**2 / seconds))
    signal += 0.05 * np.random.default_rng(0).standard_normal(t.size)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


@dataclass(frozen=True)
class Call:
    """One request. `{birdsong}`/`{audio}` in the path are replaced by the ids that POST /queries
    answered; `etag_of` names an earlier call whose ETag (if it had one) is sent as If-None-Match."""

    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    files: dict[str, tuple[str | None, bytes, str]] | None = None
    etag_of: str | None = None


def calls() -> list[Call]:
    """The fixed list: every route, the tile parameters, conditional requests, HEAD and errors."""
    wav = tone_wav()
    json_type = {"Content-Type": "application/json"}
    birdsong, audio = "query={birdsong}", "query={audio}"
    return [
        # Queries first: later calls use their ids.
        Call("register text", "POST", "/queries", json_type, b'{"text": "birdsong"}'),
        Call("register same text", "POST", "/queries", json_type, b'{"text": "  Birdsong "}'),
        Call("register form text", "POST", "/queries", files={"text": (None, b"rain on a roof", "text/plain")}),
        Call("register raw audio", "POST", "/queries", {"Content-Type": "audio/wav"}, wav),
        Call("register multipart audio", "POST", "/queries", files={"file": ("tone.wav", wav, "audio/wav")}),
        Call("get query", "GET", "/queries/{birdsong}"),
        Call("get audio query", "GET", "/queries/{audio}"),
        Call("unknown query", "GET", "/queries/0123456789abcdef"),
        Call("not a query id", "GET", "/queries/nope"),
        Call("register wrong type", "POST", "/queries", {"Content-Type": "text/plain"}, b"birdsong"),
        Call("register empty text", "POST", "/queries", json_type, b'{"text": ""}'),
        Call("register malformed json", "POST", "/queries", json_type, b'{"text": '),
        # Tiles over zooms and formats.
        Call("tile z0", "GET", "/tiles/0/0/0.png?q=birdsong"),
        Call("tile z2", "GET", "/tiles/2/2/1.png?q=birdsong"),
        Call("tile z3 land", "GET", "/tiles/3/4/2.png?q=birdsong"),
        Call("tile z5", "GET", "/tiles/5/16/10.png?q=waves%20on%20a%20beach"),
        Call("tile z7", "GET", "/tiles/7/64/43.png?q=birdsong"),
        Call("tile z9 (beyond the store)", "GET", "/tiles/9/262/180.png?q=birdsong"),
        Call("tile replayed", "GET", "/tiles/3/4/2.png?q=birdsong"),
        Call("tile by id", "GET", f"/tiles/3/4/2.png?{birdsong}"),
        Call("tile by audio id", "GET", f"/tiles/2/2/1.png?{audio}"),
        Call("tile webp", "GET", "/tiles/WebMercatorQuad/3/4/2.webp?q=birdsong"),
        Call("tile npy", "GET", "/tiles/WebMercatorQuad/3/4/2.npy?q=birdsong"),
        Call("tile png tms", "GET", "/tiles/WebMercatorQuad/4/8/5.png?q=birdsong"),
        Call("tile no extension", "GET", "/tiles/WebMercatorQuad/3/4/2?q=birdsong"),
        Call("tile 512", "GET", "/tiles/WebMercatorQuad/3/4/2.png?q=birdsong&tilesize=512"),
        Call("tile @2x", "GET", "/tiles/3/4/2@2x.png?q=birdsong"),
        Call("tile @2x tms", "GET", "/tiles/WebMercatorQuad/3/4/2@2x.webp?q=birdsong"),
        Call("tile @2x no extension", "GET", "/tiles/WebMercatorQuad/3/4/2@2x?q=birdsong"),
        Call("tile @2x and tilesize", "GET", "/tiles/3/4/2@2x.png?q=birdsong&tilesize=512"),
        Call("tilejson webp zooms", "GET", "/tilejson.json?q=birdsong&tile_format=webp&minzoom=1&maxzoom=5"),
        Call("wmts tif", "GET", "/WMTSCapabilities.xml?q=birdsong&tile_format=tif&maxzoom=5"),
        Call("tile color_formula", "GET", "/tiles/3/4/2.png?q=birdsong&color_formula=gamma%20r%202"),
        Call("tile hour", "GET", "/tiles/3/4/2.png?q=birdsong&hour=6"),
        Call("tile month", "GET", "/tiles/3/4/2.png?q=birdsong&month=7"),
        Call("tile hour month source", "GET", "/tiles/3/4/2.png?q=birdsong&hour=22&month=1&source=demo"),
        Call("tile rescale", "GET", "/tiles/3/4/2.png?q=birdsong&rescale=0,0.5"),
        Call("tile colormap", "GET", "/tiles/3/4/2.png?q=birdsong&colormap_name=viridis"),
        Call("tile uncertainty", "GET", "/tiles/3/4/2.png?layer=uncertainty"),
        Call("tile uncertainty npy", "GET", "/tiles/WebMercatorQuad/2/2/1.npy?layer=uncertainty"),
        Call("tile head", "HEAD", "/tiles/3/4/2.png?q=birdsong"),
        Call("tile 304", "GET", "/tiles/3/4/2.png?q=birdsong", etag_of="tile z3 land"),
        Call("tile 304 by id", "GET", f"/tiles/3/4/2.png?{birdsong}", etag_of="tile by id"),
        Call("tile 304 head", "HEAD", "/tiles/3/4/2.png?q=birdsong", etag_of="tile z3 land"),
        Call("tile stale etag", "GET", "/tiles/3/4/2.png?q=birdsong", {"If-None-Match": '"stale"'}),
        Call("tile gzip asked", "GET", "/tiles/2/2/1.png?q=birdsong", {"Accept-Encoding": "gzip"}),
        # Tile errors.
        Call("tile no query", "GET", "/tiles/3/4/2.png"),
        Call("tile q and query", "GET", f"/tiles/3/4/2.png?q=birdsong&{birdsong}"),
        Call("tile unknown id", "GET", "/tiles/3/4/2.png?query=0123456789abcdef"),
        Call("tile z out of range", "GET", "/tiles/31/0/0.png?q=birdsong"),
        Call("tile x out of range", "GET", "/tiles/2/9/0.png?q=birdsong"),
        Call("tile bad hour", "GET", "/tiles/3/4/2.png?q=birdsong&hour=24"),
        Call("tile bad month", "GET", "/tiles/3/4/2.png?q=birdsong&month=0"),
        Call("tile bad source", "GET", "/tiles/3/4/2.png?q=birdsong&source=nope"),
        Call("tile bad rescale", "GET", "/tiles/3/4/2.png?q=birdsong&rescale=1,0"),
        Call("tile bad colormap", "GET", "/tiles/3/4/2.png?q=birdsong&colormap_name=nope"),
        Call("tile bad tilesize", "GET", "/tiles/WebMercatorQuad/3/4/2.png?q=birdsong&tilesize=300"),
        Call("tile bad layer", "GET", "/tiles/3/4/2.png?q=birdsong&layer=nope"),
        Call("tile bad format", "GET", "/tiles/WebMercatorQuad/3/4/2.jpg?q=birdsong"),
        Call("tile unknown tms", "GET", "/tiles/WorldCRS84Quad/3/4/2.png?q=birdsong"),
        Call("tile post", "POST", "/tiles/3/4/2.png?q=birdsong"),
        Call("tile foreign host", "GET", "/tiles/3/4/2.png?q=birdsong", {"Host": "evil.example"}),
        # Describing the service.
        Call("tilejson", "GET", "/tilejson.json?q=birdsong"),
        Call("tilejson uncertainty", "GET", "/tilejson.json?layer=uncertainty"),
        Call("tilejson no query", "GET", "/tilejson.json"),
        Call("tilejson tms id hour 512", "GET", f"/WebMercatorQuad/tilejson.json?{birdsong}&hour=6&tilesize=512"),
        Call("tilejson rescale", "GET", "/tilejson.json?q=birdsong&rescale=0,0.25&colormap_name=viridis"),
        Call("tilejson 304", "GET", "/tilejson.json?q=birdsong", etag_of="tilejson"),
        Call("tilejson foreign host", "GET", "/tilejson.json?q=birdsong", {"Host": "evil.example"}),
        Call("tilejson unknown id", "GET", "/tilejson.json?query=0123456789abcdef"),
        Call("wmts", "GET", "/WMTSCapabilities.xml"),
        Call("wmts query", "GET", "/WMTSCapabilities.xml?q=birdsong"),
        Call("wmts tms id 512", "GET", f"/WebMercatorQuad/WMTSCapabilities.xml?{audio}&tilesize=512"),
        Call("wmts unknown tms", "GET", "/WorldCRS84Quad/WMTSCapabilities.xml"),
        Call("conformance", "GET", "/conformance"),
        Call("metadata", "GET", "/metadata"),
        Call("tile matrix sets", "GET", "/tileMatrixSets"),
        Call("tile matrix set", "GET", "/tileMatrixSets/WebMercatorQuad"),
        Call("unknown tile matrix set", "GET", "/tileMatrixSets/WorldCRS84Quad"),
        Call("tilesets", "GET", "/tiles?q=birdsong&hour=6"),
        Call("tileset", "GET", "/tiles/WebMercatorQuad?q=birdsong&hour=6&maxzoom=4"),
        Call("tileset of webp", "GET", "/tiles/WebMercatorQuad?layer=uncertainty&tile_format=webp"),
        Call("tileset unknown tms", "GET", "/tiles/WorldCRS84Quad?q=birdsong"),
        Call("landing page", "GET", "/", {"Accept": "application/json"}),
        Call("landing page f=json", "GET", "/?f=json"),
        Call("collections", "GET", "/collections"),
        Call("collections query", "GET", "/collections?q=birdsong&hour=6"),
        Call("collection", "GET", f"/collections/heatmap?{birdsong}&month=7"),
        Call("collection tilesets", "GET", "/collections/contrast/tiles?q=birdsong&hour=6"),
        Call("collection tileset", "GET", "/collections/uncertainty/tiles/WebMercatorQuad?maxzoom=4"),
        Call("collection unknown", "GET", "/collections/nope?q=birdsong"),
        Call("collection no query", "GET", "/collections/contrast/tiles/WebMercatorQuad"),
        Call("collection layer", "GET", "/collections/contrast?q=birdsong&layer=heatmap"),
        Call("collection map", "GET", "/collections/contrast/map?q=birdsong&hour=6&bbox=-12,34,32,60&width=200"),
        Call("collection map webp 3857", "GET", "/collections/uncertainty/map?f=webp&crs=EPSG:3857&height=64"),
        Call("collection map too wide", "GET", "/collections/heatmap/map?q=birdsong&width=4096"),
        Call("collection map bad bbox", "GET", "/collections/contrast/map?q=birdsong&bbox=10,60,20,50"),
        Call("colormaps", "GET", "/colormaps"),
        Call("legend", "GET", "/colormaps/magma"),
        Call("legend vertical", "GET", "/colormaps/viridis?width=8&height=64&orientation=vertical"),
        Call("legend unknown", "GET", "/colormaps/nope"),
        Call("legend too wide", "GET", "/colormaps/magma?width=100000"),
        Call("basemap", "GET", "/basemap/2/2/1.webp"),
        Call("basemap at a pixel ratio", "GET", "/basemap/2/2/1@2x.webp"),
        Call("basemap out of range", "GET", "/basemap/2/9/1.webp"),
        # REST.
        Call("search", "GET", "/search?q=birdsong&k=5"),
        Call("search level hour", "GET", "/search?q=rain%20on%20a%20roof&k=3&level=5&hour=3&month=10"),
        Call("search by id", "GET", f"/search?{audio}&k=3"),
        Call("search no query", "GET", "/search"),
        Call("search bad k", "GET", "/search?q=birdsong&k=100000"),
        Call("point", "GET", "/point/2.35,48.85?q=birdsong"),
        Call("point level month", "GET", f"/point/-3.7,40.4?{birdsong}&level=4&month=4"),
        Call("point off the map", "GET", "/point/200,0?q=birdsong"),
        Call("statistics", "GET", "/statistics?q=birdsong&level=4"),
        Call("statistics bbox hour", "GET", "/statistics?q=birdsong&bbox=0,40,20,55&level=5&hour=6&bins=5"),
        Call("statistics empty bbox", "GET", "/statistics?q=birdsong&bbox=-150,-60,-140,-50"),
        # Health, metrics, viewer, static, OpenAPI.
        Call("healthz", "GET", "/healthz"),
        Call("healthz head", "HEAD", "/healthz"),
        Call("readyz", "GET", "/readyz"),
        Call("metrics", "GET", "/metrics"),
        Call("viewer", "GET", "/"),
        Call("viewer head", "HEAD", "/"),
        Call("swagger ui", "GET", "/docs"),
        Call("redoc", "GET", "/redoc"),
        Call("openapi", "GET", "/openapi.json"),
        Call("openapi gzip", "GET", "/openapi.json", {"Accept-Encoding": "gzip"}),
        Call("openapi 304", "GET", "/openapi.json", etag_of="openapi"),
        Call("static js", "GET", "/static/viewer.js"),
        Call("static css gzip", "GET", "/static/viewer.css", {"Accept-Encoding": "gzip"}),
        Call("static vendored", "GET", "/static/maplibre/VERSION"),
        Call("static missing", "GET", "/static/nope.js"),
        Call("unknown path", "GET", "/nope"),
        Call("unknown method", "DELETE", "/healthz"),
    ]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer(call: Call, response: httpx.Response) -> dict:
    """What is compared: the status, the headers but volatile ones, the decoded body's sha256."""
    served_file = call.path == "/" or call.path.startswith("/static/")
    dropped = VOLATILE_HEADERS + (VOLATILE_FILE_HEADERS if served_file else ())
    headers = sorted([k.lower(), v] for k, v in response.headers.multi_items() if k.lower() not in dropped)
    volatile_body = call.path.split("?")[0] in VOLATILE_BODIES
    if volatile_body:
        headers = [[k, "volatile" if k == "content-length" else v] for k, v in headers]
    return {
        "name": call.name,
        "request": f"{call.method} {call.path}",
        "status": response.status_code,
        "headers": headers,
        "body_sha256": "volatile" if volatile_body else digest(response.content),
        "body_bytes": None if volatile_body else len(response.content),
    }


def run_calls(send: Callable[..., httpx.Response], bodies: Path | None = None) -> list[dict]:
    """Sends the calls in order; ids and ETags of earlier answers fill in later calls. With
    `bodies`, each decoded body is also written there (NNN-name), to see what a difference is."""
    ids: dict[str, str] = {}
    etags: dict[str, str] = {}
    results = []
    for call in calls():
        path = call.path.format(**ids) if "{" in call.path else call.path
        headers = {"Host": HOST, "Accept-Encoding": "identity", **call.headers}
        if call.etag_of in etags:  # no If-None-Match when that answer had no ETag
            headers["If-None-Match"] = etags[call.etag_of]
        response = send(call.method, path, headers=headers, content=call.body, files=call.files)
        if "etag" in response.headers:
            etags[call.name] = response.headers["etag"]
        if call.name == "register text":
            ids["birdsong"] = response.json()["id"]
        if call.name == "register raw audio":
            ids["audio"] = response.json()["id"]
        results.append(answer(call, response))
        if bodies is not None:
            bodies.mkdir(parents=True, exist_ok=True)
            (bodies / f"{len(results):03d}-{call.name.replace(' ', '-')}").write_bytes(response.content)
    return results


def in_process(tree: Path, bundle: Path, store: Path, bodies: Path | None = None) -> list[dict]:
    """The ASGI app in this process, imported from `tree`."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    db = Path(tempfile.mkdtemp(prefix="snapshot-")) / "queries.sqlite"
    app = create_app(Settings(bundle=str(bundle), store=str(store), query_db=str(db)))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        return run_calls(client.request, bodies)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(tree: Path, bundle: Path, store: Path) -> Iterator[str]:
    """`soundscape serve` from `tree` in a subprocess, with no SOUNDSCAPE_* variable but its
    own query registry; yields the base URL. Its stderr is shown if it exits before listening."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDSCAPE_")}
    env["SOUNDSCAPE_QUERY_DB"] = str(Path(tempfile.mkdtemp(prefix="snapshot-")) / "queries.sqlite")
    env["PYTHONPATH"] = str(tree)
    command = [sys.executable, "-m", "cli.main", "serve", "--bundle", str(bundle), "--store", str(store)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*command, "--port", str(port)], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"soundscape serve exited with {proc.returncode}:\n{tail}")
                time.sleep(0.1)
            else:
                raise TimeoutError(f"soundscape serve did not listen on port {port} within 120 s")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def over_uvicorn(tree: Path, bundle: Path, store: Path, bodies: Path | None = None) -> list[dict]:
    with live_server(tree, bundle, store) as base, httpx.Client(base_url=base, timeout=60) as client:
        return run_calls(client.request, bodies)


def git_commit(tree: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def compare(a_path: Path, b_path: Path) -> int:
    """Prints each request whose answer differs (status, a header, the body); 1 if any does."""
    a, b = json.loads(a_path.read_text(encoding="utf-8")), json.loads(b_path.read_text(encoding="utf-8"))
    print(f"A: {a['commit'][:12]} ({a_path})\nB: {b['commit'][:12]} ({b_path})")
    differences = 0
    for transport in sorted(set(a["transports"]) | set(b["transports"])):
        left, right = a["transports"].get(transport), b["transports"].get(transport)
        if left is None or right is None:
            print(f"[{transport}] only in {'B' if left is None else 'A'}")
            differences += 1
            continue
        by_name = {r["name"]: r for r in right}
        for old in left:
            new = by_name.pop(old["name"], None)
            if new is None:
                print(f"[{transport}] {old['request']}: only in A")
                differences += 1
                continue
            lines = []
            if old["status"] != new["status"]:
                lines.append(f"status {old['status']} -> {new['status']}")
            old_headers, new_headers = dict(map(tuple, old["headers"])), dict(map(tuple, new["headers"]))
            for key in sorted(set(old_headers) | set(new_headers)):
                if old_headers.get(key) != new_headers.get(key):
                    lines.append(f"header {key}: {old_headers.get(key)!r} -> {new_headers.get(key)!r}")
            if old["body_sha256"] != new["body_sha256"]:
                lines.append(f"body {old['body_bytes']} -> {new['body_bytes']} bytes, sha256 differs")
            if lines:
                differences += 1
                print(f"[{transport}] {old['name']}: {old['request']}\n    " + "\n    ".join(lines))
        for name in by_name:
            print(f"[{transport}] {name}: only in B")
            differences += 1
    count = sum(len(v) for v in a["transports"].values())
    print(f"{differences} of {count} answers differ" if differences else f"all {count} answers identical")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write the snapshot JSON")
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout to run (default: this one)")
    parser.add_argument("--bundle", type=Path, default=DEMO / "bundle")
    parser.add_argument("--store", type=Path, default=DEMO / "store")
    parser.add_argument("--no-uvicorn", action="store_true", help="only the in-process ASGI app")
    parser.add_argument("--bodies", type=Path, help="also write each body into this folder (asgi/, uvicorn/)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="print how two snapshots differ")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("give --out FILE (or --compare A B)")
    tree = args.tree.resolve()
    sys.path.insert(0, str(tree))  # before any import of the project's packages
    bodies = {name: args.bodies / name if args.bodies else None for name in ("asgi", "uvicorn")}
    transports = {"asgi": in_process(tree, args.bundle, args.store, bodies["asgi"])}
    if not args.no_uvicorn:
        transports["uvicorn"] = over_uvicorn(tree, args.bundle, args.store, bodies["uvicorn"])
    snapshot = {
        "commit": git_commit(tree),
        "bundle": str(args.bundle),
        "store": str(args.store),
        "volatile": {
            "headers": list(VOLATILE_HEADERS),
            "file_headers": list(VOLATILE_FILE_HEADERS),
            "bodies": list(VOLATILE_BODIES),
        },
        "transports": transports,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(snapshot, indent=1) + "\n", encoding="utf-8")
    print(f"{sum(len(v) for v in transports.values())} answers from {snapshot['commit'][:12]} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

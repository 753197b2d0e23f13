"""Every client sees the map (issue 10), tried with real clients against a real uvicorn: GDAL reads
the README's exact XYZ URL through its TMS minidriver and WMTS at 256 and 512 pixels, and the map of
an instant (`datetime=`) through WMTS; the default
colour scale is one scale per query and metadata that uses the ramp; registered query ids survive
restarts with and without Redis, and a Redis filled by tile traffic keeps every query record."""

from __future__ import annotations

import io
import re
import time
import xml.etree.ElementTree as ET

import httpx
import mercantile
import numpy as np
import pytest
import rasterio
import redis
import soundfile
import yaml
from PIL import Image
from rasterio.windows import Window, from_bounds

from benchmarks.colour_use import ramp_positions, read_mosaic
from tests.conftest import free_port, start_redis, wait_for_port
from tests.server_support import REPO, live_server, make_client

NS = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}
README_URL = re.search(
    r"http://127\.0\.0\.1:8000(/tiles/\{z\}/\{x\}/\{y\}\.png\?q=birdsong&hour=6)",
    (REPO / "README.md").read_text(encoding="utf-8"),
).group(1)


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    with live_server(bundle_path, store_path) as url:
        yield url


def test_gdal_reads_the_readme_url_with_a_readable_colour_scale(server):
    """The plain URL, no `rescale`: the mosaic spans the ramp instead of its dark end."""
    rgba, _ = read_mosaic(server + README_URL, zoom=2)
    positions = ramp_positions(rgba, "magma")
    drawn = positions[np.isfinite(positions)]
    assert drawn.size > 10_000, "the fixture store covers Europe: part of the zoom-2 mosaic"
    assert np.percentile(drawn, 99) >= 0.8, "the likeliest places reach the top fifth of the ramp"
    assert np.percentile(drawn, 1) <= 0.2, "the least likely reach the bottom fifth"
    unit = read_mosaic(server + README_URL + "&rescale=0,1", zoom=2)[0]
    assert np.percentile(ramp_positions(unit, "magma")[np.isfinite(positions)], 99) < np.percentile(drawn, 99), (
        "rescale= still overrides the default"
    )


def test_one_scale_per_query_and_metadata_echoed_by_tilejson(server):
    """TileJSON reports the scale the tiles use; it follows hour=, and tiles agree across zooms
    (the match-probability layer, whose values lie in 0..1)."""
    query = {"q": "birdsong", "layer": "heatmap"}
    plain = httpx.get(f"{server}/tilejson.json", params=query, timeout=60).json()
    dawn = httpx.get(f"{server}/tilejson.json", params={**query, "hour": 6}, timeout=60).json()
    for doc in (plain, dawn):
        lo, hi = doc["rescale"]
        assert 0 <= lo < hi <= 1 and doc["scale"]["min"] == lo and doc["scale"]["max"] == hi
        assert "match probability" in doc["scale"]["units"] and "percentile" in doc["scale"]["method"]
        assert f"{lo:g}" in doc["description"] and f"{hi:g}" in doc["description"]
        assert isinstance(doc["scale"]["clipped_low"], bool) and doc["tilesize"] == 256
    assert plain["rescale"] != dawn["rescale"], "the scale follows the metadata"
    assert "rescale" not in plain["tiles"][0], "the tile URL stays short"
    # The tiles draw with exactly that scale: a PNG equals the npy values quantised over it.
    values = np.load(
        io.BytesIO(
            httpx.get(f"{server}/tiles/WebMercatorQuad/4/8/5.npy", params={**query, "hour": 6}, timeout=60).content
        )
    )
    png = np.asarray(
        Image.open(io.BytesIO(httpx.get(f"{server}/tiles/4/8/5.png", params={**query, "hour": 6}, timeout=60).content))
    )
    lo, hi = dawn["rescale"]
    expected = 1 + np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 254).astype(np.uint8)
    valid = np.isfinite(values)
    assert np.array_equal(png[valid], expected[valid])
    explicit = httpx.get(f"{server}/tilejson.json", params={**query, "rescale": "0,0.5"}, timeout=60).json()
    assert explicit["rescale"] == [0, 0.5] and explicit["scale"]["method"] == "rescale parameter"


@pytest.mark.parametrize("size", [256, 512])
def test_gdal_reads_wmts_at_each_tile_size(server, size):
    caps = httpx.get(f"{server}/WMTSCapabilities.xml", params={"q": "birdsong", "tilesize": size}, timeout=60)
    root = ET.fromstring(caps.content)
    widths = {m.find("w:TileWidth", NS).text for m in root.iter(f"{{{NS['w']}}}TileMatrix")}
    assert widths == {str(size)}
    assert "match probability" in root.find("w:Contents/w:Layer/ows:Abstract", NS).text
    z, x, y = 6, 33, 22
    with rasterio.open(f"WMTS:{server}/WMTSCapabilities.xml?q=birdsong&tilesize={size},layer=heatmap") as src:
        assert src.transform.a == pytest.approx(2 * 20037508.3427892 / (size * 2**z))
        window = from_bounds(*mercantile.xy_bounds(x, y, z), transform=src.transform)
        rgba = src.read(window=Window(round(window.col_off), round(window.row_off), size, size))
    tile = httpx.get(
        f"{server}/tiles/WebMercatorQuad/{z}/{x}/{y}.png",
        params={"q": "birdsong", "tilesize": size, "layer": "heatmap"},
        timeout=60,
    )
    expected = np.asarray(Image.open(io.BytesIO(tile.content)).convert("RGBA")).transpose(2, 0, 1)
    assert rgba.shape == (4, size, size) and np.array_equal(rgba, expected)


def test_gdal_reads_the_map_of_an_instant_through_wmts(server):
    """OGC clients give a time as one instant (`datetime`, tests/test_datetime.py): GDAL reads the
    WMTS layer of that instant, whose tile URLs carry it, each cell at its own clock."""
    z, x, y = 6, 36, 22  # Romania and Ukraine (EET) beside Hungary (CET)
    instant = {"q": "birdsong", "layer": "heatmap", "datetime": "2024-07-01T10:00:00Z"}
    with rasterio.open(
        f"WMTS:{server}/WMTSCapabilities.xml?q=birdsong&datetime=2024-07-01T10%3A00%3A00Z,layer=heatmap"
    ) as src:
        window = from_bounds(*mercantile.xy_bounds(x, y, z), transform=src.transform)
        rgba = src.read(window=Window(round(window.col_off), round(window.row_off), 256, 256))

    def tile(params: dict) -> np.ndarray:
        got = httpx.get(f"{server}/tiles/WebMercatorQuad/{z}/{x}/{y}.png", params=params, timeout=60)
        return np.asarray(Image.open(io.BytesIO(got.content)).convert("RGBA")).transpose(2, 0, 1)

    assert np.array_equal(rgba, tile(instant))
    assert not np.array_equal(rgba, tile({"q": "birdsong", "layer": "heatmap", "hour": 13, "month": 7}))


def test_ogc_tile_matrix_sets_are_listed(server):
    sets = httpx.get(f"{server}/tileMatrixSets", timeout=30).json()["tileMatrixSets"]
    assert [s["id"] for s in sets] == ["WebMercatorQuad", "WorldCRS84Quad"]
    for listed, (columns, rows) in zip(sets, ((1, 1), (2, 1)), strict=True):
        tms = httpx.get(listed["links"][0]["href"], timeout=30).json()
        zoom0 = tms["tileMatrices"][0]
        assert tms["id"] == listed["id"] and zoom0["tileWidth"] == 256
        assert (zoom0["matrixWidth"], zoom0["matrixHeight"]) == (columns, rows)
    assert httpx.get(f"{server}/tileMatrixSets/Nope", timeout=30).status_code == 404
    assert any("tilematrixset" in c for c in httpx.get(f"{server}/conformance", timeout=30).json()["conformsTo"])


def _wav_bytes(seconds: float = 2.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def _register(base: str) -> list[str]:
    text = httpx.post(f"{base}/queries", json={"text": "a saved birdsong link"}, timeout=60)
    audio = httpx.post(f"{base}/queries", content=_wav_bytes(), headers={"Content-Type": "audio/wav"}, timeout=60)
    assert text.status_code == audio.status_code == 201, (text.text, audio.text)
    return [text.json()["id"], audio.json()["id"]]


def _resolves(base: str, ids: list[str]) -> None:
    for qid in ids:
        assert httpx.get(f"{base}/queries/{qid}", timeout=60).status_code == 200
        tile = httpx.get(f"{base}/tiles/3/4/2.png", params={"query": qid}, timeout=60)
        assert tile.status_code == 200 and tile.headers["content-type"] == "image/png"


def test_query_ids_survive_a_restart_without_redis(bundle_path, store_path, tmp_path):
    db = tmp_path / "queries.sqlite"
    with live_server(bundle_path, store_path, args=("--query-db", str(db))) as base:
        ids = _register(base)
    with live_server(bundle_path, store_path, args=("--query-db", str(db))) as base:
        _resolves(base, ids)
        assert httpx.get(f"{base}/queries/{'0' * 16}", timeout=30).status_code == 404


def test_query_ids_survive_a_restart_with_redis_on_another_replica(bundle_path, store_path, tmp_path, redis_server):
    with live_server(
        bundle_path, store_path, redis_url=redis_server, args=("--query-db", str(tmp_path / "a.sqlite"))
    ) as a:
        ids = _register(a)
    # Another replica with an empty registry file of its own: the records come from Redis.
    with live_server(
        bundle_path, store_path, redis_url=redis_server, args=("--query-db", str(tmp_path / "b.sqlite"))
    ) as b:
        _resolves(b, ids)


@pytest.fixture
def small_redis(tmp_path):
    """A real redis-server with the eviction policy docker-compose.yml ships and little memory."""
    policy = _compose_redis_option("--maxmemory-policy")
    port = free_port()
    proc = start_redis(port, tmp_path, "--maxmemory-policy", policy)
    try:
        wait_for_port(port)
        client = redis.Redis(port=port)
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 3 * 1024 * 1024)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _compose_redis_option(name: str) -> str:
    command = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))["services"]["redis"]["command"]
    return command[command.index(name) + 1]


def test_tile_traffic_never_evicts_a_query_record(bundle_path, store_path, tmp_path, small_redis):
    url, client = small_redis
    with make_client(bundle_path, store_path, redis_url=url, query_db=str(tmp_path / "a.sqlite")) as app:
        registered = [app.post("/queries", json={"text": f"sound number {i}"}) for i in range(40)]
        assert all(r.status_code == 201 for r in registered), registered[-1].text
        ids = [r.json()["id"] for r in registered]
        flooded = 0
        for z in range(3, 7):
            for x, y in [(t.x, t.y) for t in mercantile.tiles(-10, 36, 30, 60, [z])]:
                for layer in ("heatmap", "uncertainty"):
                    r = app.get(f"/tiles/WebMercatorQuad/{z}/{x}/{y}.npy", params={"q": "rain", "layer": layer})
                    assert r.status_code == 200
                    flooded += 1
            if client.info("stats")["evicted_keys"] > 50:
                break
    assert client.info("stats")["evicted_keys"] > 50, f"{flooded} tiles did not fill Redis: the test proves nothing"
    with make_client(bundle_path, store_path, redis_url=url, query_db=str(tmp_path / "b.sqlite")) as replica:
        missing = [qid for qid in ids if replica.get(f"/queries/{qid}").status_code != 200]
    assert not missing, f"{len(missing)} of {len(ids)} query records were evicted by tiles"


def test_registrations_during_a_redis_outage_are_shared_when_it_is_back(bundle_path, store_path, tmp_path):
    """Redis down: the registration is kept in the registry file (201) and reaches Redis, and so
    another replica, once Redis answers again; a full registry is an error, never a lost 201."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with make_client(bundle_path, store_path, redis_url=url, query_db=str(tmp_path / "a.sqlite"), max_queries=2) as app:
        ids = [app.post("/queries", json={"text": t}).json()["id"] for t in ("during the outage", "and another")]
        assert app.get("/tiles/3/4/2.png", params={"q": "still served"}).status_code == 200
        full = app.post("/queries", json={"text": "one too many"})
        assert full.status_code == 507 and "SOUNDSCAPE_MAX_QUERIES" in full.json()["detail"]
        proc = start_redis(port, tmp_path)
        try:
            wait_for_port(port)
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(client.exists(f"st:registered:{q}") for q in ids):
                app.get("/healthz")  # the test client's event loop runs the retry between requests
                time.sleep(0.2)
            with make_client(bundle_path, store_path, redis_url=url, query_db=str(tmp_path / "b.sqlite")) as replica:
                assert [replica.get(f"/queries/{q}").status_code for q in ids] == [200, 200]
        finally:
            proc.terminate()
            proc.wait(timeout=10)

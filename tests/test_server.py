"""The tile server end to end: a store built from real imagery, served over HTTP."""

import httpx
import numpy as np
import pytest
import redis
from rio_tiler.io import Reader

from server.engine import QueryMetadata
from tests.server_support import LAND_TILE, decode_png, live_server, make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def land_pixels(imagery_path, z, x, y) -> np.ndarray:
    """Mask of the tile's pixels over land (imagery present and not blue)."""
    with Reader(str(imagery_path)) as src:
        img = src.tile(x, y, z, tilesize=256)
    r, g, b = (img.data[i].astype(int) for i in range(3))
    return (img.mask > 0) & ~((b > r + 8) & (b > g))


@pytest.fixture(scope="module")
def server(bundle_path, store_path):
    with live_server(bundle_path, store_path, args=("--cache-control", "public, max-age=7")) as url:
        yield url


@pytest.mark.parametrize("layer", ["heatmap", "uncertainty"])
def test_tiles_over_http(server, imagery_path, layer):
    z, x, y = LAND_TILE
    url = f"{server}/tiles/{z}/{x}/{y}.png"
    params = {"q": "waves on the open ocean", "layer": layer}
    first = httpx.get(url, params=params, timeout=30)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    pixels = decode_png(first.content)
    assert pixels.shape == (256, 256)
    land = land_pixels(imagery_path, z, x, y)
    assert land.sum() > 1000
    assert len(np.unique(pixels[land])) > 3, "the map is flat over land"
    assert (pixels[land] > 0).mean() > 0.9, "land pixels have cells"
    second = httpx.get(url, params=params, timeout=30)
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert first.headers["cache-control"] == "public, max-age=7", "serve --cache-control"


def test_heatmap_depends_on_the_query(client):
    z, x, y = LAND_TILE
    sea = decode_png(client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "waves on the open ocean"}).content)
    sand = decode_png(client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "dry wind in a sandy desert"}).content)
    assert (sea != sand).mean() > 0.2


def test_hour_changes_the_map_and_fusions_are_cached(client):
    z, x, y = LAND_TILE
    stats = client.app.state.service.stats
    fusions = stats["fusions"]
    heatmap = {"layer": "heatmap", "rescale": "0,0.3"}  # match probabilities: this rescale spans them
    plain = client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "birdsong", **heatmap}).content
    assert stats["fusions"] == fusions, "default metadata is read from the store"
    dawn = client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "birdsong", "hour": 6, **heatmap}).content
    assert stats["fusions"] == fusions + 1
    assert plain != dawn
    # Another query at the same hour reuses the fused block: no new fusion.
    client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "rain on leaves", "hour": 6, **heatmap})
    assert stats["fusions"] == fusions + 1


def test_the_default_scale_is_read_from_the_sample_cells_as_tiles_hold_them(client):
    """The scale sample's means are kept widened to float32, once per metadata; the scale equals
    the one drawn from the cells as a tile holds them (float16, stored or fused)."""
    service = client.app.state.service
    engine = service.engine
    level, rows = engine.scale_sample
    query = engine.embed_text("birdsong")
    for params, meta in (({}, QueryMetadata()), ({"hour": 6, "month": 2}, QueryMetadata(hour=6, month=2))):
        doc = client.get("/tilejson.json", params={"q": "birdsong", "layer": "heatmap", **params}).json()
        cells = engine.embeddings(level, rows, meta)
        assert cells.mu.dtype == np.float16
        scale = engine.default_scale(engine.values(cells, "heatmap", query))
        assert doc["rescale"] == [scale.lo, scale.hi]
        kept = service.scale_cells.get_now(f"{meta.hour}/{meta.month}/{meta.source}")
        assert kept.mu.dtype == np.float32 and np.array_equal(kept.mu, cells.mu.astype(np.float32))


def test_tile_without_cells_is_transparent(client):
    r = client.get("/tiles/6/0/0.png", params={"q": "birdsong"})  # far from Europe
    assert r.status_code == 200
    assert not decode_png(r.content).any()


def test_tilejson_echoes_the_query(client):
    tj = client.get("/tilejson.json", params={"q": "birdsong", "hour": 6, "layer": "heatmap"}).json()
    assert tj["tilejson"] == "3.0.0"
    assert tj["tiles"][0].endswith("/tiles/{z}/{x}/{y}.png?q=birdsong&hour=6&layer=heatmap")
    assert (tj["minzoom"], tj["maxzoom"]) == (0, 6)
    assert tj["bounds"][0] == pytest.approx(-12.0)
    qid = client.post("/queries", json={"text": "birdsong"}).json()["id"]
    tms = client.get(
        "/WebMercatorQuad/tilejson.json", params={"query": qid, "layer": "heatmap", "tilesize": 512}
    ).json()
    assert tms["tiles"][0].endswith(
        f"/tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?query={qid}&layer=heatmap&tilesize=512"
    )
    assert tms["rescale"] == client.get(f"/queries/{qid}").json()["score_range"], "one default scale"
    assert client.get("/tilejson.json", params={"query": "0" * 16}).status_code == 404


def test_second_request_is_served_from_redis(bundle_path, store_path, redis_server):
    """A second replica on the same Redis serves the tile without rendering."""
    with make_client(bundle_path, store_path, redis_url=redis_server) as one:
        r1 = one.get("/tiles/4/8/6.png", params={"q": "Birdsong  "})
    keys = redis.Redis.from_url(redis_server).keys("st:tile:*")
    assert len(keys) == 1
    assert redis.Redis.from_url(redis_server).get(keys[0]) == r1.content
    with make_client(bundle_path, store_path, redis_url=redis_server) as two:
        r2 = two.get("/tiles/4/8/6.png", params={"q": "birdsong"})  # same query once normalised
    assert r2.content == r1.content
    assert two.app.state.service.stats["renders"] == 0
    assert two.app.state.service.stats["text_encodings"] == 0, "query embedding came from Redis too"


def test_workers_share_registered_queries_through_redis(bundle_path, store_path, redis_server):
    """`serve --workers 2`: a registered audio query lives in Redis, so either worker tiles it."""
    import io

    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, 0.1 * np.sin(np.arange(32000) * 0.03).astype(np.float32), 16000, format="WAV")
    with live_server(bundle_path, store_path, workers=2, redis_url=redis_server) as url:
        qid = httpx.post(
            f"{url}/queries", content=buf.getvalue(), headers={"Content-Type": "audio/wav"}, timeout=30
        ).json()["id"]
        with httpx.Client(timeout=30) as http:  # new connections spread over both workers
            statuses = {
                http.get(f"{url}/tiles/4/8/{y}.png", params={"query": qid}, headers={"Connection": "close"}).status_code
                for y in range(4, 8)
                for _ in range(3)
            }
    assert statuses == {200}
    assert redis.Redis.from_url(redis_server).exists(f"st:registered:{qid}")


def test_redis_down_still_serves(bundle_path, store_path):
    from tests.conftest import free_port

    with make_client(bundle_path, store_path, redis_url=f"redis://127.0.0.1:{free_port()}/0") as client:
        assert client.get("/tiles/4/8/6.png", params={"q": "birdsong"}).status_code == 200
        assert client.get("/readyz").json()["redis"] == "down"


def test_store_of_another_bundle_is_refused(bundle_path, store_path, tmp_path):
    import json
    import shutil

    from store.format import StoreError

    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["bundle_id"] = "0" * 16
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(StoreError, match="built by bundle 0000000000000000"):
        make_client(bundle_path, copy)


def test_a_started_server_has_its_contrast_reference_ready(bundle_path, store_path):
    """The default layer's reference prompts are embedded at start-up, not by the first tile."""
    engine = make_client(bundle_path, store_path).app.state.service.engine
    assert {"reference", "scale_sample"} <= set(vars(engine)), "cached properties computed by warm_up"

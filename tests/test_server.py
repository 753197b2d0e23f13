"""The tile server end to end: a store built from real imagery, served over HTTP."""
import io
import subprocess
import sys

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from rio_tiler.io import Reader
from server.app import create_app
from server.settings import Settings
from tests.conftest import free_port, wait_for_port

# A tile of the fixture with land and sea: the Alps to the Baltic, Italy and the Adriatic.
LAND_TILE = (3, 4, 2)


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return TestClient(create_app(Settings(bundle=str(bundle_path), store=str(store_path))))


def decode(body: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG" and image.mode == "P"
    return np.asarray(image)


def land_pixels(imagery_path, z, x, y) -> np.ndarray:
    """Mask of the tile's pixels over land (imagery present and not blue)."""
    with Reader(str(imagery_path)) as src:
        img = src.tile(x, y, z, tilesize=256)
    r, g, b = (img.data[i].astype(int) for i in range(3))
    return (img.mask > 0) & ~((b > r + 8) & (b > g))


@pytest.fixture(scope="module")
def live_server(bundle_path, store_path):
    """The app under a real uvicorn on a random loopback port."""
    port = free_port()
    env = {"SOUNDSCAPE_BUNDLE": str(bundle_path), "SOUNDSCAPE_STORE": str(store_path), "PATH": ""}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "server.asgi:create_app_from_env",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("layer,params", [("heatmap", {"q": "waves on the open ocean"}),
                                          ("uncertainty", {"q": "waves on the open ocean"})])
def test_tiles_over_http(live_server, imagery_path, layer, params):
    z, x, y = LAND_TILE
    url = f"{live_server}/tiles/{z}/{x}/{y}.png"
    first = httpx.get(url, params={**params, "layer": layer}, timeout=30)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    pixels = decode(first.content)
    assert pixels.shape == (256, 256)
    land = land_pixels(imagery_path, z, x, y)
    assert land.sum() > 1000
    assert len(np.unique(pixels[land])) > 3, "the map is flat over land"
    assert (pixels[land] > 0).mean() > 0.9, "land pixels have cells"
    second = httpx.get(url, params={**params, "layer": layer}, timeout=30)
    assert second.content == first.content


def test_heatmap_depends_on_the_query(client):
    z, x, y = LAND_TILE
    sea = decode(client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "waves on the open ocean"}).content)
    sand = decode(client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "dry wind in a sandy desert"}).content)
    assert (sea != sand).mean() > 0.2


def test_hour_changes_the_map(client):
    z, x, y = LAND_TILE
    service = client.app.state.service
    fusions = service.stats["fusions"]
    plain = client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "birdsong", "rescale": "0,0.3"}).content
    dawn = client.get(f"/tiles/{z}/{x}/{y}.png", params={"q": "birdsong", "hour": 6, "rescale": "0,0.3"}).content
    assert service.stats["fusions"] == fusions + 1
    assert plain != dawn


def test_tile_outside_the_store_is_transparent(client):
    body = client.get("/tiles/6/0/0.png", params={"q": "birdsong"}).content  # far from Europe
    assert not decode(body).any()


@pytest.mark.parametrize("path", ["/tiles/2/4/0.png", "/tiles/2/0/4.png", "/tiles/25/0/0.png"])
def test_outside_the_grid_is_404(client, path):
    r = client.get(path, params={"q": "birdsong"})
    assert r.status_code == 404
    assert "outside" in r.json()["detail"]


@pytest.mark.parametrize("params,needle", [
    ({"q": "birdsong", "hour": 25}, "less than or equal to 23"),
    ({"q": "birdsong", "month": 0}, "greater than or equal to 1"),
    ({}, "q (a text query"),
    ({"q": "   "}, "q (a text query"),
    ({"q": "birdsong", "layer": "noise"}, "heatmap"),
    ({"q": "birdsong", "source": "youtube"}, "unknown value 'youtube'"),
    ({"q": "birdsong", "rescale": "1"}, "rescale"),
    ({"q": "birdsong", "colormap_name": "nope"}, "colormap"),
])
def test_bad_parameters_are_422_with_a_message(client, params, needle):
    r = client.get("/tiles/3/4/3.png", params=params)
    assert r.status_code == 422
    assert needle in str(r.json()["detail"])


def test_tilejson_echoes_the_query(client, store_path):
    tj = client.get("/tilejson.json", params={"q": "birdsong", "hour": 6}).json()
    assert tj["tilejson"] == "3.0.0"
    assert tj["tiles"][0].endswith("/tiles/{z}/{x}/{y}.png?q=birdsong&hour=6&layer=heatmap")
    assert tj["maxzoom"] == 6
    assert tj["bounds"][0] == pytest.approx(-12.0)


def test_second_request_is_served_from_redis(bundle_path, store_path, redis_server):
    app = create_app(Settings(bundle=str(bundle_path), store=str(store_path), redis_url=redis_server))
    client = TestClient(app)
    service = app.state.service
    r1 = client.get("/tiles/4/8/6.png", params={"q": "Birdsong  "})
    renders = service.stats["renders"]
    keys = redis.Redis.from_url(redis_server).keys("st:tile:*")
    assert len(keys) == 1
    assert redis.Redis.from_url(redis_server).get(keys[0]) == r1.content
    r2 = client.get("/tiles/4/8/6.png", params={"q": "birdsong"})  # same query once normalised
    assert r2.content == r1.content
    assert service.stats["renders"] == renders


def test_redis_down_still_serves(bundle_path, store_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = TestClient(create_app(Settings(bundle=str(bundle_path), store=str(store_path), redis_url=dead)))
    assert client.get("/tiles/4/8/6.png", params={"q": "birdsong"}).status_code == 200


def test_store_of_another_bundle_is_refused(bundle_path, store_path, tmp_path):
    import json
    import shutil

    from precompute.store import StoreError

    copy = tmp_path / "store"
    shutil.copytree(store_path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["bundle_id"] = "0" * 16
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="built by bundle 0000000000000000"):
        create_app(Settings(bundle=str(bundle_path), store=str(copy)))

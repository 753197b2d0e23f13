"""`soundscape pack MAP OUT.tif`: the layer's values at one zoom (by default the store's full
resolution), the server's `.tif` tiles side by side in one Cloud Optimized GeoTIFF on their grid,
a box across 180 continuing east of it, with the map's legend in words; an interrupted run
resumes to the same values; more than one zoom is refused in a sentence."""

import asyncio
import json
import math
import sqlite3

import mercantile
import numpy as np
import pytest
import rasterio

from server import pack as packing
from server import render
from server.engine import CELLS_PER_TILE_LOG2
from tests.server_support import decode_npy, make_client
from tests.test_pack import MAP, QUERY, client, pack, packed_once  # noqa: F401  (client: a fixture this module uses)

SIZE = 256


@pytest.fixture(scope="module")
def values(bundle_path, store_path, tmp_path_factory):
    """The values of birdsong at 6 h over the store's bounds, at the default zoom."""
    return packed_once(bundle_path, store_path, tmp_path_factory.mktemp("values"), "birdsong.tif")


def served(http, z: int, x: int, y: int, params: dict = QUERY) -> np.ndarray:
    answer = http.get(f"/tiles/WebMercatorQuad/{z}/{x}/{y}.npy", params=params)
    assert answer.status_code == 200, answer.text
    return decode_npy(answer.content)


def read(path) -> tuple[dict, np.ndarray]:
    with rasterio.open(path) as tiff:
        assert tiff.driver == "GTiff" and tiff.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert tiff.crs.to_epsg() == 3857 and tiff.dtypes == ("float32",) and math.isnan(tiff.nodata)
        described = {"tags": tiff.tags(), "band": tiff.descriptions[0], "transform": tiff.transform}
        return described, tiff.read(1)


def test_the_geotiff_holds_the_served_values_of_each_tile(values, client):  # noqa: F811
    path, said = values
    tilejson = client.get("/tilejson.json", params=QUERY).json()
    z = max(tilejson["minzoom"], tilejson["maxzoom"] - CELLS_PER_TILE_LOG2)
    tiles = list(mercantile.tiles(*tilejson["bounds"], zooms=[z]))
    assert f": {len(tiles)} tiles of zoom {z} ({len(tiles)} made by this run), {tilejson['name']}" in said
    described, grid = read(path)
    assert described["band"] == tilejson["name"] == "soundscape contrast: birdsong"
    assert described["tags"]["description"] == render.values_description("contrast")  # no colours: values
    assert described["tags"]["attribution"] == tilejson["attribution"]
    held = json.loads(described["tags"]["soundscape_map"])
    assert held["zooms"] == [z] and held["tiles"].startswith("/tiles/WebMercatorQuad/{z}/{x}/{y}.tif?")
    xs, ys = sorted({t.x for t in tiles}), sorted({t.y for t in tiles})
    assert grid.shape == (len(ys) * SIZE, len(xs) * SIZE)
    corner = mercantile.xy_bounds(xs[0], ys[0], z)
    assert (described["transform"].c, described["transform"].f) == pytest.approx((corner.left, corner.top))
    assert described["transform"].a == pytest.approx((corner.right - corner.left) / SIZE)
    for t in tiles:
        placed = grid[(t.y - ys[0]) * SIZE : (t.y - ys[0] + 1) * SIZE, (t.x - xs[0]) * SIZE : (t.x - xs[0] + 1) * SIZE]
        assert np.array_equal(placed, served(client, z, t.x, t.y), equal_nan=True), t
    assert np.isfinite(grid).mean() > 0.1, "the store's cells hold values"


def test_a_box_across_the_antimeridian_continues_east_of_it(bundle_path, store_path, client, tmp_path):  # noqa: F811
    """30..-170 degrees at zoom 2 is tiles 2 and 3 east of 0 degrees, then tile 0 past 180: three
    columns, in that order, the last beyond Web Mercator's edge."""
    out = tmp_path / "across.tif"
    done = pack(bundle_path, store_path, tmp_path, MAP, str(out), "--zooms", "2", "--bbox", "30,30,-170,60")
    assert done.returncode == 0, done.stderr
    described, grid = read(out)
    assert grid.shape == (SIZE, 3 * SIZE)
    left = mercantile.xy_bounds(2, 1, 2).left
    assert described["transform"].c == pytest.approx(left)
    assert described["transform"] * (3 * SIZE, 0) == pytest.approx((left + 3 * mercantile.CE / 4, mercantile.CE / 4))
    for column, x in enumerate((2, 3, 0)):
        assert np.array_equal(grid[:, column * SIZE : (column + 1) * SIZE], served(client, 2, x, 1), equal_nan=True)
    assert np.isfinite(grid[:, :SIZE]).any(), "tile 2 holds the store's cells east of 30 degrees"


def test_an_interrupted_run_resumes_to_the_same_values(values, bundle_path, store_path, tmp_path):
    whole, _ = values
    out = tmp_path / "birdsong.tif"
    partial = tmp_path / "birdsong.tif.partial"
    app = make_client(bundle_path, store_path).app

    async def stopped_run() -> None:  # what a run stopped after some batches leaves: some tiles, committed
        plan = await packing.plan_map(app, MAP, None, None, packing.DEFAULT_MAX_TILES, values=True)
        db = packing.open_partial(partial, plan.metadata)
        await packing.fill(app, plan, db, progress=False)
        db.close()

    asyncio.run(stopped_run())
    with sqlite3.connect(partial) as db:
        gone = db.execute("DELETE FROM tiles WHERE (tile_column + tile_row) % 2 = 0").rowcount
    assert gone > 0
    done = pack(bundle_path, store_path, tmp_path, MAP, str(out))
    assert done.returncode == 0, done.stderr
    assert f"({gone} made by this run)" in done.stdout and not partial.exists()
    assert np.array_equal(read(out)[1], read(whole)[1], equal_nan=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("birdsong")] == ["birdsong.tif"]


def test_more_than_one_zoom_is_one_sentence_and_no_file(bundle_path, store_path, tmp_path):
    out = tmp_path / "map.tif"
    done = pack(bundle_path, store_path, tmp_path, MAP, str(out), "--zooms", "1-3")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "a GeoTIFF holds the values of one zoom (its overviews are made from them), not 3" in done.stderr
    assert "--zooms 3" in done.stderr
    assert not out.exists() and not out.with_name("map.tif.partial").exists()

"""Tiles as GeoTIFF (`/tiles/{tms}/{z}/{x}/{y}.tif`): the values of the .npy tile of the same URL,
read by rasterio (GDAL) as a GIS reads them: one float32 band, NaN the nodata value where no cell
is, in the tile matrix set's CRS over the tile's exact bounds; cached and tagged as every tile."""

import asyncio
import io
import re

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_bounds

from server import render
from tests.server_support import LAND_TILE, REPO, decode_npy, live_server, make_client

MEDIA_TYPE = "image/tiff; application=geotiff"
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
Z, X, Y = LAND_TILE


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def tile_url(z: int, x: int, y: int, fmt: str) -> str:
    return f"/tiles/WebMercatorQuad/{z}/{x}/{y}.{fmt}"


def read_geotiff(body: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """(profile, band 1, its nodata mask) as GDAL reads the bytes."""
    with MemoryFile(body) as memory, memory.open() as tiff:
        return dict(tiff.profile), tiff.read(1), tiff.read_masks(1) == 0


def assert_georeferenced(profile: dict, z: int, x: int, y: int, size: int) -> None:
    left, bottom, right, top = WEB_MERCATOR.xy_bounds(morecantile.Tile(x, y, z))
    assert profile["driver"] == "GTiff" and profile["count"] == 1 and profile["dtype"] == "float32"
    assert (profile["width"], profile["height"]) == (size, size)
    assert profile["crs"].to_epsg() == WEB_MERCATOR.crs.to_epsg() == 3857
    assert profile["transform"] == from_bounds(left, bottom, right, top, size, size)
    transform = profile["transform"]
    assert (transform.c, transform.f) == (left, top)  # the tile's exact corner
    assert transform * (size, size) == pytest.approx((right, bottom), abs=1e-6)
    assert np.isnan(profile["nodata"])


@pytest.mark.parametrize(
    "params",
    [
        {"q": "birdsong"},
        {"q": "traffic noise", "layer": "heatmap", "hour": 6, "tilesize": 512},
        {"layer": "uncertainty", "month": 5},
    ],
)
def test_a_tif_tile_holds_the_values_of_the_npy_tile_where_it_lies(client, params):
    tif = client.get(tile_url(Z, X, Y, "tif"), params=params)
    assert tif.status_code == 200, tif.text
    assert tif.headers["content-type"] == MEDIA_TYPE
    profile, band, nodata = read_geotiff(tif.content)
    size = params.get("tilesize", 256)
    assert_georeferenced(profile, Z, X, Y, size)
    npy = decode_npy(client.get(tile_url(Z, X, Y, "npy"), params=params).content)
    assert np.array_equal(band, npy, equal_nan=True)
    assert np.array_equal(nodata, np.isnan(npy))
    assert nodata.any() and not nodata.all(), "the land tile reaches past the store's cells"
    layer = params.get("layer", "contrast")
    with MemoryFile(tif.content) as memory, memory.open() as tiff:  # what the values are, for a GIS user
        assert tiff.descriptions == (layer,) and tiff.tags()["description"] == render.values_description(layer)


def test_a_tif_tile_of_no_cells_is_all_nodata_and_still_placed(client):
    z, x, y = 3, 0, 7  # the south Pacific: inside the grid, no cell of the fixture
    tif = client.get(tile_url(z, x, y, "tif"), params={"q": "birdsong"})
    assert tif.status_code == 200 and tif.headers["content-type"] == MEDIA_TYPE
    profile, band, nodata = read_geotiff(tif.content)
    assert_georeferenced(profile, z, x, y, 256)
    assert nodata.all() and np.isnan(band).all()
    elsewhere = read_geotiff(client.get(tile_url(z, x + 1, y, "tif"), params={"q": "birdsong"}).content)[0]
    assert elsewhere["transform"] != profile["transform"]


def test_a_tif_tile_is_tagged_cached_and_sent_as_the_other_formats(client):
    url, params = tile_url(Z, X, Y, "tif"), {"q": "birdsong", "hour": 9}
    first = client.get(url, params=params, headers={"Accept-Encoding": "gzip"})
    etag = first.headers["etag"]
    assert etag.startswith('"') and "content-encoding" not in first.headers  # strong: these exact bytes
    assert (
        first.headers["cache-control"] == client.get(tile_url(Z, X, Y, "npy"), params=params).headers["cache-control"]
    )
    assert etag != client.get(tile_url(Z, X, Y, "npy"), params=params).headers["etag"]
    # values: colour parameters neither change nor name the tile
    styled = client.get(url, params={**params, "colormap_name": "viridis", "rescale": "0,0.5"})
    assert (styled.headers["etag"], styled.content) == (etag, first.content)
    assert client.get(url, params=params, headers={"If-None-Match": etag}).status_code == 304
    head = client.head(url, params=params)
    assert head.status_code == 200 and head.content == b""
    assert (head.headers["etag"], head.headers["content-length"]) == (etag, str(len(first.content)))
    listed = client.get("/openapi.json").json()["paths"]["/tiles/{tms}/{z}/{x}/{y}.{fmt}"]["get"]
    assert MEDIA_TYPE in listed["responses"]["200"]["content"]
    refused = client.get(tile_url(Z, X, Y, "tiff"), params={"q": "birdsong"})
    assert refused.status_code == 422
    assert refused.json()["detail"] == "fmt must be one of png, webp, npy, tif, not 'tiff'"


def test_tif_tiles_written_at_once_are_each_their_own(client):
    """The compute threads write GeoTIFFs at once (GDAL in each, one CRS): every tile of a burst
    is placed at its own bounds and holds its own values."""
    tiles = [(4, x, y) for x in range(7, 11) for y in range(4, 7)]
    params = {"q": "rain", "hour": 2}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=client.app), base_url="http://127.0.0.1"
        ) as http:
            return await asyncio.gather(*[http.get(tile_url(*t, "tif"), params=params) for t in tiles])

    placed = 0
    for (z, x, y), answer in zip(tiles, asyncio.run(burst()), strict=True):
        assert answer.status_code == 200, answer.text
        profile, band, _ = read_geotiff(answer.content)
        assert_georeferenced(profile, z, x, y, 256)
        npy = decode_npy(client.get(tile_url(z, x, y, "npy"), params=params).content)
        assert np.array_equal(band, npy, equal_nan=True), (z, x, y)
        placed += bool(np.isfinite(band).any())
    assert placed >= 6, "most of the burst's tiles hold cells"


def test_gdal_reads_a_tif_tile_over_http(bundle_path, store_path, capsys):
    """A real client: GDAL's /vsicurl/ against `soundscape serve` (uvicorn) on loopback, and
    docs/api.md's rasterio example run verbatim (but for the server's address)."""
    example = re.search(
        r"GeoTIFF values .*?```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(encoding="utf-8"), re.S
    )
    assert example is not None
    with live_server(bundle_path, store_path) as base:
        url = f"{base}{tile_url(2, 1, 1, 'tif')}?q=birdsong"
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(f"/vsicurl/{url}") as tiff:
            profile, band = dict(tiff.profile), tiff.read(1)
        npy = np.load(io.BytesIO(httpx.get(url.replace(".tif", ".npy")).content))
        exec(example.group(1).replace("http://127.0.0.1:8000", base), {})  # the documented code, as a user runs it
    assert_georeferenced(profile, 2, 1, 1, 256)
    assert np.array_equal(band, npy, equal_nan=True)
    assert np.isfinite(band).any()
    crs_and_bounds, pixels = capsys.readouterr().out.splitlines()
    assert crs_and_bounds == (
        "EPSG:3857 BoundingBox(left=0.0, bottom=0.0, right=10018754.17139462, top=10018754.171394622) ('float32',) nan"
    )
    assert re.fullmatch(r"\d+ of 65536 pixels hold values, -?\d+\.\d{4} to -?\d+\.\d{4}", pixels), pixels


def test_a_tif_tile_is_placed_only_on_the_grid_its_values_are_computed_on(client):
    """Tiles are computed on WebMercatorQuad's cells: WorldCRS84Quad's tiles are pictures drawn
    from them (server/maps.py), and values of it would put those values over another grid's tile.
    They are refused in a sentence, and what is served stays on WebMercatorQuad."""
    for fmt, name in (("tif", "GeoTIFF"), ("npy", ".npy")):
        other = client.get(f"/tiles/WorldCRS84Quad/1/1/0.{fmt}", params={"q": "birdsong"})
        assert other.status_code == 404, other.status_code
        assert other.json()["detail"] == (
            f"{name} tiles are served on WebMercatorQuad only, the grid their values are computed on, "
            "not on WorldCRS84Quad"
        )
    assert client.get("/tiles/WorldCRS84Quad/1/1/0.png", params={"q": "birdsong"}).status_code == 200
    served = client.get(tile_url(1, 1, 0, "tif"), params={"q": "birdsong"})
    assert_georeferenced(read_geotiff(served.content)[0], 1, 1, 0, 256)

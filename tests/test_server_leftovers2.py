"""Parameters held to one rule on every route and in every description of them: an empty
colormap_name is refused like any other empty parameter, /metadata's ranges are the ones the
parameters declare, and the OpenAPI document states the tile sizes taken."""

import pytest

from tests.server_support import LAND_TILE, make_client

Z, X, Y = LAND_TILE
TILE_ROUTES = [
    f"/tiles/{Z}/{X}/{Y}.png",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.webp",
    f"/tiles/WebMercatorQuad/{Z}/{X}/{Y}.npy",
    "/tilejson.json",
    "/WebMercatorQuad/tilejson.json",
    "/WMTSCapabilities.xml",
    "/WebMercatorQuad/WMTSCapabilities.xml",
]
EMPTY_COLORMAP = "colormap_name is empty: give a name GET /colormaps lists, or leave colormap_name out"


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    client = make_client(bundle_path, store_path)
    client.base_url = "http://localhost"  # an allowed host: TileJSON and WMTS embed it
    return client


def refused(response) -> str:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    return response.json()["detail"]


@pytest.mark.parametrize("path", TILE_ROUTES)
def test_an_empty_colormap_name_is_refused_with_the_other_bad_parameters(client, path):
    """colormap_name= drew the default colormap, where every other empty parameter answers 422."""
    alone = refused(client.get(path, params={"q": "birdsong", "colormap_name": ""}))
    assert alone == EMPTY_COLORMAP
    together = refused(client.get(path, params={"q": "birdsong", "colormap_name": "", "hour": "25"}))
    assert together.split("; ") == ["hour must be an integer in 0..23, not '25'", EMPTY_COLORMAP]
    # the uncertainty layer, drawn in its own colours, refuses it all the same, as WMTS does without a query
    for params in [{"layer": "uncertainty"}, *([{}] if "WMTS" in path else [])]:
        assert refused(client.get(path, params={**params, "colormap_name": ""})) == EMPTY_COLORMAP, params


def test_an_empty_colormap_name_is_refused_before_a_404(client):
    for path in ("/tiles/30/0/0.png", "/NoSuchTMS/tilejson.json", "/NoSuchTMS/WMTSCapabilities.xml"):
        assert refused(client.get(path, params={"q": "birdsong", "colormap_name": ""})) == EMPTY_COLORMAP

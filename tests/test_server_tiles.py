"""Tile content: seamless across borders (bilinear between cell centres, from the same cells on
both sides), formats and sizes, overzoom, and identical concurrent misses computed once."""

import io

import numpy as np
import pytest
from PIL import Image

from server.engine import QueryMetadata
from tests.server_support import concurrent_gets, decode_npy, decode_png, make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def npy(client, z, x, y, **params):
    r = client.get(f"/tiles/WebMercatorQuad/{z}/{x}/{y}.npy", params={"q": "birdsong", "layer": "heatmap", **params})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    values = decode_npy(r.content)
    assert values.dtype == np.float32
    return values


def seam_residual(before: np.ndarray, last: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Second difference across a border: 0 where the field is linear across it (no seam)."""
    return (first - last) - (last - before)


@pytest.mark.parametrize("params", [{}, {"hour": 6, "month": 1, "source": "field"}], ids=["default", "fused"])
def test_adjacent_tiles_are_seamless(client, params):
    """Across a border the field stays linear: the jump equals the step beside it. (Rendering
    cells as blocks would put a whole cell's jump on the border: a residual as large as the step.)"""
    a, right, below = npy(client, 4, 8, 5, **params), npy(client, 4, 9, 5, **params), npy(client, 4, 8, 6, **params)
    for before, last, first in ((a[:, -2], a[:, -1], right[:, 0]), (a[-2, :], a[-1, :], below[0, :])):
        residual = seam_residual(before, last, first)
        ok = np.isfinite(residual)
        assert ok.sum() > 200
        step = np.nanmax(np.abs(last - before))
        assert step > 1e-6, "the field is not flat, or the test would prove nothing"
        assert np.abs(residual[ok]).max() < 0.05 * step


def test_png_and_webp_encode_the_npy_values(client):
    values = npy(client, 4, 8, 5)
    unit = {"q": "birdsong", "layer": "heatmap", "rescale": "0,1"}
    png = decode_png(client.get("/tiles/4/8/5.png", params=unit).content)
    expected = 1 + np.rint(np.clip(values, 0, 1) * 254).astype(np.uint8)
    valid = np.isfinite(values)
    assert np.array_equal(png[valid], expected[valid]) and not png[~valid].any()
    png_rgba = np.asarray(Image.open(io.BytesIO(client.get("/tiles/4/8/5.png", params=unit).content)).convert("RGBA"))
    webp = client.get("/tiles/WebMercatorQuad/4/8/5.webp", params=unit)
    assert webp.headers["content-type"] == "image/webp"
    webp_rgba = np.asarray(Image.open(io.BytesIO(webp.content)).convert("RGBA"))
    assert np.array_equal(webp_rgba[valid], png_rgba[valid]), "lossless"
    assert (webp_rgba[..., 3][~valid] == 0).all()


def test_tilesize_512_draws_the_same_field(client):
    small, large = npy(client, 4, 8, 5), npy(client, 4, 8, 5, tilesize=512)
    assert large.shape == (512, 512)
    pooled = large.reshape(256, 2, 256, 2).mean(axis=(1, 3))
    both = np.isfinite(pooled) & np.isfinite(small)
    assert both.sum() > 1000
    assert np.abs(pooled[both] - small[both]).max() < 2e-3


def test_overzoom_interpolates_the_finest_level(client):
    """Past the finest level (6) a tile lies inside one cell; it still varies smoothly."""
    deep = npy(client, 8, 133, 88)
    assert np.isfinite(deep).all() and np.ptp(deep) > 0
    right = npy(client, 8, 134, 88)
    assert np.abs(seam_residual(deep[:, -2], deep[:, -1], right[:, 0])).max() < 1e-4


def test_npy_ignores_colour_parameters(client):
    a = client.get("/tiles/WebMercatorQuad/4/8/5.npy", params={"q": "birdsong"})
    b = client.get(
        "/tiles/WebMercatorQuad/4/8/5.npy", params={"q": "birdsong", "colormap_name": "viridis", "rescale": "0,0.5"}
    )
    assert a.headers["etag"] == b.headers["etag"] and a.content == b.content


def test_concurrent_identical_misses_are_computed_once(bundle_path, store_path):
    app = make_client(bundle_path, store_path).app
    stats = app.state.service.stats

    responses = concurrent_gets(app, "/tiles/4/8/5.png", [{"q": "wind", "hour": 5}] * 16)
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    # Two fusions: the tile's cells and the colour scale's sample (both at hour 5), each once.
    assert (stats["renders"], stats["fusions"], stats["text_encodings"]) == (1, 2, 1)


@pytest.fixture(scope="module")
def fused_store(bundle_path, imagery_path, tmp_path_factory):
    """A store of levels 3..4 whose level 4 holds precomputed hourly and monthly fusions."""
    from precompute.run import run
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery
    from tests.conftest import FIXTURE_BBOX

    out = tmp_path_factory.mktemp("fused") / "store"
    run(Imagery(imagery_path), Bundle(bundle_path), [3, 4], FIXTURE_BBOX, out, progress=False, fusion_levels=(4,))
    return out


def test_precomputed_fusions_are_served_without_fusing(bundle_path, fused_store):
    """Zoom-0 tiles draw level 4: with hour= or month= the store's fusions are read, and they
    equal fusing on the fly (a source, which the store never precomputes, still fuses)."""
    client = make_client(bundle_path, fused_store)
    stats = client.app.state.service.stats
    cases = ({"hour": 6}, {"month": 2})
    stored = [npy(client, 0, 0, 0, **params) for params in cases]
    assert stats["fusions"] == 0
    engine = client.app.state.service.engine
    window, query = engine.window(0, 0, 0, 256), engine.embed_text("birdsong")
    for params, tile in zip(cases, stored, strict=True):
        fused = engine.tile_values(
            window, engine.fuse(window.level, window.present, QueryMetadata(**params)), "heatmap", query
        )
        both = np.isfinite(tile) & np.isfinite(fused)
        assert both.sum() > 1000 and np.abs(tile[both] - fused[both]).max() < 2e-3
    fusions = stats["fusions"]
    npy(client, 0, 0, 0, hour=6, source="field")
    assert stats["fusions"] == fusions + 1

"""Property tests of the tile math: which cells a tile reads and how pixels weigh them.

Bilinear interpolation reproduces linear functions exactly, so sampling the field "global cell
coordinate" must give each pixel's own global position: pixel values are then a function of
where the pixel is on Earth, not of which tile holds it, and tiles cannot have seams."""

import numpy as np
import pytest
from fastapi import HTTPException
from hypothesis import given, settings
from hypothesis import strategies as st

from server.params import MAX_ZOOM, check_tile
from server.sampling import axis_sampling, sample

SIZES = st.sampled_from([256, 512])


@st.composite
def tile_axes(draw):
    """(zoom, tile index, drawn level, size), level from 8 below to 8 above the zoom."""
    zoom = draw(st.integers(0, 20))
    level = draw(st.integers(max(0, zoom - 8), zoom + 8))
    t = draw(st.integers(0, (1 << zoom) - 1))
    return zoom, t, level, draw(SIZES)


def pixel_positions(zoom: int, t: int, level: int, size: int) -> np.ndarray:
    """Pixel centres in global cell units of `level` (cell i spans [i, i + 1))."""
    return (t + (np.arange(size) + 0.5) / size) * 2.0 ** (level - zoom)


@settings(deadline=None, max_examples=300)
@given(tile_axes())
def test_weights_reproduce_positions(axis):
    zoom, t, level, size = axis
    s = axis_sampling(zoom, t, level, size)
    assert s.weights.min() >= 0 and np.allclose(s.weights.sum(axis=1), 1, atol=1e-6)
    centres = s.first + np.arange(s.cells) + 0.5
    interpolated = s.weights.astype(np.float64) @ centres
    want = pixel_positions(zoom, t, level, size)
    assert np.allclose(interpolated, want, rtol=0, atol=1e-3 * max(1.0, 2.0 ** (level - zoom) / size))


@settings(deadline=None, max_examples=300)
@given(tile_axes())
def test_nearest_cell_holds_the_pixel_and_the_window_is_small(axis):
    zoom, t, level, size = axis
    s = axis_sampling(zoom, t, level, size)
    assert np.array_equal(s.first + s.nearest, np.floor(pixel_positions(zoom, t, level, size)).astype(np.int64))
    assert s.cells <= max(2, (1 << max(0, level - zoom)) + 2), "a one-cell ring at most"


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 18), st.integers(0, 6), st.data())
def test_neighbours_share_their_border_cells(zoom, depth, data):
    """The last pixel of tile t and the first of tile t+1 read the same two cells."""
    t = data.draw(st.integers(0, max(0, (1 << zoom) - 2)))
    left, right = axis_sampling(zoom, t, zoom + depth, 256), axis_sampling(zoom, t + 1, zoom + depth, 256)
    used_left = set(left.first + np.flatnonzero(left.weights[-1]))
    used_right = set(right.first + np.flatnonzero(right.weights[0]))
    assert used_left == used_right


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 4), st.floats(-5, 5), st.floats(-5, 5), st.floats(-5, 5))
def test_sample_is_exact_on_planes_and_honours_missing_cells(depth, a, b, c):
    rows, cols = axis_sampling(3, 2, 3 + depth, 256), axis_sampling(3, 5, 3 + depth, 256)
    ys, xs = rows.first + np.arange(rows.cells) + 0.5, cols.first + np.arange(cols.cells) + 0.5
    plane = (a * ys[:, None] + b * xs[None, :] + c).astype(np.float32)
    out = sample(plane, rows, cols)
    py, px = pixel_positions(3, 2, 3 + depth, 256), pixel_positions(3, 5, 3 + depth, 256)
    assert np.allclose(out, a * py[:, None] + b * px[None, :] + c, atol=1e-3)
    holed = plane.copy()
    holed[1, 1] = np.nan
    out = sample(holed, rows, cols)
    inside = (rows.nearest == 1)[:, None] & (cols.nearest == 1)[None, :]
    assert np.isnan(out[inside]).all() and np.isfinite(out[~inside]).all()


@settings(deadline=None, max_examples=300)
@given(st.integers(-2, 30), st.integers(-(1 << 31), 1 << 31), st.integers(-(1 << 31), 1 << 31))
def test_tile_validity_is_the_grid(z, x, y):
    """check_tile answers 404 exactly for tiles outside the WebMercatorQuad grid of zooms 0..24."""
    inside = 0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z
    try:
        check_tile("WebMercatorQuad", z, x, y)
        assert inside
    except HTTPException as exc:
        assert not inside and exc.status_code == 404
    with pytest.raises(HTTPException):
        check_tile("UTM31WGS84Quad", 0, 0, 0)
    # WorldCRS84Quad: two columns of one row at zoom 0, each doubling per zoom, to zoom 23
    check_tile("WorldCRS84Quad", 0, 1, 0)
    check_tile("WorldCRS84Quad", 23, 2**24 - 1, 2**23 - 1)
    for z, x, y in ((0, 2, 0), (0, 0, 1), (3, 16, 0), (3, 0, 8), (24, 0, 0)):
        with pytest.raises(HTTPException):
            check_tile("WorldCRS84Quad", z, x, y)

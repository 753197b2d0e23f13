import mercantile
import numpy as np
import pytest

from runtime.tiles import (
    demorton,
    ground_sample_distance,
    morton,
    points_per_tile,
    quadkey,
    tile_bounds,
    tile_centres,
    tiles_in_bbox,
)


@pytest.mark.parametrize("z,x,y", [(0, 0, 0), (1, 1, 0), (5, 17, 30), (13, 4100, 7000), (22, 3_000_000, 123)])
def test_morton_order_is_quadkey_order(z, x, y):
    qk = quadkey(x, y, z)
    assert qk == mercantile.quadkey(x, y, z)
    assert morton(x, y) == (int(qk, 4) if qk else 0)
    assert demorton(morton(x, y)) == (x, y)


def test_morton_arrays_round_trip_and_sort_like_quadkeys():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 1 << 10, 500), rng.integers(0, 1 << 10, 500)
    codes = morton(x, y)
    assert codes.dtype == np.uint64
    bx, by = demorton(codes)
    assert (bx == x).all() and (by == y).all()
    by_code = [quadkey(int(x[i]), int(y[i]), 10) for i in np.argsort(codes, kind="stable")]
    assert by_code == sorted(by_code)


def test_centres_and_bounds_agree_with_mercantile():
    lon, lat = tile_centres(4, np.array([3]), np.array([9]))
    b = mercantile.bounds(3, 9, 4)
    assert b.west < lon[0] < b.east and b.south < lat[0] < b.north
    assert tile_bounds(4, 3, 9) == pytest.approx((b.west, b.south, b.east, b.north))


def test_gsd_halves_per_zoom_and_shrinks_with_latitude():
    assert ground_sample_distance(0, 0.0, 256) == pytest.approx(156543.03, rel=1e-6)
    assert ground_sample_distance(5, 0.0, 256) * 2 == pytest.approx(ground_sample_distance(4, 0.0, 256))
    assert ground_sample_distance(3, 60.0, 256) == pytest.approx(ground_sample_distance(3, 0.0, 256) / 2)


def test_tiles_in_bbox_matches_mercantile():
    bbox = (-12.0, 28.0, 36.0, 62.0)
    x, y = tiles_in_bbox(5, bbox)
    ours = set(zip(x.tolist(), y.tolist(), strict=True))
    theirs = {(t.x, t.y) for t in mercantile.tiles(*bbox, zooms=5)}
    assert ours == theirs


def test_a_tiles_own_bounds_select_only_that_tile():
    for z, x, y in [(0, 0, 0), (4, 3, 9), (9, 300, 17), (18, 131071, 90000)]:
        xs, ys = tiles_in_bbox(z, tile_bounds(z, x, y))
        assert list(zip(xs.tolist(), ys.tolist(), strict=True)) == [(x, y)]


def test_tile_range_clamps_latitudes_to_the_mercator_limit():
    xs, ys = tiles_in_bbox(2, (-180.0, -90.0, 180.0, 90.0))
    assert len(xs) == 16 and ys.min() == 0 and ys.max() == 3


def test_points_per_tile_counts_as_mercantile_places_points():
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-80, 80, 400), rng.uniform(-180, 180, 400)
    expected: dict[tuple[int, int], int] = {}
    for a, o in zip(lat, lon, strict=True):
        t = mercantile.tile(o, a, 3)
        expected[(t.x, t.y)] = expected.get((t.x, t.y), 0) + 1
    x, y = np.array([k[0] for k in expected] + [0]), np.array([k[1] for k in expected] + [7])
    counts = points_per_tile(lat, lon, 3, x, y)
    assert counts[:-1].tolist() == list(expected.values())
    assert counts[-1] == expected.get((0, 7), 0)  # a tile no point falls in counts 0

"""The plan (which cells, in which order, split how), the growing .npy writer and the index."""

import itertools
import json

import faiss
import mercantile
import numpy as np
import pytest

from precompute.landmask import LandMask
from precompute.plan import BLOCK_DEPTH, Plan, PlanError, Region, parse_bbox, parse_levels, parse_shard
from runtime.tiles import morton, tile_bounds, tiles_in_bbox
from store.index import build_index, exact_top_k, recall_at_k
from store.npy import GrowingNpy


def _codes(plan: Plan, level: int) -> np.ndarray:
    lp = plan.level(level)
    return np.concatenate([c for c, _, _ in lp.cells(0, len(lp))])


def test_level_enumeration_is_sorted_and_equals_the_bbox_tiles():
    bbox = (-12.3, 28.1, 36.7, 61.9)
    for level in (3, BLOCK_DEPTH + 2):  # one block; several blocks
        codes = _codes(Plan([level], bbox), level)
        x, y = tiles_in_bbox(level, bbox)
        assert (np.diff(codes.astype(np.int64)) > 0).all()
        assert codes.tolist() == sorted(morton(x, y).tolist())


def test_batches_and_positions_agree_with_the_enumeration():
    lp = Plan([BLOCK_DEPTH + 1], (0.1, 40.1, 30.2, 55.3)).level(BLOCK_DEPTH + 1)
    every = _codes(lp.plan, lp.level)
    got = list(lp.batches(48, len(lp), 16))
    assert [p for p, *_ in got] == list(range(48, len(lp), 16))
    assert np.concatenate([c for _, c, _, _ in got]).tolist() == every[48:].tolist()
    positions = np.array([0, 5, len(lp) - 1])
    assert lp.at(positions)[0].tolist() == every[positions].tolist()


def test_shards_are_contiguous_batch_aligned_and_cover_the_level():
    lp = Plan([7], (-20, 30, 40, 60)).level(7)
    edges = [lp.shard(i, 3, 32) for i in range(3)]
    assert edges[0][0] == 0 and edges[-1][1] == len(lp)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))
    assert all(start % 32 == 0 for start, _ in edges)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "a/b", "1", "1_0/20", "\u0661/2", "-0/1"):
        with pytest.raises(PlanError):
            parse_shard(bad)


@pytest.mark.parametrize(
    "text, said",
    [
        ("0-99999999999", "levels must look like 0-6 or 2,4,5"),  # hung building 10**11 levels
        ("0-25", "levels must lie in 0..24"),
        ("\u0663", "levels must look like"),
        ("7-3", "run from high to low; write 3-7"),
    ],
)
def test_levels_are_read_before_any_range_is_built(text, said):
    with pytest.raises(PlanError, match=said):
        parse_levels(text)
    assert parse_levels("2,4-5") == [2, 4, 5]


@pytest.mark.parametrize("text", ["1_0,0,20,20", "\u0663,0,20,20", "0,0,20,2\uff10", "nan,0,1,1", "0,0,1"])
def test_a_bbox_is_plain_numbers_as_every_number_option(text):
    """'1_0' read as 10 and an Arabic-Indic 3 as 3 (other options refuse them: runtime.arguments)."""
    with pytest.raises(PlanError, match="bbox"):
        parse_bbox(text)
    assert parse_bbox(" -10.5, 35,22 ,6.7e1") == (-10.5, 35.0, 22.0, 67.0)


def _region(tmp_path, coordinates) -> Region:
    path = tmp_path / "region.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [coordinates]}}
                ],
            }
        ),
        encoding="utf-8",
    )
    return Region.load(path)


def test_rectangle_region_selects_exactly_the_tiles_of_its_bbox(tmp_path):
    box = (2.3, 44.2, 17.9, 52.6)  # edges off the tile grid
    region = _region(
        tmp_path, [[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]], [box[0], box[1]]]
    )
    assert region.bbox == box
    for level in (5, 9):
        x, y = tiles_in_bbox(level, box)
        assert _codes(Plan([level], (-180, -85, 180, 85), region=region), level).tolist() == sorted(
            morton(x, y).tolist()
        )


def test_triangle_region_keeps_touched_cells_only(tmp_path):
    triangle = [[0.0, 40.0], [20.0, 40.0], [0.0, 60.0], [0.0, 40.0]]
    plan = Plan([6], (-180, -85, 180, 85), region=_region(tmp_path, triangle))
    kept = set(_codes(plan, 6).tolist())
    for lon, lat in ((1, 41), (19, 40.5), (1, 59), (5, 45)):  # inside, near each corner
        t = mercantile.tile(lon, lat, 6)
        assert morton(t.x, t.y) in kept
    t = mercantile.tile(18, 58, 6)  # inside the bbox, beyond the hypotenuse
    assert morton(t.x, t.y) not in kept
    assert len(kept) < len(tiles_in_bbox(6, (0, 40, 20, 60))[0])


def test_bad_region_is_a_plan_error(tmp_path):
    (tmp_path / "bad.geojson").write_text("{not json", encoding="utf-8")
    with pytest.raises(PlanError, match="not a readable GeoJSON"):
        Region.load(tmp_path / "bad.geojson")


def test_land_mask_lookup_equals_brute_force_on_a_small_mask():
    rng = np.random.default_rng(3)
    land = rng.random((90, 180)) < 0.05  # 2-degree pixels, row 0 at 90 N
    mask = LandMask(land)
    x, y = tiles_in_bbox(4, (-180, -85, 180, 85))
    got = mask.any_land(4, x, y)
    for cx, cy, g in zip(x.tolist(), y.tolist(), got.tolist(), strict=True):
        w, s, e, n = tile_bounds(4, cx, cy)
        rows = slice(int(np.floor((90 - n) / 2)), int(np.ceil((90 - s) / 2)))
        cols = slice(int(np.floor((w + 180) / 2)), int(np.ceil((e + 180) / 2)))
        assert g == land[rows, cols].any()


def test_land_only_plan_drops_open_sea_and_keeps_land():
    plan = Plan([6], (-40, 20, 40, 65), land_only=True)
    kept = set(_codes(plan, 6).tolist())
    for lon, lat, is_land in ((-3.7, 40.4, True), (13.4, 52.5, True), (-30, 45, False), (-40, 35, False)):
        t = mercantile.tile(lon, lat, 6)
        assert (morton(t.x, t.y) in kept) == is_land
    assert plan.describe()["land_only"] is True


def test_growing_npy_commits_rows_and_cuts_uncommitted_ones(tmp_path):
    path = tmp_path / "a.npy"
    f = GrowingNpy(path, "float16", (3,))
    f.append(np.ones((4, 3)))
    f.commit()
    f.append(np.full((2, 3), 7))  # appended, never committed: a run killed here
    f.file.flush()
    assert np.load(path).shape == (4, 3)
    f = GrowingNpy(path, "float16", (3,), rows=4)
    f.append(np.zeros((1, 3)))
    f.close()
    got = np.load(path, mmap_mode="r")
    assert got.dtype == np.float16 and got.tolist() == [[1, 1, 1]] * 4 + [[0, 0, 0]]
    with pytest.raises(OSError, match="shorter"):
        GrowingNpy(path, "float16", (3,), rows=9)


def _gallery(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, 32))
    mu = centres[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, 32))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    return mu.astype(np.float16), (0.5 + 0.2 * rng.random(n)).astype(np.float32)


def test_ivf_index_reaches_the_recall_it_reports_and_is_deterministic():
    mu, s = _gallery(12000)
    flat, info = build_index(mu, s, flat_max=20000)
    assert info == {"kind": "flat-ip"} and isinstance(flat, faiss.IndexFlatIP)
    ivf, info = build_index(mu, s, flat_max=1000)
    assert info["kind"] == "ivf-flat-ip" and info["recall_at_10"] >= 0.95 and ivf.nprobe == info["nprobe"]
    rng = np.random.default_rng(9)  # fresh queries, not the ones it was tuned on
    q = rng.standard_normal((100, 32)).astype(np.float32)
    q = np.hstack([q / np.linalg.norm(q, axis=1, keepdims=True), np.ones((100, 1), np.float32)])
    assert recall_at_k(ivf, q, exact_top_k(mu, s, q, 10)) >= 0.9
    again, _ = build_index(mu, s, flat_max=1000)
    assert np.array_equal(faiss.serialize_index(ivf), faiss.serialize_index(again))


POLYGON = {"type": "Polygon", "coordinates": [[[0, 40], [20, 40], [0, 60], [0, 40]]]}


@pytest.mark.parametrize(
    "text, said",
    [
        ('{"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [1, 1], [0, 0]]]}', "a vertex (nan, 0) outside"),
        ('{"type": "Polygon", "coordinates": [[[0, 0], [1e308, 0], [1, 1], [0, 0]]]}', "a vertex (1e+308, 0) outside"),
        (
            '{"type": "Polygon", "coordinates": [[[0, 0], [1' + "0" * 30 + ", 0], [1, 1], [0, 0]]]}",
            "outside longitudes",
        ),
        ('{"type": "Polygon", "coordinates": [[[500, 10], [600, 10], [600, 20], [500, 10]]]}', "a vertex (500, 10)"),
        (
            '{"type": "Polygon", "coordinates": [[[170, 10], [180.0005, 10], [170, 20], [170, 10]]]}',
            "a vertex (180.0005, 10) outside longitudes -180..180 and latitudes -90..90 (a region across the",
        ),
        ('{"type": "Polygon", "coordinates": [[["a", "b"], [1, 1], [2, 2], ["a", "b"]]]}', "not [longitude, latitude]"),
        ('{"type": "Polygon", "coordinates": [0, 1]}', "not nested"),
        ("[" * 100_000 + "]" * 100_000, "nests lists deeper than any GeoJSON geometry does"),
        ('{"type": "FeatureCollection", "features": []}', "holds no geometry"),
        ('{"type": "Feature", "geometry": null}', "holds no geometry"),
        ('{"type": "Circle", "coordinates": [1, 2]}', "'Circle' is no GeoJSON geometry"),
        ('{"type": "Point", "coordinates": [10, 45]}', "spans no area"),
        ("[]", "not a GeoJSON object"),
    ],
)
def test_a_hostile_region_is_one_sentence(tmp_path, text, said):
    """NaN, out-of-range and 10**30 vertices stopped precompute with GDAL's 'Full reprojection
    failed' traceback, strings for numbers and 100,000 nested brackets with a RecursionError; an
    empty collection said 'need at least one array to concatenate', a point inside the imagery
    'lies outside bbox'."""
    (tmp_path / "r.geojson").write_text(text, encoding="utf-8")
    with pytest.raises(PlanError) as refused:
        Region.load(tmp_path / "r.geojson")
    assert said in str(refused.value) and "\n" not in str(refused.value), str(refused.value)


def test_a_geometry_collection_and_3d_positions_are_read(tmp_path):
    collection = {"type": "GeometryCollection", "geometries": [POLYGON]}
    raised = {"type": "Polygon", "coordinates": [[[*p, 100.0] for p in POLYGON["coordinates"][0]]]}
    for doc in (collection, raised):
        (tmp_path / "r.geojson").write_text(json.dumps(doc), encoding="utf-8")
        assert Region.load(tmp_path / "r.geojson").bbox == (0.0, 40.0, 20.0, 60.0)

"""A bbox's cells from the runs of sorted Morton codes under its tiles: exactly the cells whose
centre lies in the box, as a scan of every centre finds them, on levels of every depth, across
the antimeridian, beyond the mercator limit and on the cells' own float32 centres."""

from types import SimpleNamespace

import numpy as np
import pytest

from runtime.tiles import demorton, morton, morton_ranges, tile_centres
from server.engine import cells_certainly_within, rows_within


def scan(lonlat: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    west, south, east, north = bbox
    lon, lat = lonlat[:, 0], lonlat[:, 1]
    across = (lon >= west) | (lon <= east) if west > east else (lon >= west) & (lon <= east)
    return np.flatnonzero(across & (lat >= south) & (lat <= north))


@pytest.mark.parametrize("z", [0, 1, 2, 5, 7])
def test_morton_ranges_hold_exactly_the_boxs_tiles(z: int) -> None:
    rng, n = np.random.default_rng(z), 1 << z
    for _ in range(100):
        (x0, x1), (y0, y1) = np.sort(rng.integers(0, n, 2)), np.sort(rng.integers(0, n, 2))
        lo, hi = morton_ranges(z, int(x0), int(x1), int(y0), int(y1))
        assert (lo[1:] >= hi[:-1]).all(), "ascending and disjoint"
        held = np.concatenate([np.arange(a, b, dtype=np.uint64) for a, b in zip(lo, hi, strict=True)])
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
        assert np.array_equal(held, np.sort(morton(xs.ravel(), ys.ravel())))
    assert len(morton_ranges(z, 0, n - 1, 0, n - 1)[0]) == 1, "the whole level is one run"


@pytest.mark.parametrize("z", [0, 2, 6, 9, 16])
def test_rows_within_finds_what_a_scan_of_every_centre_finds(z: int) -> None:
    rng, n = np.random.default_rng(100 + z), 1 << z
    flat = np.sort(rng.choice(n * n, min(n * n, 20_000), replace=False))  # a sparse level, as land-only stores are
    codes = np.sort(morton(flat % n, flat // n))
    x, y = demorton(codes)
    lonlat = np.stack(tile_centres(z, x.astype(np.int64), y.astype(np.int64)), axis=1).astype(np.float32)
    level = SimpleNamespace(level=z, arrays=SimpleNamespace(codes=codes, lonlat=lonlat))
    boxes = [(-180.0, -90.0, 180.0, 90.0), (170.0, -30.0, -170.0, 10.0), (179.9, -90.0, -179.9, 90.0)]
    for _ in range(150):
        west, east = rng.uniform(-180, 180, 2)
        south, north = np.sort(rng.uniform(-90, 90, 2))
        boxes.append((float(west), float(south), float(east), float(north)))
        a, b = lonlat[rng.integers(len(lonlat), size=2)]  # edges on cells' own centres: edges count
        boxes.append((float(a[0]), float(min(a[1], b[1])), float(b[0]), float(max(a[1], b[1]))))
    inner = 0
    for box in boxes:
        if box[0] != box[2] and box[1] < box[3]:
            rows = rows_within(level, box)
            assert np.array_equal(rows, scan(lonlat, box)), box
            at_least = cells_certainly_within(level, box)
            assert at_least <= len(rows), box
            inner += at_least
    assert z < 3 or inner > 0, "the bound counts the inner tiles' cells"


def test_bbox_rows_benchmark_checks_and_times_both(tmp_path) -> None:
    import json

    from benchmarks import bbox_rows

    assert bbox_rows.main(["--level", "6", "--repeat", "1", "--json", str(tmp_path / "out.json")]) == 0
    result = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert result["cells"] == 4**6 and set(result["boxes"]) == set(bbox_rows.BOXES)
    assert all(b["cells"] > 0 and b["rows_within_ms"] > 0 and b["scan_ms"] > 0 for b in result["boxes"].values())
    assert 0 < result["world_bound"]["cells_at_least"] < 4**6

"""precompute.cells.CellImagery reads the pixels runtime.imagery.Imagery reads, byte for byte, on
the fast path (sources in a CRS other than web mercator) and the ones it hands back to rio-tiler."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.cells import CellImagery, mercator_resolution
from runtime.imagery import Imagery
from runtime.tiles import tile_range
from tests.conftest import FIXTURE_BBOX, reprojected

LEVELS = range(2, 9)  # coarser than the crop (downsampled, partly outside) to finer (upsampled)
SIZE = 64


def _cells(level: int) -> list[tuple[int, int]]:
    """A grid of cells over the fixture bbox widened by a few degrees, so some lie partly or wholly
    outside: every cell of the coarse levels, every step-th of the fine ones (the slow path reads
    each in about 20 ms)."""
    west, south, east, north = FIXTURE_BBOX
    x0, x1, y0, y1 = tile_range(level, (west - 6, south - 6, east + 6, north + 6))
    step = -(-(x1 - x0 + 1) // 8)  # at most 8 columns per level: about 250 cells in all
    return [(x, y) for x in range(x0, x1 + 1, step) for y in range(y0, y1 + 1, step)]


def _assert_same_cells(slow: Imagery, fast: CellImagery) -> int:
    """Every sampled cell equal (None alike); the number of cells with imagery compared."""
    compared = 0
    for level in LEVELS:
        for x, y in _cells(level):
            a, b = slow.cell(level, x, y, SIZE), fast.cell(level, x, y, SIZE)
            assert (a is None) == (b is None), (level, x, y)
            if a is not None and b is not None:
                assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.valid, b.valid), (level, x, y)
                assert a.gsd == b.gsd
                compared += 1
    return compared


def _resolution(imagery: CellImagery) -> tuple[float, float] | None:
    dataset = imagery._reader(imagery.assets[0].path).dataset
    assert dataset is not None
    return mercator_resolution(dataset)


def test_geographic_source_gives_imagery_pixels(imagery_path):
    fast = CellImagery(imagery_path)
    assert _resolution(fast) is not None  # the fast path, not rio-tiler's own
    assert _assert_same_cells(Imagery(imagery_path), fast) > 100


def test_projected_source_with_nodata_gives_imagery_pixels(imagery_path, tmp_path):
    utm = reprojected(imagery_path, tmp_path / "utm.tif", "EPSG:32633")
    fast = CellImagery(utm)
    assert _resolution(fast) is not None
    assert _assert_same_cells(Imagery(utm), fast) > 50


def test_nodata_override_and_mosaic_give_imagery_pixels(imagery_path, tmp_path):
    utm = reprojected(imagery_path, tmp_path / "utm.tif", "EPSG:32633")
    assert _assert_same_cells(Imagery(imagery_path, nodata=40), CellImagery(imagery_path, nodata=40)) > 50
    assert _assert_same_cells(Imagery([utm, imagery_path]), CellImagery([utm, imagery_path])) > 100


def test_web_mercator_source_is_read_by_rio_tiler(imagery_path, tmp_path):
    mercator = reprojected(imagery_path, tmp_path / "mercator.tif", "EPSG:3857")
    fast = CellImagery(mercator)
    assert _resolution(fast) is None
    assert _assert_same_cells(Imagery(mercator), fast) > 50


def test_of_keeps_source_and_nodata(imagery_path):
    imagery = Imagery(imagery_path, nodata=7)
    cells = CellImagery.of(imagery)
    assert (cells.source, cells.nodata) == (imagery.source, 7)
    assert CellImagery.of(cells) is cells


@pytest.mark.parametrize("level", [3, 7])
def test_read_ahead_yields_imagery_cells(imagery_path, level):
    """The pipeline's reader threads give each batch the cells Imagery.cell gives, in order."""
    from concurrent.futures import ThreadPoolExecutor

    from precompute.plan import Plan
    from precompute.run import read_ahead

    imagery = Imagery(imagery_path)
    plan = Plan([level], FIXTURE_BBOX).level(level)
    with ThreadPoolExecutor(2) as pool:
        for (_, _, x, y), cells in read_ahead(plan.batches(0, len(plan), 32), imagery, level, SIZE, pool):
            for i, j, cell in zip(x, y, cells, strict=True):
                want = imagery.cell(level, int(i), int(j), SIZE)
                assert (want is None) == (cell is None)
                if want is not None and cell is not None:
                    assert np.array_equal(want.rgb, cell.rgb)

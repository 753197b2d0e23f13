"""benchmarks/demo_quality.py's intervals over held-out regions: draws of whole regions, and an
AUC interval that widens when a class's positives come from few regions."""

import math

import numpy as np

from benchmarks.demo_quality import auc, interval, region_resamples


def test_a_draw_takes_whole_regions():
    regions = np.repeat([0, 1, 2, 3], [5, 1, 3, 7])
    draws = region_resamples(regions, draws=50)
    for rows in draws:
        counts = np.bincount(regions[rows], minlength=4)
        assert all(c % size == 0 for c, size in zip(counts, [5, 1, 3, 7], strict=True))
    assert len({len(rows) for rows in draws}) > 1  # regions differ in size, so draws do
    assert all(np.array_equal(a, b) for a, b in zip(draws, region_resamples(regions, draws=50), strict=True))


def test_positives_from_few_regions_give_a_wider_interval():
    rng = np.random.default_rng(0)
    regions = np.repeat(np.arange(20), 50)
    positive = np.isin(regions, [0, 1, 2]) & (rng.random(1000) < 0.3)  # positives in 3 regions only
    scores = rng.normal(size=1000) + np.where(regions == 0, 1.5, 0) * positive  # one region ranks them well
    by_region = interval([auc(scores[i], positive[i]) for i in region_resamples(regions)])
    by_sample = interval([auc(scores[i], positive[i]) for i in region_resamples(np.arange(1000))])
    assert by_region[0] <= auc(scores, positive) <= by_region[1]
    assert by_region[1] - by_region[0] > 2 * (by_sample[1] - by_sample[0])


def test_an_interval_skips_undefined_draws():
    assert np.allclose(interval([math.nan, 0.2, 0.4, math.nan]), [0.205, 0.395])
    assert all(math.isnan(v) for v in interval([math.nan]))

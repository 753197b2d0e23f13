"""Retrieval metrics as the paper defines them: 1-based ranks with ties averaged, R@10% of the
gallery without the off-by-one of rank < 0.1 N, the median rank, and -CSD against cosine."""

import numpy as np
import pytest

from model.evaluate import Gaussians, recall_at_fraction, retrieval, true_match_ranks


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_ranks_are_one_based_with_ties_averaged_like_pandas():
    q = Gaussians(unit([[1, 0], [0, 1], [1, 1]]), np.full((3, 2), -20.0))
    # Gallery: item 0 equals query 0 exactly (rank 1); items 1 and 2 are identical, so query 1's
    # true match (item 1) ties with item 2 -> pandas average rank; query 2 sees both equally far.
    g = Gaussians(unit([[1, 0], [0.2, 1], [0.2, 1]]), np.full((3, 2), -20.0))
    ranks = true_match_ranks(q, g, probabilistic=True)
    pandas_like = []
    scores = -(2 - 2 * q.mu @ g.mu.T)
    for i, row in enumerate(scores):
        greater = (row > row[i]).sum()
        ties = (row == row[i]).sum()
        pandas_like.append(greater + (ties + 1) / 2)
    np.testing.assert_array_equal(ranks, pandas_like)
    assert ranks[0] == 1.0 and ranks[1] == 1.5 and ranks[2] == 1.5


def test_recall_counts_the_true_top_ten_percent():
    # N = 10: 0.1 N = 1 is an integer. rank 1 counts; the paper's code (rank < 1) counts nothing.
    ranks = np.array([1.0, 2.0, 1.0, 5.0, 1.5, 10.0, 1.0, 3.0, 1.0, 1.0])
    assert recall_at_fraction(ranks) == pytest.approx(5 / 10)
    # N = 9931 (the paper's GeoSound test set): 0.1 N = 993.1, the same as rank < 993.1.
    ranks = np.concatenate([np.full(100, 993.0), np.full(100, 993.5), np.full(9731, 5000.0)])
    assert recall_at_fraction(ranks) == pytest.approx(100 / 9931)
    assert recall_at_fraction(ranks) == pytest.approx(np.mean(ranks < 0.1 * len(ranks)))


def test_recall_of_a_gallery_under_ten_counts_the_first_rank():
    # N = 7: rank <= 0.7 would hold no rank, R@10% 0 whatever the model (best.pt = first validation).
    assert recall_at_fraction(np.array([1.0, 1.0, 2.0, 1.5, 7.0, 1.0, 3.0])) == pytest.approx(3 / 7)
    assert recall_at_fraction(np.array([1.0])) == 1.0
    # N = 10 .. 99 and above: the cutoff is still 0.1 N (rank 2 of 19 counts, 2 of 10 does not).
    for n in (10, 19, 20, 100, 1505):
        ranks = np.arange(1, n + 1, dtype=np.float64)
        assert recall_at_fraction(ranks) == pytest.approx(np.mean(ranks <= 0.1 * n))


def test_csd_ranking_penalises_uncertain_gallery_items_and_cosine_does_not():
    q = Gaussians(unit([[1, 0], [0, 1]]), np.full((2, 2), -10.0))
    # Gallery item 1 is nearer to query 0 in direction but very uncertain.
    g = Gaussians(unit([[0.8, 0.6], [1, 0.01]]), np.array([[-10.0, -10.0], [1.0, 1.0]]))
    assert true_match_ranks(q, g, probabilistic=True)[0] == 1.0
    assert true_match_ranks(q, g, probabilistic=False)[0] == 2.0


def test_retrieval_reports_both_directions_and_medians():
    rng = np.random.default_rng(0)
    sat = Gaussians(rng.standard_normal((20, 4)), np.full((20, 4), -5.0))
    same = retrieval(sat, sat, probabilistic=True)
    assert same == {"I2S_R@10%": 1.0, "I2S_median_rank": 1.0, "S2I_R@10%": 1.0, "S2I_median_rank": 1.0, "gallery": 20}
    shuffled = Gaussians(sat.raw[::-1].copy(), sat.logvar)
    worse = retrieval(sat, shuffled, probabilistic=True)
    assert worse["I2S_R@10%"] < 1.0 and worse["I2S_median_rank"] > 1.0
    # The oracle caption joins the query: raw means added, log-variances added.
    caption = Gaussians(sat.raw.copy(), np.full((20, 4), -5.0))
    assert retrieval(sat, sat, probabilistic=True, caption=caption)["I2S_R@10%"] == 1.0
    joined = sat.plus(caption)
    np.testing.assert_allclose(joined.logvar, -10.0)
    np.testing.assert_allclose(joined.mu, sat.mu)

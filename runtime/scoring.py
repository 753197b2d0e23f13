"""PCME++ scoring shared by serving and evaluation (docs/design.md, "Scoring").

d(q, i) = |mu_q - mu_i|^2 + S_q + S_i = 2 - 2 mu_q.mu_i + S_q + S_i for unit means, with
S = sum(exp(logvar)). The heatmap is sigmoid(-a d + b), one global scale for all tiles.
Ranking a gallery is mu_q.mu_i - S_i/2: the inner product of [mu_q, 1] and [mu_i, -S_i/2].
"""

from __future__ import annotations

import numpy as np


def uncertainty(logvar: np.ndarray) -> np.ndarray:
    """S = sum of the variances, per row."""
    return np.exp(np.asarray(logvar, dtype=np.float64)).sum(axis=-1).astype(np.float32)


def csd(mu_q: np.ndarray, s_q: float, mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Closed-form sampled distance of one query (mu_q (D,), S_q) to rows (mu (N, D), S (N,))."""
    dots = np.asarray(mu, dtype=np.float32) @ np.asarray(mu_q, dtype=np.float32)
    return 2.0 - 2.0 * dots + float(s_q) + np.asarray(s, dtype=np.float32)


def match_probability(distance: np.ndarray, a: float, b: float) -> np.ndarray:
    """The model's calibrated match probability sigmoid(-a d + b)."""
    logits = -a * np.asarray(distance, dtype=np.float32) + b
    # exp of a non-positive number cannot overflow, and neither branch subtracts nearly equal
    # numbers: full float32 precision down to tiny probabilities (1 + tanh(x/2) rounds values
    # below ~1e-5 to steps of 6e-8, flattening the map of a query that matches nothing well).
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def gallery_vectors(mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[mu_i, -S_i/2] rows for an inner-product index."""
    return np.hstack([np.asarray(mu, dtype=np.float32), -0.5 * np.asarray(s, dtype=np.float32)[:, None]])


def query_vector(mu_q: np.ndarray) -> np.ndarray:
    """[mu_q, 1]: its inner product with a gallery row is mu_q.mu_i - S_i/2."""
    return np.append(np.asarray(mu_q, dtype=np.float32), np.float32(1.0))[None, :]

"""PCME++ scoring shared by serving and evaluation (docs/design.md, "Scoring").

d(q, i) = |mu_q - mu_i|^2 + S_q + S_i = 2 - 2 mu_q.mu_i + S_q + S_i for unit means, with
S = sum(exp(logvar)). The heatmap is sigmoid(-a d + b), one global scale for all tiles.
Ranking a gallery is mu_q.mu_i - S_i/2: the inner product of [mu_q, 1] and [mu_i, -S_i/2].

A bundle trained with InfoNCE never trained its log-variances: it scores d = 2 - 2 mu_q.mu_i
(`scoring_kind` reads which loss the manifest records), so its S terms are left out.

The contrast layer is the query's logit at a cell minus CONTRAST_WEIGHT times the mean logit of
REFERENCE_PROMPTS there: what every sound shares at a cell (its S_i, and where its mean points)
is discounted, so maps of different sounds differ (docs/demo-model.md, "Maps that discriminate").
"""

from __future__ import annotations

import numpy as np


def uncertainty(logvar: np.ndarray) -> np.ndarray:
    """S = sum of the variances, per row."""
    return np.exp(np.asarray(logvar, dtype=np.float64)).sum(axis=-1).astype(np.float32)


CSD, COSINE = "csd", "cosine"
# How much of the reference sounds' logit at a cell the contrast layer subtracts. Measured by
# benchmarks/discrimination.py on the demo model: at 0.5 the maps of the corpus's class prompts
# are as alike as the rules' own class maps (mean pairwise Spearman 0.136 vs 0.146) and text ->
# cell retrieval AUC holds (0.944 vs 0.945); at 1 the maps overshoot (0.040) and AUC falls to 0.898.
CONTRAST_WEIGHT = 0.5
# A fixed, broad list of everyday sounds (in the spirit of AudioSet's top-level classes): the
# contrast layer's baseline. Changing it or CONTRAST_WEIGHT changes every contrast map: bump
# CONTRAST_RULE, which names the rule in tile cache keys and ETags.
REFERENCE_PROMPTS: tuple[str, ...] = (
    "people talking",
    "music playing",
    "a dog barking",
    "birds chirping",
    "insects buzzing",
    "cattle mooing",
    "wild animals calling",
    "wind blowing",
    "rain falling",
    "thunder",
    "water flowing",
    "the sea",
    "fire crackling",
    "a car driving past",
    "a train",
    "an aircraft overhead",
    "a boat engine",
    "machines running",
    "tools hammering",
    "a bell ringing",
    "an alarm or siren",
    "footsteps",
    "a door closing",
    "silence",
)
CONTRAST_RULE = "ref24-w0.5-v1"


def scoring_kind(manifest: dict) -> str:
    """What the bundle's model was trained to score: COSINE for an InfoNCE loss (its log-variances
    are untrained), else CSD (PCME++; also a bundle that records no loss)."""
    training = manifest.get("training") or {}
    config = training.get("config") if isinstance(training, dict) else None
    train = config.get("train") if isinstance(config, dict) else None
    loss = train.get("loss") if isinstance(train, dict) else None
    kind = loss.get("kind") if isinstance(loss, dict) else None
    return COSINE if kind == "infonce" else CSD


def csd(mu_q: np.ndarray, s_q: float, mu: np.ndarray, s: np.ndarray, each_row_alone: bool = False) -> np.ndarray:
    """Closed-form sampled distance of one query (mu_q (D,), S_q) to rows (mu (N, D), S (N,)).

    BLAS sums a row's dot product in an order that depends on the rows beside it (up to 5e-7
    apart, measured), so a cell's number would differ between two answers that hold it among
    other cells. `each_row_alone` sums each row by itself (numpy's einsum loop, never BLAS): the
    same bits whatever the batch, 2-4x the time of the BLAS product (0.6 ms for 16,384 rows)."""
    mu, mu_q = np.asarray(mu, dtype=np.float32), np.asarray(mu_q, dtype=np.float32)
    dots = np.einsum("nd,d->n", mu, mu_q) if each_row_alone else mu @ mu_q
    return 2.0 - 2.0 * dots + float(s_q) + np.asarray(s, dtype=np.float32)


def distance(
    mu_q: np.ndarray, s_q: float, mu: np.ndarray, s: np.ndarray, kind: str = CSD, each_row_alone: bool = False
) -> np.ndarray:
    """The distance the model was trained on: the CSD, or 2 - 2 cos without the S terms (COSINE)."""
    if kind == CSD:
        return csd(mu_q, s_q, mu, s, each_row_alone)
    return csd(mu_q, 0.0, mu, np.zeros(len(s), np.float32), each_row_alone)


def logits(distance: np.ndarray, a: float, b: float) -> np.ndarray:
    """-a d + b: the log-odds of a match."""
    return (-a * np.asarray(distance, dtype=np.float32) + b).astype(np.float32)


def match_probability(distance: np.ndarray, a: float, b: float) -> np.ndarray:
    """The model's calibrated match probability sigmoid(-a d + b)."""
    logit = logits(distance, a, b)
    # exp of a non-positive number cannot overflow, and neither branch subtracts nearly equal
    # numbers: full float32 precision down to tiny probabilities (1 + tanh(x/2) rounds values
    # below ~1e-5 to steps of 6e-8, flattening the map of a query that matches nothing well).
    e = np.exp(-np.abs(logit))
    return np.where(logit >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def gallery_vectors(mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[mu_i, -S_i/2] rows for an inner-product index."""
    return np.hstack([np.asarray(mu, dtype=np.float32), -0.5 * np.asarray(s, dtype=np.float32)[:, None]])


def query_vector(mu_q: np.ndarray, kind: str = CSD) -> np.ndarray:
    """[mu_q, 1]: its inner product with a gallery row is mu_q.mu_i - S_i/2; [mu_q, 0] for a
    COSINE model, which ranks by mu_q.mu_i alone."""
    return np.append(np.asarray(mu_q, dtype=np.float32), np.float32(1.0 if kind == CSD else 0.0))[None, :]

"""FAISS index of one level over [mu, -S/2] (docs/design.md, "Scoring"): exact (flat inner product) up to
a configurable size, IVF above it, with the IVF's nprobe chosen as the smallest whose recall@10
against the exact ranking reaches RECALL_TARGET on queries drawn from the level's own means.

Vectors are added in chunks read from the memory-mapped arrays, so building never copies a level
twice; the recall ground truth is computed the same way.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from runtime.scoring import gallery_vectors

FLAT_MAX = 1_000_000  # levels with more cells get an IVF index
RECALL_K = 10
RECALL_TARGET = 0.95
RECALL_QUERIES = 256
CHUNK = 65536


def _rows(mu: np.ndarray, s: np.ndarray, start: int, stop: int) -> np.ndarray:
    return gallery_vectors(np.asarray(mu[start:stop], dtype=np.float32), np.asarray(s[start:stop]))


def _add(index: faiss.Index, mu: np.ndarray, s: np.ndarray) -> None:
    for start in range(0, len(s), CHUNK):
        index.add(_rows(mu, s, start, start + CHUNK))


def _queries(mu: np.ndarray) -> np.ndarray:
    """[q, 1] for half the queries the means of evenly spaced cells (queries near the data) and
    half random unit vectors (queries far from it, the hard case for IVF)."""
    n = min(RECALL_QUERIES, len(mu))
    rows = np.linspace(0, len(mu) - 1, n // 2 + n % 2).astype(np.int64)
    rng = np.random.default_rng(0)
    far = rng.standard_normal((n // 2, mu.shape[1])).astype(np.float32)
    q = np.vstack([np.asarray(mu[rows], dtype=np.float32), far / np.linalg.norm(far, axis=1, keepdims=True)])
    return np.hstack([q, np.ones((len(q), 1), np.float32)])


def exact_top_k(mu: np.ndarray, s: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k rows by inner product for each query, scanning in chunks."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(s), CHUNK):
        scores = queries @ _rows(mu, s, start, start + CHUNK).T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores, ids = np.hstack([best, scores]), np.hstack([best_ids, ids])
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return best_ids


def recall_at_k(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> float:
    _, found = index.search(queries, truth.shape[1])
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def build_index(mu: np.ndarray, s: np.ndarray, flat_max: int = FLAT_MAX) -> tuple[faiss.Index, dict]:
    """The level's index and what it is, for the manifest ({"kind", and for IVF "nlist",
    "nprobe", "recall_at_10"})."""
    dim = mu.shape[1] + 1
    if len(s) <= flat_max:
        index = faiss.IndexFlatIP(dim)
        _add(index, mu, s)
        return index, {"kind": "flat-ip"}
    # ~4 sqrt(N) lists, but at least 39 training points per list (FAISS's own minimum).
    nlist = int(max(1, min(65536, 4 * math.sqrt(len(s)), len(s) // 39)))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    step = max(1, len(s) // (64 * nlist))
    ivf.train(gallery_vectors(np.asarray(mu[::step], dtype=np.float32), np.asarray(s[::step])))
    _add(ivf, mu, s)
    queries = _queries(mu)
    truth = exact_top_k(mu, s, queries, min(RECALL_K, len(s)))
    recall = 0.0
    for nprobe in [*(2**p for p in range(int(math.log2(nlist)) + 1) if 2**p < nlist), nlist]:
        ivf.nprobe = nprobe
        recall = recall_at_k(ivf, queries, truth)
        if recall >= RECALL_TARGET:
            break
    return ivf, {
        "kind": "ivf-flat-ip",
        "nlist": nlist,
        "nprobe": int(ivf.nprobe),
        "recall_at_10": round(recall, 4),
        "recall_queries": len(queries),
    }

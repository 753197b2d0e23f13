"""FAISS index of one level over [mu, -S/2] (docs/design.md, "Scoring"; docs/store.md, "Index"),
chosen by the level's size (measured in BENCHMARKS.md, "Large stores"):

- up to FLAT_MAX cells, exact (flat inner product): one query scans every row, fine up to a
  few hundred thousand cells (a top-100 query took 543 ms at 1 M cells, IVF-Flat 2 ms);
- up to IVF_FLAT_MAX, IVF-Flat: the same float32 rows split into ~sqrt(N) lists;
- above it, IVF with float16 scalar codes (IVF-SQfp16): half the memory of IVF-Flat (the
  stored means are float16 already, so the codes lose almost nothing: recall is tuned as for
  IVF-Flat) and an HNSW coarse quantizer, so adding tens of millions of rows does not compare
  each with every list centre (3x faster to fill 4,096 lists, measured on 262,144 rows).

An IVF's nprobe is the smallest power of two whose recall@100 and recall@10 against the exact
ranking both reach RECALL_TARGET on queries drawn from the level: its own means, and apart from
them random directions (the hard case, and the likelier one: text queries lie far from images).
Vectors are added in chunks read from the memory-mapped arrays, so building never
copies a level twice; the recall ground truth is computed the same way. Where faiss finds a GPU
(faiss-gpu), IVF lists are trained and filled on it and the index is copied back for writing;
that path has not run here (no GPU was lent).
"""

from __future__ import annotations

import math
from typing import cast

import faiss
import numpy as np

from runtime.scoring import gallery_vectors

FLAT_MAX = 262_144  # levels with more cells get an IVF index (a whole level 9 is still exact)
IVF_FLAT_MAX = 4_194_304  # ... and above this, float16 codes (a whole level 11 is still IVF-Flat)
RECALL_KS = (10, 100)  # nprobe is tuned until recall@k reaches the target for each
RECALL_TARGET = 0.95
RECALL_QUERIES = 256
TRAIN_PER_LIST = 64  # training sample: this many cells per list (FAISS wants at least 39)
TRAIN_ITERATIONS = 12  # k-means iterations (FAISS's default 25 costs twice as much for no recall)
HNSW_QUANTIZER_M = 32
CHUNK = 1 << 18


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
    """Ids of the exact top-k rows by inner product for each query, scanning in chunks (ties: lower id first)."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(s), CHUNK):
        rows = _rows(mu, s, start, start + CHUNK)
        scores, ids = faiss.knn(queries, rows, min(k, len(rows)), faiss.METRIC_INNER_PRODUCT)
        scores, ids = np.hstack([best, scores]), np.hstack([best_ids, ids + start])
        keep = _best(scores, ids, k)
        best, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return best_ids


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the k best scores per row, best first, lower id first among ties."""
    order = np.argsort(ids, axis=1, kind="stable")
    by_score = np.argsort(-np.take_along_axis(scores, order, 1), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(order, by_score, 1)


def recall_at_k(index: faiss.Index, queries: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-k (truth's columns) that the index also returns in its top k."""
    _, found = index.search(queries, truth.shape[1])
    return _overlap(found, truth)


def _overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu, which has no GPU functions)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _fill_ivf(ivf: faiss.IndexIVF, mu: np.ndarray, s: np.ndarray) -> faiss.IndexIVF:
    """Train on an even sample and add every row: on the GPU where there is one (copied back to
    the CPU for writing), else here."""
    step = max(1, len(s) // (TRAIN_PER_LIST * ivf.nlist))
    sample = gallery_vectors(np.asarray(mu[::step], dtype=np.float32), np.asarray(s[::step]))
    ivf.cp.niter = TRAIN_ITERATIONS
    if gpu_count() > 0:  # untested here: no GPU was lent to this project's sessions
        resources = faiss.StandardGpuResources()
        on_gpu = faiss.index_cpu_to_gpu(resources, 0, ivf)
        on_gpu.train(sample)
        _add(on_gpu, mu, s)
        return cast(faiss.IndexIVF, faiss.downcast_index(faiss.index_gpu_to_cpu(on_gpu)))
    ivf.train(sample)
    _add(ivf, mu, s)
    return ivf


def _tune(ivf: faiss.IndexIVF, mu: np.ndarray, s: np.ndarray) -> dict:
    """Set the smallest power-of-two nprobe whose recall@k reaches the target for every k in
    RECALL_KS, on the queries near the data and, apart, on the random ones (a text query's
    embedding is far from every image's); the lower of the two recalls, for each k."""
    queries = _queries(mu)
    ks = [min(k, len(s)) for k in RECALL_KS]
    truth = exact_top_k(mu, s, queries, max(ks))
    recalls: list[float] = []
    quantizer = faiss.downcast_index(ivf.quantizer)
    for nprobe in [*(2**p for p in range(int(math.log2(ivf.nlist)) + 1) if 2**p < ivf.nlist), ivf.nlist]:
        ivf.nprobe = nprobe
        if isinstance(
            quantizer, faiss.IndexHNSW
        ):  # an HNSW returns at most efSearch lists (it is written with the index)
            quantizer.hnsw.efSearch = max(16, 2 * nprobe)
        _, found = ivf.search(queries, max(ks))
        halves = (slice(0, len(queries) - len(queries) // 2), slice(len(queries) - len(queries) // 2, None))
        recalls = [min(_overlap(found[h, :k], truth[h, :k]) for h in halves) for k in ks]
        if min(recalls) >= RECALL_TARGET:
            break
    return {
        "nprobe": int(ivf.nprobe),
        **{f"recall_at_{k}": round(r, 4) for k, r in zip(RECALL_KS, recalls, strict=True)},
        "recall_queries": len(queries),
    }


def index_bytes_per_cell(cells: int, dim: int, flat_max: int = FLAT_MAX, ivf_flat_max: int = IVF_FLAT_MAX) -> int:
    """Bytes per cell of the index `build_index` makes for a level of `cells` vectors of `dim`
    values: float32 rows, or float16 codes, plus an IVF's int64 ids (list centres are negligible)."""
    if cells <= flat_max:
        return 4 * dim
    return (4 * dim if cells <= ivf_flat_max else 2 * dim) + 8


def build_index(
    mu: np.ndarray, s: np.ndarray, flat_max: int = FLAT_MAX, ivf_flat_max: int = IVF_FLAT_MAX
) -> tuple[faiss.Index, dict]:
    """The level's index and what it is, for the manifest ({"kind"}, and for an IVF "nlist",
    "nprobe", "recall_at_10", "recall_at_100", "recall_queries")."""
    dim = mu.shape[1] + 1
    if len(s) <= flat_max:
        index = faiss.IndexFlatIP(dim)
        _add(index, mu, s)
        return index, {"kind": "flat-ip"}
    # ~sqrt(N) lists (a power of two), with at least 39 training points per list (FAISS's own minimum).
    nlist = int(max(1, min(65536, 2 ** round(math.log2(math.sqrt(len(s)))), len(s) // 39)))
    ivf: faiss.IndexIVF
    if len(s) <= ivf_flat_max:
        kind = "ivf-flat-ip"
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        kind = "ivf-sqfp16-ip"
        hnsw = not gpu_count()  # the GPU copy of an IVF needs a flat quantizer, and is fast with one
        quantizer = (
            faiss.IndexHNSWFlat(dim, HNSW_QUANTIZER_M, faiss.METRIC_INNER_PRODUCT) if hnsw else faiss.IndexFlatIP(dim)
        )
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        if hnsw:  # k-means assigns with a flat index; the HNSW graph is built once, over the final centres
            clustering = faiss.IndexFlatIP(dim)  # held here: FAISS does not own it
            ivf.clustering_index = clustering
    ivf = _fill_ivf(ivf, mu, s)
    return ivf, {"kind": kind, "nlist": nlist, **_tune(ivf, mu, s)}

"""`soundscape store synth`: a store of N cells of one level with synthetic embeddings, written
without imagery or the image graph, to measure what a large store costs (index, memory, tiles)
before embedding a large area (docs/scale.md, benchmarks/large_store.py).

The cells are a contiguous run of Morton codes (the descendants of one quadkey, in order, as a
region's precompute would write them). Each array looks like a real store's, as measured on the
demo world's level 7 (64-dim model): unit-norm means drawn from a mixture of CLUSTERS Gaussian
directions around one shared direction (mean pairwise cosine ~0.38 against the demo's 0.42, the
norm of the mean ~0.62 against 0.64), with spatially coherent clusters (cells of one
2**COHERENT_LEVELS block mostly share one); S from a mean log-variance in LOGVAR_RANGE (the demo's
S percentiles 1-99: 0.28-0.60); pre-fusion `sat` features of the demo's spread (sd ~0.9), so
query-time fusion (`hour=`) runs on them. The means are not the fuse graph's output for those
features: fused maps are drawn at the right cost, not with meaningful values.

Chunks are generated from (seed, chunk number) alone and streamed through the store writer, so
memory stays bounded, a killed run resumes, and the same arguments give the same store id."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime.tiles import MAX_LEVEL, demorton, morton, tile_bounds, tile_centres
from store.format import LevelArrays, StoreError, level_dir
from store.index import FLAT_MAX
from store.writer import PartialStore, check_output, finish_store

log = logging.getLogger(__name__)

CLUSTERS = 256
COHERENT_LEVELS = 6  # cells of one (level - 6) parent mostly share a cluster
COHERENT_SHARE = 0.7  # ... this share of them; the rest draw a cluster of their own
CENTRE_SPREAD = 1.0  # norm of a cluster's offset from the shared direction (which has norm 1)
CELL_NOISE = 0.15  # norm of a cell's offset from its cluster centre
LOGVAR_RANGE = (-5.6, -4.6)  # mean log-variance per dimension of a cell
LOGVAR_SPREAD = 0.3  # sd of the log-variances across a cell's dimensions
SAT_CENTRE_SD, SAT_NOISE_SD = 0.8, 0.4
CHUNK = 1 << 18  # cells generated and written at a time (~150 MB of temporaries at 64 dims)


@dataclass(frozen=True)
class SynthSpec:
    """What a synthetic store holds; its fields are recorded in the manifest (`synthetic`)."""

    level: int
    cells: int
    within: str = ""  # quadkey whose descendants at `level` are the cells ("": the world)
    embed_dim: int = 64
    sat_dim: int = 96
    bundle_id: str = "synthetic"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.level <= MAX_LEVEL:
            raise StoreError(f"--level must be 0..{MAX_LEVEL}, not {self.level}")
        if len(self.within) > self.level or set(self.within) - set("0123"):
            raise StoreError(f"--within must be a quadkey (digits 0-3) of a level up to {self.level}: {self.within!r}")
        if not 0 < self.cells <= self.block_cells:
            raise StoreError(
                f"--cells must be 1..{self.block_cells:,} (the cells of level {self.level} "
                f"within {self.within or 'the world'}), not {self.cells:,}"
            )
        if self.embed_dim < 2 or self.sat_dim < 1:
            raise StoreError("the embedding needs at least 2 dimensions and the features at least 1")

    @property
    def block_cells(self) -> int:
        return 4 ** (self.level - len(self.within))

    @property
    def first_code(self) -> int:
        """Morton code (at `level`) of the first descendant of `within`."""
        z, shift = len(self.within), 2 * (self.level - len(self.within))
        x = y = 0
        for digit in self.within:
            x, y = 2 * x + (int(digit) & 1), 2 * y + (int(digit) >> 1)
        return morton(x, y) << shift if z else 0


class _Model:
    """The mixture every chunk draws from: cluster centres of mu and sat, weights, log-variances."""

    def __init__(self, spec: SynthSpec):
        rng = np.random.default_rng([spec.seed, 0xC1])
        d = spec.embed_dim
        basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
        spectrum = 1.0 / np.sqrt(np.arange(1, d + 1))  # a few dominant directions, like real means
        offsets = rng.standard_normal((CLUSTERS, d)) * (spectrum / np.linalg.norm(spectrum))
        self.mu = (basis[:, 0] + CENTRE_SPREAD * offsets @ basis.T).astype(np.float32)
        self.sat = (SAT_CENTRE_SD * rng.standard_normal((CLUSTERS, spec.sat_dim))).astype(np.float32)
        self.logvar = rng.uniform(*LOGVAR_RANGE, CLUSTERS).astype(np.float32)
        weights = 1.0 / np.arange(1, CLUSTERS + 1)  # a few common surfaces (sea, desert) and a long tail
        self.cdf = np.cumsum(weights / weights.sum())

    def clusters(self, uniform: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.cdf, uniform), CLUSTERS - 1)


def _block_uniform(codes: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per coarse block (codes >> 2*COHERENT_LEVELS), the same in every chunk."""
    h = (codes >> np.uint64(2 * COHERENT_LEVELS)) + np.uint64(seed + 1)
    h = (h ^ (h >> np.uint64(31))) * np.uint64(0x9E3779B97F4A7C15)  # splitmix-style mixing
    h = (h ^ (h >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _chunk(spec: SynthSpec, model: _Model, index: int) -> LevelArrays:
    """Cells [index * CHUNK, ...) of the spec, from (seed, index) alone."""
    start = index * CHUNK
    n = min(CHUNK, spec.cells - start)
    rng = np.random.default_rng([spec.seed, index])
    codes = np.arange(spec.first_code + start, spec.first_code + start + n, dtype=np.uint64)
    own = rng.random(n) >= COHERENT_SHARE
    cluster = model.clusters(np.where(own, rng.random(n), _block_uniform(codes, spec.seed)))
    noise = rng.standard_normal((n, spec.embed_dim), dtype=np.float32) * np.float32(
        CELL_NOISE / np.sqrt(spec.embed_dim)
    )
    mu = model.mu[cluster] + noise
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    mean_logvar = model.logvar[cluster] + rng.normal(0.0, 0.1, n).astype(np.float32)
    s = spec.embed_dim * np.exp(mean_logvar + LOGVAR_SPREAD**2 / 2)  # mean of lognormal variances
    sat = model.sat[cluster] + rng.standard_normal((n, spec.sat_dim), dtype=np.float32) * np.float32(SAT_NOISE_SD)
    x, y = demorton(codes)
    lon, lat = tile_centres(spec.level, x, y)
    return LevelArrays(
        codes=codes,
        sat=sat.astype(np.float16),
        mu=mu.astype(np.float16),
        s=s.astype(np.float32),
        lonlat=np.stack([lon, lat], axis=1).astype(np.float32),
    )


def level_chunks(spec: SynthSpec, first: int = 0) -> Iterator[LevelArrays]:
    """The spec's cells, CHUNK at a time from chunk `first`: the same arrays on every call."""
    model = _Model(spec)
    for index in range(first, -(-spec.cells // CHUNK)):
        yield _chunk(spec, model, index)


def _bounds(codes: np.ndarray, level: int) -> list[float]:
    """West, south, east, north of the cells (read in chunks from the written codes)."""
    lo, hi = [1 << level] * 2, [-1] * 2
    for start in range(0, len(codes), CHUNK):
        x, y = demorton(np.asarray(codes[start : start + CHUNK]))
        lo, hi = (
            [min(lo[0], int(x.min())), min(lo[1], int(y.min()))],
            [max(hi[0], int(x.max())), max(hi[1], int(y.max()))],
        )
    west, _, _, north = tile_bounds(level, lo[0], lo[1])
    _, south, east, _ = tile_bounds(level, hi[0], hi[1])
    return [west, south, east, north]


def bundle_facts(bundle: str | Path) -> dict:
    """id and dims of a model bundle, from its manifest alone (no graph is loaded)."""
    path = Path(bundle) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return {"bundle_id": manifest["id"], "embed_dim": manifest["dims"]["embed"], "sat_dim": manifest["dims"]["sat"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise StoreError(f"{bundle} is not a model bundle (no readable manifest.json with id and dims)") from None


def synth_store(out: str | Path, spec: SynthSpec, *, overwrite: bool = False, flat_max: int = FLAT_MAX) -> dict:
    """Write the synthetic store `spec` describes to `out`; its manifest, whose `run` says how long
    generating, indexing (`index_s`, also in the written manifest) and finishing (index,
    checksums, move; returned only) took."""
    out = Path(out)
    check_output(out, overwrite)
    started = time.perf_counter()
    key = {"synthetic": asdict(spec)}
    work = PartialStore(out, key, CHUNK, discard_other=True, overwrite=overwrite)
    try:
        return _write(work, out, key, spec, started, flat_max)
    finally:
        work.close()


def _write(work: PartialStore, out: Path, key: dict, spec: SynthSpec, started: float, flat_max: int) -> dict:
    """synth_store's work once it holds the store's writer lock."""
    state = work.level_state(spec.level, 0)
    writer = work.writer(spec.level, 0, spec.sat_dim, spec.embed_dim, [])
    chunks = -(-spec.cells // CHUNK)
    for index, arrays in enumerate(level_chunks(spec, state["position"]), start=state["position"]):
        writer.append(arrays, {}, position=index + 1, skipped=0)
        work.save()
        log.info("synth: chunk %d of %d written", index + 1, chunks)
    writer.close()
    generated = time.perf_counter()
    manifest: dict = {
        **key,
        "bundle_id": spec.bundle_id,
        "imagery": None,
        "bounds": _bounds(np.load(level_dir(work.dir, spec.level) / "codes.npy", mmap_mode="r"), spec.level),
        "plan": {"levels": [spec.level], "fusion_levels": [], "fusions": [], "land_only": False, "region": None},
        "run": {"device": "synthetic", "generate_s": round(generated - started, 1)},
    }
    manifest = finish_store(work.dir, out, manifest, {spec.level: {"skipped": 0, "fusions": []}}, flat_max=flat_max)
    work.progress.unlink(missing_ok=True)
    manifest["run"]["finish_s"] = round(time.perf_counter() - generated, 1)
    return manifest

"""Retrieval evaluation as the PSM paper defines it (docs/method.md section 4.1).

Queries and galleries: I2S (satellite -> sound) ranks every audio clip of the split for each
satellite cell, S2I (sound -> satellite) the reverse; the true match is the sample's own pair.
- Score: -CSD (the PCME++ closed-form sampled distance, float64) for probabilistic models, the
  cosine of the means for InfoNCE models.
- Rank: 1-based rank of the true match among all N gallery items, ties averaged (pandas
  `rank(ascending=False, method="average")`).
- R@10% = mean over queries of [rank <= 0.1 N]. The paper's code tests rank < 0.1 N; the two
  agree whenever 0.1 N is not an integer (its test sets: N = 9931, 5801) and this one counts the
  true top 10% when it is (N = 3840 would give the paper's code top-383; docs/method.md, pitfall 9).
  Under N = 10 the top 10% holds no whole rank, so the cutoff is at least rank 1: a gallery of 7
  counts rank 1, where rank <= 0.7 would make R@10% 0 whatever the model (and best.pt the first
  validation). Galleries of 10 or more are unchanged.
- Median rank: median of the ranks (mean of the middle two for even N).
Conditions: metadata as the data has it, no metadata (all tokens absent), and each with the
oracle caption added to the query (l2norm(raw mean of query + raw mean of its caption),
log-variances added, as the paper): reported separately, a map server never has it. Each level
(the sample's imagery level) is its own gallery; "all" is the whole split, reported only when
no clip appears in it twice: GeoSound's and SoundingEarth's readers serve each record once per
zoom, so their "all" would hold every clip three times; those report per level, as the paper
does (docs/method.md section 4.1), and "levels_mean", the mean of the levels' figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.batches import Collate, Examples, SkipLog, loader, to_tensors
from model.checkpoint import model_from_checkpoint
from model.checks import RECALL_FRACTION, checked_splits, recall_cutoff, small_split_warnings
from model.data import DataError, Preprocessing, SampleSource
from model.frozen_cache import FrozenCache, frozen_cache
from model.nn.psm import META_KEYS, PSMModel, preprocessing
from model.stopping import Abandoned
from runtime.contract import META_TOKENS
from runtime.errors import UserError

DEFINITION = (
    "rank: 1-based rank of the true match among the N gallery items, ties averaged; "
    "R@10% = mean(rank <= 0.1 N), the cutoff at least rank 1 (N < 10); median rank = median of ranks; score = -CSD "
    "(PCME++) or cosine (InfoNCE)"
)


@dataclass
class Gaussians:
    """Raw (unnormalised) means and log-variances of N samples, float64."""

    raw: np.ndarray
    logvar: np.ndarray

    @property
    def mu(self) -> np.ndarray:
        return self.raw / np.linalg.norm(self.raw, axis=1, keepdims=True)

    def plus(self, other: Gaussians) -> Gaussians:
        """The paper's oracle-caption query: raw means added, log-variances added."""
        return Gaussians(self.raw + other.raw, self.logvar + other.logvar)

    def take(self, rows: np.ndarray) -> Gaussians:
        return Gaussians(self.raw[rows], self.logvar[rows])


def true_match_ranks(query: Gaussians, gallery: Gaussians, probabilistic: bool, chunk: int = 1024) -> np.ndarray:
    """For each query i, the 1-based rank of gallery item i, ties averaged."""
    q_mu, g_mu = query.mu, gallery.mu
    q_s, g_s = np.exp(query.logvar).sum(1), np.exp(gallery.logvar).sum(1)
    ranks = np.empty(len(q_mu))
    for start in range(0, len(q_mu), chunk):
        rows = slice(start, start + chunk)
        dots = q_mu[rows] @ g_mu.T
        scores = -(2.0 - 2.0 * dots + q_s[rows, None] + g_s[None, :]) if probabilistic else dots
        true = scores[np.arange(scores.shape[0]), np.arange(start, start + scores.shape[0])][:, None]
        greater = (scores > true).sum(1)
        equal = (scores == true).sum(1)  # includes the true match itself
        ranks[rows] = greater + (equal + 1) / 2.0
    return ranks


def recall_at_fraction(ranks: np.ndarray, fraction: float = RECALL_FRACTION) -> float:
    """The share of queries whose true match ranks within recall_cutoff of the gallery."""
    return float(np.mean(ranks <= recall_cutoff(len(ranks), fraction)))


def retrieval(
    sat: Gaussians, audio: Gaussians, probabilistic: bool, caption: Gaussians | None = None
) -> dict[str, float]:
    """I2S and S2I R@10% and median rank of paired rows; with `caption`, each query has its
    sample's caption added (the oracle-caption condition) and the galleries stay as they are."""
    sat_query = sat.plus(caption) if caption is not None else sat
    audio_query = audio.plus(caption) if caption is not None else audio
    i2s = true_match_ranks(sat_query, audio, probabilistic)
    s2i = true_match_ranks(audio_query, sat, probabilistic)
    return {
        "I2S_R@10%": recall_at_fraction(i2s),
        "I2S_median_rank": float(np.median(i2s)),
        "S2I_R@10%": recall_at_fraction(s2i),
        "S2I_median_rank": float(np.median(s2i)),
        "gallery": len(i2s),
    }


# The metadata a cell is fused with: the sample's own, the same with its source unknown (what a map
# drawn without `source=` sees; issue 16's "source on and off"), and none at all (the paper's
# "metadata off").
CONDITIONS = ("metadata", "no_source", "no_metadata")
_SOURCE = META_TOKENS.index("source")


def _presence(present: torch.Tensor) -> dict[str, torch.Tensor]:
    """The `present` mask of each condition, from the samples' own."""
    no_source = present.clone()
    no_source[:, _SOURCE] = 0
    return {"metadata": present, "no_source": no_source, "no_metadata": torch.zeros_like(present)}


@dataclass
class SplitEmbeddings:
    sat: dict[str, Gaussians]  # CONDITIONS
    audio: Gaussians
    text: Gaussians | None
    levels: np.ndarray  # object array, None where unknown


@torch.no_grad()
def embed_split(
    model: PSMModel,
    source: SampleSource,
    prep: Preprocessing,
    *,
    cache: FrozenCache | None = None,
    batch_size: int = 64,
    workers: int = 0,
    max_samples: int | None = None,
    skips: SkipLog | None = None,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
) -> SplitEmbeddings:
    """Every readable sample of `source` (the first `max_samples`) embedded once, each
    unreadable one left out. `stop` is asked before each batch: True abandons the pass (Abandoned),
    so a stopping run need not wait for a whole split."""
    model.eval()
    device = next(model.parameters()).device
    cache = cache or FrozenCache()
    examples = Examples(
        _Head(source, max_samples), prep, skip_audio="audio" in cache.outputs, unreadable=cache.unreadable
    )
    parts: dict[str, list] = {k: [] for k in (*CONDITIONS, "audio", "text")}
    seen: set[int] = set()
    levels: list = []
    for batch in tqdm(
        loader(examples, Collate(prep, cache.outputs), batch_size=batch_size, workers=workers),
        desc="embedding",
        disable=not progress,
        unit="batch",
    ):
        if stop is not None and stop():
            raise Abandoned(f"stopped after {len(seen)} samples")
        if skips is not None:
            skips.add(batch["skipped"])
        keep = _first_sight(batch["index"], seen)  # a substitute repeats a sample, even within a batch
        levels.extend(np.array(batch["levels"], dtype=object)[keep])
        t = to_tensors(batch, device)
        if "image" not in t or not ({"features", "audio_backbone"} & set(t)):
            raise DataError("evaluation needs an image and audio for every sample")
        sat = model.encode_image(t["image"], t["gsd"])
        meta = {k: t[k] for k in META_KEYS}
        for condition, present in _presence(meta["present"]).items():
            fused = model.fuse(sat, {**meta, "present": present}, normalise=False)
            parts[condition].append(_numpy(fused, keep))
        out = model({k: v for k, v in t.items() if k not in ("image",)}, normalise=False)
        parts["audio"].append(_numpy(out["audio"], keep))
        if "text" in out:
            parts["text"].append(_numpy(out["text"], keep))

    if not levels:
        raise DataError("the split has no samples to evaluate; give it samples (a larger split fraction of the data)")

    def join(name: str) -> Gaussians:
        return Gaussians(np.concatenate([p[0] for p in parts[name]]), np.concatenate([p[1] for p in parts[name]]))

    text = join("text") if parts["text"] and len(parts["text"]) == len(parts["audio"]) else None
    return SplitEmbeddings({c: join(c) for c in CONDITIONS}, join("audio"), text, np.array(levels, dtype=object))


def _first_sight(indices: np.ndarray, seen: set[int]) -> np.ndarray:
    """Which rows of a batch hold a sample not met before (in an earlier batch or an earlier row of
    this one), `seen` updated: an unreadable sample's substitute is the next sample, which is then
    read twice, and a gallery must hold it once."""
    keep = np.zeros(len(indices), dtype=bool)
    for row, index in enumerate(indices.tolist()):
        keep[row] = index not in seen
        seen.add(index)
    return keep


def _numpy(emb: tuple[torch.Tensor, torch.Tensor], keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return emb[0].double().cpu().numpy()[keep], emb[1].double().cpu().numpy()[keep]


class _Head:
    """The first n samples of a source (all when n is None)."""

    def __init__(self, source: SampleSource, n: int | None):
        self.source, self.n = source, len(source) if n is None else min(n, len(source))
        self.get = getattr(source, "get", None)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.source[index]


def repeats_clips(audio: Gaussians) -> bool:
    """Whether a clip is in the gallery more than once (its embedding repeats exactly)."""
    return len(np.unique(audio.raw, axis=0)) < len(audio.raw)


def metrics(emb: SplitEmbeddings, probabilistic: bool, oracle_caption: bool = True) -> dict:
    """{group: {condition: retrieval metrics}} for every level present and "all" (or, where the
    split repeats clips across levels, "levels_mean" instead: no gallery holds a clip twice)."""
    _check_finite(emb)
    groups = {"all": np.arange(len(emb.levels))}
    for level in sorted({lv for lv in emb.levels if lv is not None}):
        groups[f"level_{level}"] = np.flatnonzero(emb.levels == level)
    repeated = repeats_clips(emb.audio)
    if repeated:
        del groups["all"]
    out = {}
    for name, rows in groups.items():
        audio = emb.audio.take(rows)
        result: dict[str, Any] = {
            cond: retrieval(sat.take(rows), audio, probabilistic) for cond, sat in emb.sat.items()
        }
        if oracle_caption and emb.text is not None:
            text = emb.text.take(rows)
            result["oracle_caption"] = {
                cond: retrieval(sat.take(rows), audio, probabilistic, text) for cond, sat in emb.sat.items()
            }
        out[name] = result
    if repeated:
        out["levels_mean"] = _mean_of(list(out.values()))
    return out


def _check_finite(emb: SplitEmbeddings) -> None:
    """Refuse embeddings that hold a NaN or an infinity: a NaN score is neither above nor equal to
    the true match's, so true_match_ranks ranked every such match 0.5, and the metrics read as perfect."""
    sides = [*emb.sat.values(), emb.audio, *([emb.text] if emb.text is not None else [])]
    bad = np.zeros(len(emb.levels), dtype=bool)
    for side in sides:
        bad |= ~np.isfinite(side.raw).all(1) | ~np.isfinite(side.logvar).all(1)
    if bad.any():
        raise UserError(
            f"the model's embeddings of {int(bad.sum())} of {len(bad)} samples are not finite (NaN or inf), so they "
            "cannot be ranked: its weights have diverged (train again with a lower train.lr)"
        )


def _mean_of(results: list[dict]) -> dict:
    """The element-wise mean of nested metric dicts of the same shape."""
    first = results[0]
    if isinstance(first, dict):
        return {k: _mean_of([r[k] for r in results]) for k in first}
    return float(np.mean(results))


def overall(results: dict) -> dict:
    """The split's headline figures: "all", or "levels_mean" where clips repeat across levels."""
    return results["all"] if "all" in results else results["levels_mean"]


def evaluate_checkpoint(
    path: str | Path,
    *,
    data: dict | None = None,
    split: str = "test",
    batch_size: int = 128,
    workers: int = 0,
    max_samples: int | None = None,
    oracle_caption: bool = True,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict:
    """The report of `soundscape evaluate`: metrics of a checkpoint on a split of `data` (default:
    the checkpoint's own data section). With `cache_dir`, frozen towers' outputs come from (and
    go to) the frozen-tower cache there, as in training."""
    model, checkpoint = model_from_checkpoint(path)
    skip = checkpoint["config"]["train"].get("skip_mismatched_rows", False)
    try:
        splits = checked_splits(data or checkpoint["config"]["data"], model.cfg, skip=skip)
    except FileNotFoundError as exc:
        if data:
            raise
        raise FileNotFoundError(
            f"{exc} (the path is the one checkpoint {path} records; pass --config with a "
            "data: section that names where the data is now)"
        ) from None
    source = getattr(splits, split)
    if len(source) == 0:
        why = splits.why_empty.get(split, "give the data a larger split fraction")
        raise DataError(f"the {split} split of this data has no samples to evaluate; choose another --split, or {why}")
    data = data or checkpoint["config"]["data"]
    prep, skips = preprocessing(model), SkipLog()
    cache = None
    if cache_dir is not None and model.frozen_towers() and max_samples is None:
        cache = frozen_cache(
            model,
            split,
            source,
            prep,
            cache_dir=Path(cache_dir),
            data=data,
            batch_size=batch_size,
            workers=workers,
            skips=skips,
            progress=progress,
        )
    emb = embed_split(
        model,
        source,
        prep,
        cache=cache,
        batch_size=batch_size,
        workers=workers,
        max_samples=max_samples,
        skips=skips,
        progress=progress,
    )
    probabilistic = checkpoint["config"]["train"]["loss"]["kind"] == "pcmepp"
    return {
        "checkpoint": str(path),
        "step": checkpoint["step"],
        "split": split,
        "samples": len(emb.levels),
        "skipped": skips.files,
        "data": data,
        "warnings": small_split_warnings({split: len(emb.levels)}),
        "score": "-CSD" if probabilistic else "cosine",
        "definition": DEFINITION,
        "results": metrics(emb, probabilistic, oracle_caption=oracle_caption),
    }

"""Outputs of frozen towers, computed once per split and reused by every step and evaluation.

A frozen backbone (MiniLM, aisfx, CLAP with trainable: false) gives the same vector for a sample
every time, so running it each step only burns CPU: the cache stores one row per sample index
and batches carry that row (`text_backbone`, `audio_backbone`) instead of tokens or audio, which
are then never decoded. Samples found unreadable while caching are recorded, so training skips
them instead of pairing their image with a neighbour's cached audio. Files are named by a
fingerprint of the tower's config and weights, the device and precision it runs in, the versions
of the libraries that compute its outputs, the split and the data's content hash, and written
atomically: an interrupted run recomputes them and a second run reuses them. A reader without a
content hash cannot say when its data changed, so its outputs are computed for the run and never
stored."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from model.batches import Collate, Examples, SkipLog, loader, to_tensors
from model.data import DataError, Preprocessing, SampleSource
from model.nn.psm import PSMModel
from runtime.files import atomic_write, json_sha256

log = logging.getLogger(__name__)


# What turns a sample into a frozen tower's output besides its weights: the towers' code (torch,
# transformers), the tokenizer and the audio front end (numpy, scipy, soundfile and its
# libsndfile). A new release of any of them may change the outputs.
LIBRARIES = ("torch", "transformers", "tokenizers", "numpy", "scipy", "soundfile")


@dataclass
class FrozenCache:
    """{tower: (N, D)} outputs of a split's frozen towers and its unreadable samples."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    unreadable: dict[int, tuple[str, str]] = field(default_factory=dict)


def library_versions() -> dict[str, str | None]:
    """The installed version of each of LIBRARIES (None where one is not installed) and libsndfile's."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {**versions, "libsndfile": soundfile.__libsndfile_version__}


def numerics(tower: torch.nn.Module) -> dict:
    """How the tower's outputs are computed, beyond its weights and code: the device kind, the
    parameters' dtypes, an autocast in force, the float32 matmul precision, and on CUDA the GPU's
    compute capability and TF32 switches (cuDNN's convolutions run in TF32 by default from sm_80
    on). Outputs of one setting differ from another's by far more than rounding (bf16 autocast:
    ~1e-2), so a cache made on a GPU is never read on a CPU, nor one of fp32 under autocast."""
    params = list(tower.parameters())
    device = params[0].device if params else torch.device("cpu")
    autocast = torch.is_autocast_enabled(device.type)
    spec: dict[str, Any] = {
        "device": device.type,
        "dtypes": sorted({str(p.dtype) for p in params}),
        "autocast": str(torch.get_autocast_dtype(device.type)) if autocast else None,
        "matmul": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        spec["capability"] = list(torch.cuda.get_device_capability(device))
        spec["tf32"] = [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]
    return spec


def fingerprint(model: PSMModel, tower: str, split: str, data: dict, content: str) -> str:
    """Names a cache file: the tower's config and the digest of its weights as loaded (a new
    release of its package behind the same config gives new outputs), the device and precision
    it runs in (`numerics`), the versions of the libraries that compute its outputs (an upgraded
    torch may too), the split, the data section
    without the demo corpus's `path` (so one corpus named by another spelling of its path,
    relative, absolute or a copy, finds its cache) and the data's own content hash
    (model.data.SampleSource), which changes whenever what the tower reads does."""
    spec = {
        "tower": getattr(model.cfg, tower).model_dump(),
        "weights": getattr(model, tower).weights_digest(),
        "numerics": numerics(getattr(model, tower)),
        "libraries": library_versions(),
        "split": split,
        "data": {k: v for k, v in data.items() if k != "path"},
        "content": content,
        "audio": model.cfg.audio_spec.to_json() if tower == "audio" else None,
    }
    return json_sha256(spec)


@torch.no_grad()
def tower_outputs(
    model: PSMModel,
    tower: str,
    source: SampleSource,
    prep: Preprocessing,
    *,
    batch_size: int,
    workers: int,
    skips: SkipLog,
    progress: bool,
) -> tuple[np.ndarray, dict]:
    """(N, out_dim) backbone outputs of `tower` for every sample index, and the samples found
    unreadable ({index: (where, reason)}). Text is embedded once per distinct caption."""
    device = next(model.parameters()).device
    examples = Examples(source, prep, skip_audio=(tower == "text"))
    unreadable, captions, rows = {}, [], []
    for batch in tqdm(
        loader(examples, Collate(prep), batch_size=batch_size, workers=workers),
        desc=f"caching the {tower} tower",
        disable=not progress,
        unit="batch",
    ):
        skips.add(batch["skipped"])
        unreadable.update({i: (where, reason) for i, where, reason in batch["skipped"]})
        if tower == "text":
            if any(c is None for c in batch["captions"]):
                raise DataError("every sample needs a caption to cache the frozen text tower")
            captions.extend(batch["captions"])
        elif "features" not in batch:
            raise DataError("every sample needs audio to cache the frozen audio tower")
        else:
            rows.append(model.audio(to_tensors(batch, device)["features"]).float().cpu().numpy())
    if tower == "audio":
        return np.concatenate(rows).astype(np.float32), unreadable
    unique = sorted(set(captions))
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        ids, mask = prep.tokenizer.encode(chunk)
        out = model.text(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        vectors.update(zip(chunk, out.float().cpu().numpy(), strict=True))
    return np.stack([vectors[c] for c in captions]).astype(np.float32), unreadable


def frozen_cache(
    model: PSMModel,
    split: str,
    source: SampleSource,
    prep: Preprocessing,
    *,
    cache_dir: Path,
    data: dict,
    batch_size: int,
    workers: int,
    skips: SkipLog,
    progress: bool,
) -> FrozenCache:
    """The cache of every frozen tower of `model` over `source`, read from `cache_dir` or
    computed and stored there."""
    cache = FrozenCache()
    content = getattr(source, "content_hash", None)
    if content is None and model.frozen_towers():
        log.warning(
            "the %s split's reader gives no content_hash (model.data.SampleSource), so a cache could "
            "outlive a change to its data: the frozen towers run over it now and their outputs are "
            "not stored in %s",
            split,
            cache_dir,
        )
    for tower in model.frozen_towers():
        compute = functools.partial(
            tower_outputs,
            model,
            tower,
            source,
            prep,
            batch_size=batch_size,
            workers=workers,
            skips=skips,
            progress=progress,
        )
        if content is None:
            values, unreadable = compute()
        else:
            log.debug("the %s split's content hash: %s", split, content)
            path = cache_dir / f"{split}-{tower}-{fingerprint(model, tower, split, data, content)}.npz"
            values, unreadable = _stored(path, compute, f"the frozen {tower} tower over {len(source)} {split} samples")
        cache.outputs[tower] = values
        cache.unreadable.update(unreadable)
    return cache


def _stored(path: Path, compute: Callable[[], tuple[np.ndarray, dict]], what: str) -> tuple[np.ndarray, dict]:
    """The outputs and unreadable samples stored at `path`, or computed and stored there."""
    if path.is_file():
        with np.load(path) as f:
            unreadable = {
                int(i): (str(w), str(r))
                for i, w, r in zip(f["bad_index"], f["bad_where"], f["bad_reason"], strict=True)
            }
            return f["values"], unreadable
    log.info("caching %s", what)
    values, unreadable = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "values": values,
        "bad_index": np.array(list(unreadable), dtype=np.int64),
        "bad_where": np.array([w for w, _ in unreadable.values()], dtype=str),
        "bad_reason": np.array([r for _, r in unreadable.values()], dtype=str),
    }
    atomic_write(path, functools.partial(np.savez, **arrays))
    return values, unreadable

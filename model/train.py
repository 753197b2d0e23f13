"""Training: modality pairs of a batch through PSMModel and the PCME++ loss.

A batch is a dict of tensors with any of: `image`+`gsd`+metadata (sat side), `input_ids`+
`attention_mask` (text), `features` (audio). Every pair of sides present contributes, weighted
as PSM does: 0.5 (sat, audio) + 0.5 (sat, text) + 0.5 (audio, text).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from model.contract import META_TOKENS
from model.nn.losses import LOSSES
from model.nn.psm import PSMModel

PAIR_WEIGHTS = {("sat", "audio"): 0.5, ("sat", "text"): 0.5, ("audio", "text"): 0.5}
META_KEYS = (*META_TOKENS, "present")


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 20
    grad_clip: float = 1.0
    meta_dropout: float = 0.5
    loss: str = "pcmepp"
    seed: int = 56


def drop_metadata(present: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each token of each sample is dropped independently with probability p (training only)."""
    keep = torch.rand(present.shape, generator=generator, device=present.device) >= p
    return present * keep.to(present.dtype)


def embed_batch(model: PSMModel, batch: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """(mu, logvar) of every side present in the batch."""
    out = {}
    if "image" in batch:
        sat = model.encode_image(batch["image"], batch["gsd"])
        out["sat"] = model.fuse(sat, {k: batch[k] for k in META_KEYS})
    if "input_ids" in batch:
        out["text"] = model.encode_text(batch["input_ids"], batch["attention_mask"])
    if "features" in batch:
        out["audio"] = model.encode_audio(batch["features"])
    return out


def batch_loss(loss_fn: nn.Module, embeddings: dict[str, tuple]) -> torch.Tensor:
    total = None
    for (one, two), weight in PAIR_WEIGHTS.items():
        if one in embeddings and two in embeddings:
            term = weight * loss_fn(embeddings[one], embeddings[two])
            total = term if total is None else total + term
    if total is None:
        raise ValueError("a batch needs at least two modalities")
    return total


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(model: PSMModel, batches: Callable[[torch.Generator], Iterator[dict[str, torch.Tensor]]],
          cfg: TrainConfig, progress: bool = True) -> nn.Module:
    """Train in place for cfg.steps optimizer steps; returns the loss module (its (a, b) is the
    bundle's calibration)."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    loss_fn = LOSSES[cfg.loss]()
    params = [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=cfg.betas, eps=cfg.eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, cfg.steps, cfg.warmup_steps))
    model.train()
    stream = batches(generator)
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, unit="step")
    for _ in bar:
        batch = next(stream)
        batch["present"] = drop_metadata(batch["present"], cfg.meta_dropout, generator)
        loss = batch_loss(loss_fn, embed_batch(model, batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return loss_fn

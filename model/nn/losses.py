"""PCME++ (Chun, ICLR 2024) as PSM uses it, and InfoNCE as the deterministic baseline.

PCME++: the closed-form sampled distance d_ij = |mu1_i - mu2_j|^2 + sum(s1_i) + sum(s2_j), with
s = exp(logvar), is E|z1 - z2|^2 for independent z ~ N(mu, diag(s)). It gives match logits
-a d + b (a, b learnable, initialised to 5) and a binary cross-entropy over the B x B matrix
with the diagonal positive. Pseudo-positives relabel every j whose logit reaches the
diagonal's; a VIB KL term keeps the Gaussians near N(0, I). One loss module (one a, b) is shared
by every modality pair, as in PSM, and its (a, b) is the bundle's calibration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from model.config import LossConfig, Pair

Embedding = tuple[torch.Tensor, torch.Tensor]


def closed_form_distance(
    mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """(B1, B2) matrix of E|z1 - z2|^2 for z ~ N(mu, diag(exp(logvar)))."""
    sq = (mu1.unsqueeze(1) - mu2.unsqueeze(0)).pow(2).sum(-1)
    return sq + logvar1.exp().sum(-1).unsqueeze(1) + logvar2.exp().sum(-1).unsqueeze(0)


def vib_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), averaged over batch and dimensions (PSM's form). PSM
    returns 0 above 1e4 as an explosion guard; that hides divergence, so it is not copied."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


class PCMEPlusPlusLoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(cfg.init_scale)))  # a
        self.shift = nn.Parameter(torch.tensor(float(cfg.init_shift)))  # b
        self.alpha = cfg.pseudo_positive_alpha
        self.beta = cfg.vib_beta

    def logits(self, one: Embedding, two: Embedding) -> torch.Tensor:
        return -self.scale * closed_form_distance(one[0], one[1], two[0], two[1]) + self.shift

    @staticmethod
    def pseudo_positive_targets(logits: torch.Tensor) -> torch.Tensor:
        """Row i marks every j whose logit is at least the diagonal's (the diagonal included)."""
        return (logits >= logits.diagonal().unsqueeze(1)).to(logits.dtype).detach()

    def forward(self, one: Embedding, two: Embedding) -> torch.Tensor:
        one = (one[0].float(), one[1].float())
        two = (two[0].float(), two[1].float())
        logits = self.logits(one, two)
        eye = torch.eye(logits.shape[0], device=logits.device)
        # i->j and j->i see the same matrix, hence PCME++'s factor 2 on one BCE.
        loss = 2 * F.binary_cross_entropy_with_logits(logits, eye)
        if self.alpha:
            pp_rows = F.binary_cross_entropy_with_logits(logits, self.pseudo_positive_targets(logits))
            pp_cols = F.binary_cross_entropy_with_logits(logits.T, self.pseudo_positive_targets(logits.T))
            loss = loss + self.alpha * (pp_rows + pp_cols)
        if self.beta:
            loss = loss + self.beta * (vib_kl(*one) + vib_kl(*two))
        return loss

    def calibration(self) -> tuple[float, float]:
        """(a, b) for the bundle manifest: the heatmap is sigmoid(-a d + b)."""
        return float(self.scale.detach()), float(self.shift.detach())


class InfoNCELoss(nn.Module):
    """Symmetric cross-entropy over tau * cos(mu1, mu2), tau learnable from `init_temperature`
    (PSM's baseline: no exp, no clamp). Log-variances are ignored."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(float(cfg.init_temperature)))

    def forward(self, one: Embedding, two: Embedding) -> torch.Tensor:
        logits = self.tau * one[0].float() @ two[0].float().T
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    def calibration(self) -> tuple[float, float]:
        """sigmoid(-a d + b) with d = 2 - 2 cos (+ the untrained S terms) and a = tau/2, b = tau
        is the logistic of tau cos: the scale the model was trained with."""
        tau = float(self.tau.detach())
        return tau / 2, tau


PairLoss = PCMEPlusPlusLoss | InfoNCELoss
LOSSES: dict[str, type[PairLoss]] = {"pcmepp": PCMEPlusPlusLoss, "infonce": InfoNCELoss}
PAIRS: dict[Pair, tuple[str, str]] = {
    "sat_audio": ("sat", "audio"),
    "sat_text": ("sat", "text"),
    "audio_text": ("audio", "text"),
}


def build_loss(cfg: LossConfig) -> PairLoss:
    """The pair loss `train.loss` names (its kind and pairs were checked when the config was read)."""
    return LOSSES[cfg.kind](cfg)


def pair_losses(
    loss_fn: nn.Module, embeddings: dict[str, Embedding], weights: Mapping[Pair, float]
) -> dict[Pair, torch.Tensor]:
    """The unweighted loss of every pair whose two sides the batch has and whose weight is set."""
    return {
        name: loss_fn(embeddings[a], embeddings[b])
        for name, (a, b) in PAIRS.items()
        if weights.get(name) and a in embeddings and b in embeddings
    }


def total_loss(parts: Mapping[Pair, torch.Tensor], weights: Mapping[Pair, float]) -> torch.Tensor:
    if not parts:
        raise ValueError("a batch needs two modalities of a weighted pair (sat, text, audio)")
    return cast(torch.Tensor, sum(weights[name] * value for name, value in parts.items()))  # parts is not empty

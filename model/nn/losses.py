"""PCME++ (Chun, ICLR 2024) as PSM uses it, and InfoNCE as the deterministic baseline.

PCME++: the closed-form sampled distance d_ij = |mu1_i - mu2_j|^2 + sum(s1_i) + sum(s2_j), with
s = exp(logvar), gives match logits -a d + b (a, b learnable, initialised to 5) and a binary
cross-entropy over the B x B matrix with the diagonal positive. Pseudo-positives relabel every
j whose logit reaches the diagonal's; a VIB KL term keeps the Gaussians near N(0, I).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Embedding = tuple[torch.Tensor, torch.Tensor]


def closed_form_distance(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                         logvar2: torch.Tensor) -> torch.Tensor:
    """(B1, B2) matrix of E|z1 - z2|^2 for z ~ N(mu, diag(exp(logvar)))."""
    sq = (mu1.unsqueeze(1) - mu2.unsqueeze(0)).pow(2).sum(-1)
    return sq + logvar1.exp().sum(-1).unsqueeze(1) + logvar2.exp().sum(-1).unsqueeze(0)


def vib_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), averaged over batch and dimensions (PSM's form)."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


class PCMEPlusPlusLoss(nn.Module):
    def __init__(self, init_scale: float = 5.0, init_shift: float = 5.0,
                 pseudo_positive_alpha: float = 0.1, vib_beta: float = 1e-4):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))  # a
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))  # b
        self.alpha = pseudo_positive_alpha
        self.beta = vib_beta

    def logits(self, one: Embedding, two: Embedding) -> torch.Tensor:
        return -self.scale * closed_form_distance(one[0], one[1], two[0], two[1]) + self.shift

    @staticmethod
    def pseudo_positive_targets(logits: torch.Tensor) -> torch.Tensor:
        """Row i marks every j whose logit is at least the diagonal's (the diagonal included)."""
        return (logits >= logits.diagonal().unsqueeze(1)).float().detach()

    def forward(self, one: Embedding, two: Embedding) -> torch.Tensor:
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
    """Symmetric cross-entropy over tau * cos(mu1, mu2), tau learnable from 1 (PSM baseline)."""

    def __init__(self, init_temperature: float = 1.0):
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(float(init_temperature)))

    def forward(self, one: Embedding, two: Embedding) -> torch.Tensor:
        logits = self.tau * one[0] @ two[0].T
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    def calibration(self) -> tuple[float, float]:
        # Not probabilistic: sigmoid(-a d + b) with d = 2 - 2cos reduces to a logistic of tau*cos.
        tau = float(self.tau.detach())
        return tau / 2, tau


LOSSES = {"pcmepp": PCMEPlusPlusLoss, "infonce": InfoNCELoss}

"""Building blocks written out by hand so that every graph exports cleanly to ONNX and runs the
same in onnxruntime: attention with a key padding mask, transformer blocks whose parameter names
follow timm's ViT (so SatMAE checkpoints load key for key), and the GSD positional embedding."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch import nn

from model.config import ConfigError


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D); keep (B, T) bool, False for padding keys."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        if keep is not None:
            scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = self.drop(scores.softmax(dim=-1))
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))

    def few(self, x: torch.Tensor, keep: torch.Tensor | None = None, first: bool = False) -> torch.Tensor:
        """forward(x, keep) in eval mode for a handful of tokens a sample (the export's lean path):
        each head's scores and mix as broadcast products rather than (B x heads) tiny matrix
        products, and every linear layer on (B*T, D) rows, one GEMM with its bias. In
        onnxruntime that is 14 % less CPU for the fuse graph of a tile's 324 cells under hour=
        (4 tokens), 16 % for 4096 cells under hour, month and source (6). `first`: token 0's
        output alone (B, D), every token still a key and value; else (B, T, D)."""
        b, t, d = x.shape
        dh = d // self.heads
        rows = x.reshape(b * t, d)
        w, bias = self.qkv.weight, self.qkv.bias
        q = nn.functional.linear(x[:, 0] if first else rows, w[:d], bias[:d]).reshape(b, -1, 1, self.heads, dh)
        k = nn.functional.linear(rows, w[d : 2 * d], bias[d : 2 * d]).reshape(b, 1, t, self.heads, dh)
        v = nn.functional.linear(rows, w[2 * d :], bias[2 * d :]).reshape(b, 1, t, self.heads, dh)
        scores = (q * k).sum(-1) / math.sqrt(dh)  # (B, queries, keys, heads)
        if keep is not None:  # added, not filled: onnxruntime took 0.06 ms for this Add, 0.12 for the Where
            scores = scores + (~keep).to(scores.dtype)[:, None, :, None] * torch.finfo(scores.dtype).min
        mixed = (scores.softmax(dim=2).unsqueeze(-1) * v).sum(2)  # (B, queries, heads, dh)
        return self.proj(mixed.reshape(-1, d)).reshape((b, d) if first else (b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Block(nn.Module):
    """Transformer encoder layer; `norm_first` picks pre-LN (ViT) or post-LN (the PyTorch
    TransformerEncoderLayer default, which PSM's fusion transformer uses)."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, norm_first: bool, eps: float = 1e-6):
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self.attn(self.norm1(x), keep))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, keep)))
        return self.norm2(x + self.drop(self.mlp(x)))

    def few(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """forward(x, keep) in eval mode through Attention.few, the norms and the MLP on
        (B*T, D) rows (the export's lean path for a handful of tokens a sample)."""
        b, t, d = x.shape
        rows = x.reshape(b * t, d)
        if self.norm_first:
            rows = rows + self.attn.few(self.norm1(x), keep).reshape(b * t, d)
            return (rows + self.mlp(self.norm2(rows))).reshape(b, t, d)
        rows = self.norm1(rows + self.attn.few(x, keep).reshape(b * t, d))
        return self.norm2(rows + self.mlp(rows)).reshape(b, t, d)

    def first(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """forward(x, keep)[:, 0] in eval mode (B, D), computing the attention's query, its
        output and the MLP for token 0 alone (every token stays a key and value)."""
        x0 = x[:, 0]
        if self.norm_first:
            x0 = x0 + self.attn.few(self.norm1(x), keep, first=True)
            return x0 + self.mlp(self.norm2(x0))
        x0 = self.norm1(x0 + self.attn.few(x, keep, first=True))
        return self.norm2(x0 + self.mlp(x0))


def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[sin(p w_k), cos(p w_k)] with w_k = 10000^(-k/(dim/2)): (..., dim) for positions (...)."""
    half = dim // 2
    omega = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    angles = positions.unsqueeze(-1).float() * omega
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def gsd_positional_embedding(grid: int, dim: int, resolution: torch.Tensor) -> torch.Tensor:
    """GSDPE (Scale-MAE, as PSM uses it): the patch at row i, column j sits at (j r, i r) for
    each sample's resolution r; the first half of the channels encode x, the second y.
    (B, grid*grid, dim), tokens in row-major order."""
    index = torch.arange(grid, dtype=torch.float32, device=resolution.device)
    rows = index.repeat_interleave(grid)  # t = i * grid + j
    cols = index.repeat(grid)
    x = cols[None, :] * resolution[:, None]
    y = rows[None, :] * resolution[:, None]
    return torch.cat([sincos(x, dim // 2), sincos(y, dim // 2)], dim=-1)


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """Linear-GELU-Linear, the shape of PSM's projector, heads and metadata encoders."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class Tower(nn.Module):
    """Shared behaviour of text and audio towers: freezing, the digest of their weights, and which
    ONNX exporter fits."""

    out_dim: int
    frozen: bool = False
    onnx_exporter = "dynamo"  # "torchscript" where torch.export cannot trace the backbone
    _digest: str | None = None  # weights_digest of a frozen tower, kept until weights are loaded

    def freeze(self) -> None:
        self.frozen = True
        self._digest = None
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Tower:
        return super().train(mode and not self.frozen)

    def weights_digest(self) -> str:
        """Hex sha256 of what the tower's outputs are a function of (model.frozen_cache names its
        files by it). A frozen tower's weights stay as loaded, so its digest is computed once and
        kept (training asks for it for every split; MiniLM's take 0.07 s each time) until weights
        are loaded into it again."""
        if self._digest is not None and self.frozen:
            return self._digest
        self._digest = self.compute_digest()
        return self._digest

    def compute_digest(self) -> str:
        """Hex sha256 of every tensor as loaded (name, dtype, shape, bytes), whichever package
        release, path or file it came from."""
        digest = hashlib.sha256()
        for name, tensor in self.state_dict().items():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(flat.view(torch.uint8).numpy())
        return digest.hexdigest()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        """Run for every module a load_state_dict reaches (its own or a parent's, as --init-from
        and resuming load): the weights may change, so the kept digest is dropped."""
        self._digest = None
        super()._load_from_state_dict(*args, **kwargs)

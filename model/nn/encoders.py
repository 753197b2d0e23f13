"""The satellite side of PSM: the ViT image encoder with the GSD positional embedding, the
metadata fusion transformer, and the probabilistic (mean, log-variance) heads every modality
ends in."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ConfigError, ImageConfig, ModelConfig
from model.nn.layers import Block, gsd_positional_embedding, mlp
from model.nn.weights import load_satmae

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ProbabilisticHeads(nn.Module):
    """mu-head and logvar-head (both Linear-GELU-Linear, PSM's shape); both logvar biases start
    at `logvar_bias`, so sigma^2 starts small; mu is L2-normalised."""

    def __init__(self, inp: int, embed_dim: int, logvar_bias: float):
        super().__init__()
        self.mu = mlp(inp, embed_dim, embed_dim)
        self.logvar = mlp(inp, embed_dim, embed_dim)
        for layer in self.logvar:
            if isinstance(layer, nn.Linear):
                nn.init.constant_(layer.bias, logvar_bias)

    def forward(self, h: torch.Tensor, normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar); normalise=False gives the raw mean (PSM's oracle-caption evaluation
        adds raw means before normalising)."""
        mu = self.mu(h)
        return (F.normalize(mu, dim=-1) if normalise else mu), self.logvar(h)


class PatchEmbed(nn.Module):
    """The patch projection, under timm's names (`patch_embed.proj`)."""

    def __init__(self, width: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)


class ImageEncoder(nn.Module):
    """ViT over uint8 RGB (B, H, W, 3): patches + GSDPE (no learned position table), pre-LN
    blocks, mean over patch tokens, fc_norm, projector to the sat feature. Pixels are
    normalised inside, so no caller can feed differently scaled input. Parameter names follow
    timm, so a SatMAE checkpoint loads key for key (`load_satmae`)."""

    mean: torch.Tensor  # buffers (register_buffer)
    std: torch.Tensor

    def __init__(self, cfg: ImageConfig, sat_dim: int, pretrained: bool = True):
        super().__init__()
        if cfg.size % cfg.patch:
            raise ConfigError(f"model.image.size {cfg.size} is not a multiple of model.image.patch {cfg.patch}")
        self.grid = cfg.size // cfg.patch
        self.width = cfg.width
        self.gsd_unit = cfg.gsd_unit_m
        self.patch_embed = PatchEmbed(cfg.width, cfg.patch)
        hidden = int(cfg.width * cfg.mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, hidden, cfg.dropout, norm_first=True) for _ in range(cfg.depth)
        )
        self.fc_norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.projector = mlp(cfg.width, sat_dim, sat_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.satmae_report = load_satmae(self, cfg.checkpoint) if (pretrained and cfg.checkpoint) else None

    def forward(self, image: torch.Tensor, gsd: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        tokens = tokens + gsd_positional_embedding(self.grid, self.width, gsd.float() / self.gsd_unit)
        for block in self.blocks:
            tokens = block(tokens)
        return self.projector(self.fc_norm(tokens.mean(dim=1)))


def location_features(xyz: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """A place's xyz on the unit sphere (..., 3), then the sines and cosines of each coordinate
    times each scale (..., 3 + 6 len(scales)): an MLP on xyz alone draws a continent, not a
    city; the finest scale pi 2^k resolves places about 2^-k Earth radii apart."""
    if not len(scales):
        return xyz
    angles = (xyz.unsqueeze(-1) * scales.to(xyz.dtype)).flatten(-2)
    return torch.cat([xyz, angles.sin(), angles.cos()], dim=-1)


class MetadataFusion(nn.Module):
    """[CLS, sat, location, hour, month, source, caption_source] through a post-LN transformer
    (PyTorch's TransformerEncoderLayer layout, as PSM) with a key padding mask; absent tokens
    are also zeroed. No positional or type embeddings, as in PSM: each token has its own
    encoder. The CLS output goes to the heads."""

    location_scales: torch.Tensor  # a buffer: fusion.location_octaves' scales

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        f = cfg.fusion
        d = f.width
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        scales = math.pi * 2.0 ** torch.arange(f.location_octaves, dtype=torch.float32)
        self.register_buffer("location_scales", scales, persistent=False)
        self.location = mlp(3 * (1 + 2 * f.location_octaves), f.meta_hidden, d)
        self.hour = mlp(2, f.meta_hidden, d)
        self.month = mlp(2, f.meta_hidden, d)
        self.source = nn.Embedding(len(cfg.sources), d)
        self.caption_source = nn.Embedding(len(cfg.caption_sources), d)
        self.blocks = nn.ModuleList(
            Block(d, f.heads, f.ff, f.dropout, norm_first=False, eps=1e-5) for _ in range(f.depth)
        )

    def forward(
        self,
        sat: torch.Tensor,
        location: torch.Tensor,
        hour: torch.Tensor,
        month: torch.Tensor,
        source: torch.Tensor,
        caption_source: torch.Tensor,
        present: torch.Tensor,
    ) -> torch.Tensor:
        tokens, keep = self._tokens(sat, location, hour, month, source, caption_source, present)
        for block in self.blocks:
            tokens = block(tokens, keep)
        return tokens[:, 0]

    def lean(
        self,
        sat: torch.Tensor,
        location: torch.Tensor,
        hour: torch.Tensor,
        month: torch.Tensor,
        source: torch.Tensor,
        caption_source: torch.Tensor,
        present: torch.Tensor,
    ) -> torch.Tensor:
        """forward() in eval mode, computing only what the CLS output reads (the exported fuse
        graph). A token absent from every sample of the batch is dropped: masked as a key, its
        only use is as a query whose output no other token reads. The last block runs its query,
        attention output and MLP for CLS alone. A tile's cells share their metadata, so this is
        4 of 7 tokens in the first block with hour= alone (never a caption source when serving).
        Every block's attention is Attention.few's, written for a handful of tokens."""
        tokens, keep = self._tokens(sat, location, hour, month, source, caption_source, present, drop_absent=True)
        *first, last = self.blocks
        for block in first:
            assert isinstance(block, Block)
            tokens = block.few(tokens, keep)
        assert isinstance(last, Block)
        return last.first(tokens, keep)

    def _tokens(
        self,
        sat: torch.Tensor,
        location: torch.Tensor,
        hour: torch.Tensor,
        month: torch.Tensor,
        source: torch.Tensor,
        caption_source: torch.Tensor,
        present: torch.Tensor,
        drop_absent: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS, sat, metadata] tokens (B, T, D) and which are kept as keys (B, T) bool."""
        # Stacked in contract.META_TOKENS order, the order of the `present` columns.
        meta = torch.stack(
            [
                self.location(location_features(location, self.location_scales)),
                self.hour(hour),
                self.month(month),
                self.source(source),
                self.caption_source(caption_source),
            ],
            dim=1,
        )
        meta = meta * present.unsqueeze(-1).to(meta.dtype)
        kept = present > 0.5
        if drop_absent:
            used = torch.nonzero(kept.any(dim=0))[:, 0]  # a data-dependent length in the graph
            meta, kept = meta.index_select(1, used), kept.index_select(1, used)
        b = sat.shape[0]
        tokens = torch.cat([self.cls.expand(b, -1, -1).to(sat.dtype), sat.unsqueeze(1), meta.to(sat.dtype)], dim=1)
        always = torch.ones(b, 2, dtype=torch.bool, device=sat.device)
        return tokens, torch.cat([always, kept], dim=1)

"""The PSM networks: image encoder with GSDPE, metadata fusion, text and audio towers, and the
probabilistic (mean, log-variance) heads every modality ends in."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.nn.config import ModelConfig
from model.nn.layers import Block, gsd_positional_embedding, mlp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ProbabilisticHeads(nn.Module):
    """mu-head and logvar-head (both Linear-GELU-Linear); logvar biases start at `logvar_bias`
    so sigma^2 starts small; mu is L2-normalised."""

    def __init__(self, inp: int, embed_dim: int, logvar_bias: float):
        super().__init__()
        self.mu = mlp(inp, embed_dim, embed_dim)
        self.logvar = mlp(inp, embed_dim, embed_dim)
        for layer in (self.logvar[0], self.logvar[2]):
            nn.init.constant_(layer.bias, logvar_bias)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.mu(h), dim=-1), self.logvar(h)


class ImageEncoder(nn.Module):
    """ViT: patches + GSDPE (no learned position table), mean-pooled tokens, LayerNorm,
    projector to the sat feature. Takes uint8 RGB (B, H, W, 3) and normalises inside, so that
    no caller can feed differently scaled pixels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.grid = cfg.image_size // cfg.patch_size
        self.width = cfg.image_width
        self.gsd_unit = cfg.gsd_unit_m
        self.patch = nn.Conv2d(3, cfg.image_width, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.blocks = nn.ModuleList(
            Block(cfg.image_width, cfg.image_heads, 4 * cfg.image_width, cfg.dropout, norm_first=True)
            for _ in range(cfg.image_depth))
        self.fc_norm = nn.LayerNorm(cfg.image_width, eps=1e-6)
        self.projector = mlp(cfg.image_width, cfg.sat_dim, cfg.sat_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, gsd: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, grid*grid, width), row-major
        tokens = tokens + gsd_positional_embedding(self.grid, self.width, gsd / self.gsd_unit)
        for block in self.blocks:
            tokens = block(tokens)
        return self.projector(self.fc_norm(tokens.mean(dim=1)))


class MetadataFusion(nn.Module):
    """[CLS, sat, location, hour, month, source, caption_source] through a post-LN transformer
    with a key padding mask (absent tokens are also zeroed); the CLS output goes to the heads.
    No positional or type embeddings, as in PSM: each token has its own encoder."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.sat_dim
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.location = mlp(3, cfg.meta_hidden, d)
        self.hour = mlp(2, cfg.meta_hidden, d)
        self.month = mlp(2, cfg.meta_hidden, d)
        self.source = nn.Embedding(len(cfg.sources), d)
        self.caption_source = nn.Embedding(len(cfg.caption_sources), d)
        self.blocks = nn.ModuleList(
            Block(d, cfg.fusion_heads, cfg.fusion_ff, cfg.dropout, norm_first=False)
            for _ in range(cfg.fusion_depth))

    def forward(self, sat: torch.Tensor, location: torch.Tensor, hour: torch.Tensor,
                month: torch.Tensor, source: torch.Tensor, caption_source: torch.Tensor,
                present: torch.Tensor) -> torch.Tensor:
        # Stacked in contract.META_TOKENS order, the order of the `present` columns.
        meta = torch.stack([self.location(location), self.hour(hour), self.month(month),
                            self.source(source), self.caption_source(caption_source)], dim=1)
        meta = meta * present.unsqueeze(-1)
        b = sat.shape[0]
        tokens = torch.cat([self.cls.expand(b, -1, -1), sat.unsqueeze(1), meta], dim=1)
        always = torch.ones(b, 2, dtype=torch.bool, device=sat.device)
        keep = torch.cat([always, present > 0.5], dim=1)
        for block in self.blocks:
            tokens = block(tokens, keep)
        return tokens[:, 0]


class HashedTextEncoder(nn.Module):
    """Hashed-word ids (model.text.HashedWordTokenizer) through a small transformer, mean-pooled
    over the real tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.text_vocab_size, cfg.text_width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(1, cfg.text_max_length, cfg.text_width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.text_width, cfg.text_heads, 4 * cfg.text_width, cfg.dropout, norm_first=True)
            for _ in range(cfg.text_depth))
        self.norm = nn.LayerNorm(cfg.text_width, eps=1e-6)
        self.out_dim = cfg.text_width

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.position[:, : input_ids.shape[1]]
        keep = attention_mask > 0
        for block in self.blocks:
            x = block(x, keep)
        x = self.norm(x)
        weights = keep.unsqueeze(-1).float()
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class MelCNN(nn.Module):
    """A small log-mel CNN trained from scratch: conv blocks, then mean over time and frequency."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm2d(1)]
        channels = [1, *cfg.audio_channels]
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(channels[-1], cfg.audio_width)
        self.out_dim = cfg.audio_width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.convs(features.unsqueeze(1))
        return self.proj(x.mean(dim=(2, 3)))


TEXT_TOWERS = {"hashed": HashedTextEncoder}
AUDIO_TOWERS = {"melcnn": MelCNN}


def build_tower(registry: dict, name: str, cfg: ModelConfig, kind: str) -> nn.Module:
    if name not in registry:
        raise ValueError(f"unknown {kind} tower {name!r}; available: {', '.join(registry)}")
    return registry[name](cfg)

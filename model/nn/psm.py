"""PSMModel: the four encoders of a bundle (image, fuse, text, audio) in one torch module."""
from __future__ import annotations

import torch
from torch import nn

from model.nn.config import ModelConfig
from model.nn.towers import (AUDIO_TOWERS, TEXT_TOWERS, ImageEncoder, MetadataFusion,
                             ProbabilisticHeads, build_tower)

Embedding = tuple[torch.Tensor, torch.Tensor]  # (mu, logvar)


class PSMModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg)
        self.fusion = MetadataFusion(cfg)
        self.sat_heads = ProbabilisticHeads(cfg.sat_dim, cfg.embed_dim, cfg.logvar_bias)
        self.text = build_tower(TEXT_TOWERS, cfg.text_tower, cfg, "text")
        self.text_heads = ProbabilisticHeads(self.text.out_dim, cfg.embed_dim, cfg.logvar_bias)
        self.audio = build_tower(AUDIO_TOWERS, cfg.audio_tower, cfg, "audio")
        self.audio_heads = ProbabilisticHeads(self.audio.out_dim, cfg.embed_dim, cfg.logvar_bias)

    def encode_image(self, image: torch.Tensor, gsd: torch.Tensor) -> torch.Tensor:
        """Pre-fusion sat feature (the "sat token")."""
        return self.image(image, gsd)

    def fuse(self, sat: torch.Tensor, meta: dict[str, torch.Tensor]) -> Embedding:
        return self.sat_heads(self.fusion(sat, **meta))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Embedding:
        return self.text_heads(self.text(input_ids, attention_mask))

    def encode_audio(self, features: torch.Tensor) -> Embedding:
        return self.audio_heads(self.audio(features))

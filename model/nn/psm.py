"""PSMModel: the four encoders of a bundle (image, fuse, text, audio) in one torch module.

`forward(batch)` embeds every side a batch holds, so DistributedDataParallel can wrap the whole
model. A batch may carry a frozen tower's output instead of its input (`text_backbone`,
`audio_backbone`, see model.frozen_cache): then only the trained heads run.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from model.config import ConfigError, ModelConfig
from model.data import Preprocessing
from model.nn.audio_towers import build_audio_tower
from model.nn.encoders import ImageEncoder, MetadataFusion, ProbabilisticHeads
from model.nn.text_towers import build_text_tower
from model.nn.weights import load_strict
from runtime.contract import META_TOKENS
from runtime.metadata import Vocabulary

Embedding = tuple[torch.Tensor, torch.Tensor]  # (mu, logvar)
META_KEYS = (*META_TOKENS, "present")
TOWERS = ("text", "audio")


SCRATCH_KINDS = ("hashed", "melcnn")  # text and audio towers a config sizes and training builds


def sized_parameters(cfg: ModelConfig) -> int:
    """Parameters of the parts a config sizes (image encoder, fusion, heads, towers trained from
    scratch), counted on torch's meta device: nothing is allocated however large they are."""
    with torch.device("meta"):
        parts: list[nn.Module] = [
            ImageEncoder(cfg.image, cfg.sat_dim, pretrained=False),
            MetadataFusion(cfg),
            ProbabilisticHeads(cfg.sat_dim, cfg.embed_dim, cfg.logvar_bias),
        ]
        if cfg.text.kind in SCRATCH_KINDS:
            parts.append(build_text_tower(cfg.text))
        if cfg.audio.kind in SCRATCH_KINDS:
            parts.append(build_audio_tower(cfg.audio))
    return sum(p.numel() for part in parts for p in part.parameters())


def memory_bytes(device: torch.device) -> int:
    """All the memory of `device`: a GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(cfg: ModelConfig, bytes_each: int, held: str, device: torch.device) -> None:
    """ConfigError, before any allocation, where the sized parts' parameters at `bytes_each`
    bytes (`held` says what they hold) need more than all of `device`'s memory: a config of
    width 100000 was a process the kernel killed, or minutes of swapping, not a sentence."""
    n = sized_parameters(cfg)
    need, room = n * bytes_each, memory_bytes(device)
    if need > room:
        raise ConfigError(
            f"the model as configured has {n:,} parameters of its own; {held} they need {need / 2**30:,.1f} GiB, "
            f"more than all {room / 2**30:,.1f} GiB of the {device.type.upper()}'s memory: make `model` smaller"
        )


class PSMModel(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained: bool = True):
        """pretrained=False skips loading the image encoder's SatMAE checkpoint (weights that a
        training checkpoint will overwrite). Frozen towers always load their own weights: they
        are not stored in training checkpoints."""
        check_fits(cfg, 4, "as float32 weights", torch.device("cpu"))
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg.image, cfg.sat_dim, pretrained=pretrained)
        self.fusion = MetadataFusion(cfg)
        self.sat_heads = ProbabilisticHeads(cfg.sat_dim, cfg.embed_dim, cfg.logvar_bias)
        self.text = build_text_tower(cfg.text)
        self.text_heads = ProbabilisticHeads(self.text.out_dim, cfg.embed_dim, cfg.logvar_bias)
        self.audio = build_audio_tower(cfg.audio)
        self.audio_heads = ProbabilisticHeads(self.audio.out_dim, cfg.embed_dim, cfg.logvar_bias)

    # ---- preprocessing that serving repeats without torch

    def tokenizer(self):
        """The runtime tokenizer of the text tower (runtime.text), as the bundle will hold it."""
        return self.text.tokenizer()

    @property
    def audio_front_end(self):
        """The runtime audio front end of the audio tower (runtime.audio), named in the manifest."""
        return self.cfg.audio_spec

    # ---- the four graphs

    def encode_image(self, image: torch.Tensor, gsd: torch.Tensor) -> torch.Tensor:
        """Pre-fusion sat feature (the "sat token")."""
        return self.image(image, gsd)

    def fuse(self, sat: torch.Tensor, meta: dict[str, torch.Tensor], normalise: bool = True) -> Embedding:
        return self.sat_heads(self.fusion(sat, **meta), normalise)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalise: bool = True) -> Embedding:
        return self.text_heads(self.text(input_ids, attention_mask), normalise)

    def encode_audio(self, features: torch.Tensor, normalise: bool = True) -> Embedding:
        return self.audio_heads(self.audio(features), normalise)

    # ---- training entry point

    def forward(self, batch: dict[str, torch.Tensor], normalise: bool = True) -> dict[str, Embedding]:
        """(mu, logvar) of every side present in the batch: "sat", "text", "audio"."""
        out = {}
        if "image" in batch:
            sat = self.encode_image(batch["image"], batch["gsd"])
            out["sat"] = self.fuse(sat, {k: batch[k] for k in META_KEYS}, normalise)
        if "text_backbone" in batch:
            out["text"] = self.text_heads(batch["text_backbone"], normalise)
        elif "input_ids" in batch:
            out["text"] = self.encode_text(batch["input_ids"], batch["attention_mask"], normalise)
        if "audio_backbone" in batch:
            out["audio"] = self.audio_heads(batch["audio_backbone"], normalise)
        elif "features" in batch:
            out["audio"] = self.encode_audio(batch["features"], normalise)
        return out

    # ---- weights that a training checkpoint holds

    def frozen_towers(self) -> list[str]:
        return [name for name in TOWERS if getattr(self, name).frozen]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor but those of frozen towers (which come from their packages): what a
        training checkpoint stores, and what the demo commits."""
        prefixes = tuple(f"{name}." for name in self.frozen_towers())
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load what trainable_state_dict saved; another architecture fails listing the keys."""
        prefixes = tuple(f"{name}." for name in self.frozen_towers())
        frozen = {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}
        load_strict(self, {**frozen, **state}, source)


def preprocessing(model: PSMModel) -> Preprocessing:
    """The sample-to-input preparation a model's bundle will ship."""
    cfg = model.cfg
    return Preprocessing(
        model.tokenizer(),
        model.audio_front_end,
        Vocabulary(cfg.sources),
        Vocabulary(cfg.caption_sources),
        cfg.image_size,
    )

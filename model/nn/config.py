"""Model configuration: one dataclass, read strictly from a config file's `model:` section, so
an unknown or missing key fails at start with its name."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from model.audio import AudioFeatureSpec


class ConfigError(ValueError):
    """A config section has an unknown, missing or ill-typed key."""


@dataclass
class ModelConfig:
    embed_dim: int = 64
    # Image encoder: ViT with the GSD positional embedding, mean-pooled, then a projector.
    image_size: int = 64
    patch_size: int = 8
    image_width: int = 96
    image_depth: int = 2
    image_heads: int = 4
    gsd_unit_m: float = 1000.0  # GSDPE positions are patch index x (GSD / this unit)
    # Fusion transformer over [CLS, sat, metadata tokens]; its width is the sat feature size.
    sat_dim: int = 96
    fusion_depth: int = 2
    fusion_heads: int = 4
    fusion_ff: int = 192
    meta_hidden: int = 64
    sources: list[str] = field(default_factory=lambda: ["demo"])
    caption_sources: list[str] = field(default_factory=lambda: ["template"])
    # Text tower (hashed words + transformer).
    text_tower: str = "hashed"
    text_vocab_size: int = 8192
    text_max_length: int = 32
    text_width: int = 96
    text_depth: int = 1
    text_heads: int = 4
    # Audio tower (log-mel CNN).
    audio_tower: str = "melcnn"
    audio_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    audio_width: int = 96
    audio: dict = field(default_factory=lambda: AudioFeatureSpec().to_json())
    dropout: float = 0.1
    logvar_bias: float = -4.0

    @property
    def audio_spec(self) -> AudioFeatureSpec:
        return AudioFeatureSpec.from_json(self.audio)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_section(cls: type, section: dict | None, name: str):
    """Build dataclass `cls` from a config section: every key must be a field, and fields
    without a default must be given."""
    section = dict(section or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in `{name}`: {', '.join(unknown)}; known: {', '.join(fields)}")
    missing = [k for k, f in fields.items() if k not in section and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key(s) in `{name}`: {', '.join(missing)}")
    return cls(**section)

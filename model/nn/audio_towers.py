"""Audio towers: a backbone that turns the audio front end's features (runtime.audio, named in
the bundle manifest) into one vector per clip. The PSM model puts its trained probabilistic
heads on top; `trainable: false` freezes the backbone (see model.nn.layers.Tower)."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.config import AisfxAudioConfig, AudioConfig, ClapAudioConfig, MelCNNAudioConfig
from model.nn.layers import Tower
from model.nn.text_towers import load_clap
from model.nn.weights import CheckpointError, load_strict


class MelCNN(Tower):
    """A small log-mel CNN trained from scratch: per-clip standardisation, conv blocks with
    GroupNorm (batch-independent, so DDP and a single process compute the same), then mean over
    time and frequency. Input (B, n_mels, frames)."""

    def __init__(self, cfg: MelCNNAudioConfig):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [1, *cfg.channels]
        for cin, cout in itertools.pairwise(channels):
            # No conv bias: GroupNorm removes it, and Adam would turn its round-off gradient into steps.
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.GroupNorm(min(8, cout), cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(channels[-1], cfg.width)
        self.out_dim = cfg.width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mean = features.mean(dim=(1, 2), keepdim=True)
        std = features.std(dim=(1, 2), keepdim=True)
        x = self.convs(((features - mean) / (std + 1e-5)).unsqueeze(1))
        return self.proj(x.mean(dim=(2, 3)))


class _ConvBlock(nn.Module):
    """aisfx's ConvBlock (from the DCASE cross-task baseline): two 3x3 convs with BatchNorm."""

    def __init__(self, cin: int, cout: int, pool: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.max_pool2d(x, self.pool) if self.pool > 1 else x


class AisfxEmbeddingNet(nn.Module):
    """aisfx's EmbeddingNet, with its parameter names: blocks of (time 100, mel 96) -> 512-d
    (mean over frequency, max over time)."""

    def __init__(self):
        super().__init__()
        self.conv_block1 = _ConvBlock(1, 64, 2)
        self.conv_block2 = _ConvBlock(64, 128, 2)
        self.conv_block3 = _ConvBlock(128, 256, 2)
        self.conv_block4 = _ConvBlock(256, 512, 1)

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        x = blocks.unsqueeze(1)
        for block in (self.conv_block1, self.conv_block2, self.conv_block3, self.conv_block4):
            x = block(x)
        return x.mean(dim=3).amax(dim=2)


AISFX_BLOCK = 100  # frames per embedding block (~2.3 s), hop half a block, as aisfx's default


def aisfx_checkpoint() -> Path:
    """checkpoint.pth inside the aisfx package (found without importing it: its __init__
    needs librosa 0.9)."""
    spec = importlib.util.find_spec("aisfx")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the aisfx audio tower needs the aisfx package (pip install --no-deps aisfx) or model.audio.checkpoint"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "checkpoint.pth"


class AisfxTower(Tower):
    """aisfx's CNN over (B, 96, frames) aisfx-mel features: overlapping blocks of 100 frames
    (hop 50), one 512-d embedding each, averaged over the clip (aisfx's clip embedding)."""

    def __init__(self, cfg: AisfxAudioConfig):
        super().__init__()
        self.net = AisfxEmbeddingNet()
        self.out_dim = 512
        path = Path(cfg.checkpoint) if cfg.checkpoint else aisfx_checkpoint()
        loaded = torch.load(path, map_location="cpu", weights_only=False)  # (weights, ds_dict)
        weights = loaded[0] if isinstance(loaded, (tuple, list)) else loaded
        if not isinstance(weights, dict):
            raise CheckpointError(f"{path} holds no aisfx weights")
        # The per-dataset classifier heads (fc.*) are not part of the embedding.
        net_state = {k.removeprefix("embedding_net."): v for k, v in weights.items() if k.startswith("embedding_net.")}
        load_strict(self.net, net_state, f"aisfx checkpoint {path}")
        if not cfg.trainable:
            self.freeze()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2)  # (B, frames, mels)
        b, frames, mels = x.shape
        half = AISFX_BLOCK // 2
        n_even = frames // AISFX_BLOCK
        n_odd = (frames - half) // AISFX_BLOCK
        even = x[:, : n_even * AISFX_BLOCK].reshape(b, n_even, AISFX_BLOCK, mels)
        odd = x[:, half : half + n_odd * AISFX_BLOCK].reshape(b, n_odd, AISFX_BLOCK, mels)
        blocks = torch.cat([even, odd], dim=1)
        emb = self.net(blocks.reshape(-1, AISFX_BLOCK, mels))
        return emb.reshape(b, -1, emb.shape[-1]).mean(dim=1)


class ClapAudioTower(Tower):
    """CLAP's HTS-AT audio encoder and projection over (B, 4, frames, 64) clap-fusion features.
    `is_longer` is always true, so training and serving take the same fusion path (PSM sets it
    true in training but takes the processor's value at mapping time, docs/method.md, pitfall 6)."""

    onnx_exporter = "torchscript"  # torch.export cannot trace HTS-AT's data-dependent fusion

    def __init__(self, cfg: ClapAudioConfig):
        super().__init__()
        clap = load_clap(cfg.path)
        self.audio_model = clap.audio_model
        self.audio_projection = clap.audio_projection
        self.out_dim = clap.config.projection_dim
        if not cfg.trainable:
            self.freeze()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        longer = torch.ones(features.shape[0], 1, dtype=torch.bool, device=features.device)
        pooled = self.audio_model(input_features=features, is_longer=longer).pooler_output
        return self.audio_projection(pooled)


AUDIO_TOWERS: dict[str, type[Tower]] = {"melcnn": MelCNN, "aisfx": AisfxTower, "clap": ClapAudioTower}


def build_audio_tower(cfg: AudioConfig) -> Tower:
    return AUDIO_TOWERS[cfg.kind](cfg)

"""Network pieces: metadata dropout, the fusion's key padding mask, the probabilistic heads,
the GSD input of the image encoder, and frozen towers that stay frozen."""

import pytest
import torch

from model.config import ModelConfig
from model.distributed import Dist
from model.nn.encoders import ImageEncoder, MetadataFusion, ProbabilisticHeads
from model.train import drop_metadata

CFG = ModelConfig.from_dict(
    {
        "embed_dim": 8,
        "sources": ["a", "b"],
        "caption_sources": ["c"],
        "image": {"size": 16, "patch": 8, "width": 16, "depth": 1, "heads": 2},
        "fusion": {"width": 16, "depth": 2, "heads": 2, "ff": 32, "dropout": 0.0},
    }
)


def test_metadata_dropout_is_independent_per_token_and_sample():
    present = torch.ones(4000, 5)
    present[:, 1] = 0  # an absent token stays absent
    kept = drop_metadata(present, 0.5, torch.Generator().manual_seed(0))
    rates = 1 - kept[:, [0, 2, 3, 4]].mean(0)
    assert torch.all((rates > 0.46) & (rates < 0.54))
    assert kept[:, 1].sum() == 0
    # Independent draws: no fixed quota per batch, tokens uncorrelated across samples.
    corr = torch.corrcoef(kept[:, [0, 2, 3, 4]].T)
    assert (corr - torch.eye(4)).abs().max() < 0.06
    assert torch.equal(drop_metadata(present, 0.0, torch.Generator()), present)
    # Two ranks drop, for their halves, exactly what one process drops for the global batch.
    whole = drop_metadata(torch.ones(8, 5), 0.5, torch.Generator().manual_seed(3))
    halves = [drop_metadata(torch.ones(4, 5), 0.5, torch.Generator().manual_seed(3), Dist(rank, 2)) for rank in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)


def test_fusion_ignores_absent_tokens_whatever_their_values():
    torch.manual_seed(0)
    fusion = MetadataFusion(CFG).eval()
    sat = torch.randn(3, 16)
    meta = {
        "location": torch.randn(3, 3),
        "hour": torch.randn(3, 2),
        "month": torch.randn(3, 2),
        "source": torch.tensor([0, 1, 0]),
        "caption_source": torch.zeros(3, dtype=torch.long),
        "present": torch.tensor([[1, 0, 1, 0, 1]] * 3, dtype=torch.float32),
    }
    other = {**meta, "hour": torch.randn(3, 2) * 5, "source": torch.tensor([1, 0, 1])}
    with torch.no_grad():
        torch.testing.assert_close(fusion(sat, **meta), fusion(sat, **other))
        changed = fusion(sat, **{**meta, "location": torch.randn(3, 3)})  # a present token matters
    assert not torch.allclose(changed, fusion(sat, **meta))


def test_heads_start_with_small_variances_and_unit_means():
    heads = ProbabilisticHeads(16, 8, -4.0)
    assert torch.all(heads.logvar[0].bias == -4.0) and torch.all(heads.logvar[2].bias == -4.0)
    _, logvar = heads(torch.zeros(5, 16))
    assert (logvar + 4.0).abs().max() < 0.01  # gelu(-4) ~ -1e-4: sigma^2 starts at e^-4 ~ 0.018
    raw, _ = heads(torch.randn(5, 16), normalise=False)
    unit, _ = heads(torch.randn(5, 16))
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(5))
    assert not torch.allclose(raw.norm(dim=1), torch.ones(5))


def test_image_encoder_takes_the_ground_sample_distance():
    torch.manual_seed(0)
    encoder = ImageEncoder(CFG.image, CFG.sat_dim).eval()
    image = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    with torch.no_grad():
        near, far = encoder(image, torch.tensor([1000.0, 1000.0])), encoder(image, torch.tensor([1000.0, 30000.0]))
    torch.testing.assert_close(near[0], far[0])
    assert not torch.allclose(near[1], far[1])


def test_frozen_towers_stay_in_eval_mode_and_take_no_gradient():
    from model.config import MelCNNAudioConfig
    from model.nn.audio_towers import MelCNN

    tower = MelCNN(MelCNNAudioConfig(channels=[4], width=8))
    tower.freeze()
    tower.train()
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    with pytest.raises(ValueError, match="multiple of"):
        ImageEncoder(ModelConfig.from_dict({"image": {"size": 20, "patch": 8}}).image, 16)

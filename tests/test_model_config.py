"""Configs: the shipped ones parse, `paper` has the paper's sizes, the GSD positional embedding is
PSM's, and a SatMAE checkpoint loads with a strict key report."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from model.config import ConfigError, ModelConfig
from model.nn.encoders import ImageEncoder, MetadataFusion
from model.nn.layers import gsd_positional_embedding
from model.nn.weights import CheckpointError, load_satmae
from model.train import RunConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["tiny", "paper", "demo"])
def test_shipped_run_configs_parse(name):
    RunConfig.from_dict(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text(encoding="utf-8")))


def test_paper_config_has_the_paper_sizes():
    cfg = RunConfig.from_dict(yaml.safe_load((CONFIGS / "paper.yaml").read_text(encoding="utf-8")))
    m, t = cfg.model, cfg.train
    assert (m.image.size, m.image.patch, m.image.width, m.image.depth, m.image.heads) == (224, 16, 768, 12, 12)
    assert (m.fusion.width, m.fusion.depth, m.fusion.heads, m.fusion.ff) == (512, 3, 8, 2048)
    assert m.embed_dim == 512 and m.logvar_bias == -4.0 and m.image.gsd_unit_m == 1.0
    assert m.text.kind == m.audio.kind == "clap" and m.sources == ["yfcc", "iNat", "aporee", "freesound"]
    assert (t.batch_size, t.lr, t.weight_decay, tuple(t.betas), t.eps) == (128, 5e-5, 0.2, (0.9, 0.98), 1e-6)
    assert t.cosine_cycle_steps == 5000 and t.loss.pseudo_positive_alpha == 0.1 and t.loss.vib_beta == 1e-4
    assert t.loss.weights == {"sat_audio": 0.5, "sat_text": 0.5, "audio_text": 0.5}
    encoder = ImageEncoder(m.image, m.sat_dim)
    backbone = sum(p.numel() for n, p in encoder.named_parameters() if not n.startswith(("projector", "fc_norm")))
    assert 85_000_000 < backbone < 86_500_000  # ViT-B/16 without class token and position table
    with torch.no_grad():
        sat = encoder(torch.zeros(1, 224, 224, 3, dtype=torch.uint8), torch.tensor([10.0]))
    assert sat.shape == (1, 512)
    fusion = MetadataFusion(m)
    assert len(fusion.blocks) == 3 and fusion.blocks[0].mlp.fc1.out_features == 2048


def test_gsd_positional_embedding_is_psm_gsdpe():
    r = torch.tensor([10.0, 30.0])
    emb = gsd_positional_embedding(14, 768, r)
    assert emb.shape == (2, 196, 768)
    # Token t = i * 14 + j sits at x = j r (first 384 channels), y = i r (last 384): sines first.
    i, j, k = 3, 5, 7
    omega = 10000.0 ** (-k / 192)
    t = i * 14 + j
    assert float(emb[1, t, k]) == pytest.approx(math.sin(j * 30.0 * omega), abs=1e-4)
    assert float(emb[1, t, 192 + k]) == pytest.approx(math.cos(j * 30.0 * omega), abs=1e-4)
    assert float(emb[1, t, 384 + k]) == pytest.approx(math.sin(i * 30.0 * omega), abs=1e-4)
    assert not torch.allclose(emb[0], emb[1])  # each sample's own resolution


def satmae_state(encoder: ImageEncoder) -> dict:
    """A SatMAE (MAE pretrain) checkpoint's layout: the ViT's timm keys plus the parts PSM drops."""
    state = {k: v.clone() + 1.0 for k, v in encoder.state_dict().items() if not k.startswith(("projector", "fc_norm"))}
    width = encoder.width
    state.update(
        {
            "cls_token": torch.zeros(1, 1, width),
            "pos_embed": torch.zeros(1, 17, width),
            "norm.weight": torch.ones(width),
            "norm.bias": torch.zeros(width),
            "mask_token": torch.zeros(1, 1, width),
            "decoder_embed.weight": torch.zeros(8, width),
        }
    )
    return {"model": state, "epoch": 199}


def test_satmae_checkpoint_loads_with_a_strict_report(tmp_path):
    cfg = ModelConfig.from_dict({"image": {"size": 32, "patch": 8, "width": 32, "depth": 2, "heads": 2}}).image
    encoder = ImageEncoder(cfg, 32)
    path = tmp_path / "pretrain-vit.pth"
    torch.save(satmae_state(encoder), path)
    fresh = ImageEncoder(cfg, 32)
    report = load_satmae(fresh, path)
    assert "blocks.1.attn.qkv.weight" in report["loaded"] and "patch_embed.proj.weight" in report["loaded"]
    assert {"cls_token", "pos_embed", "norm.weight", "mask_token", "decoder_embed.weight"} <= set(report["ignored"])
    assert all(k.startswith(("projector.", "fc_norm.")) for k in report["new"]) and report["new"]
    torch.testing.assert_close(fresh.blocks[1].attn.qkv.weight, encoder.blocks[1].attn.qkv.weight + 1.0)
    # Built from a config that names the checkpoint, the encoder loads it itself.
    named = ImageEncoder(
        ModelConfig.from_dict(
            {"image": {"size": 32, "patch": 8, "width": 32, "depth": 2, "heads": 2, "checkpoint": str(path)}}
        ).image,
        32,
    )
    assert named.satmae_report["loaded"] == report["loaded"]


def test_satmae_checkpoint_of_another_architecture_lists_the_keys(tmp_path):
    cfg = ModelConfig.from_dict({"image": {"size": 32, "patch": 8, "width": 32, "depth": 2, "heads": 2}}).image
    state = satmae_state(ImageEncoder(cfg, 32))
    del state["model"]["blocks.1.mlp.fc2.weight"]
    state["model"]["blocks.0.head_dist.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "a.pth")
    with pytest.raises(CheckpointError) as err:
        load_satmae(ImageEncoder(cfg, 32), tmp_path / "a.pth")
    assert "missing: blocks.1.mlp.fc2.weight" in str(err.value) and "blocks.0.head_dist.weight" in str(err.value)
    wider = ModelConfig.from_dict({"image": {"size": 32, "patch": 8, "width": 64, "depth": 2, "heads": 2}}).image
    torch.save(satmae_state(ImageEncoder(wider, 32)), tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"shape: .*blocks\.0\.attn\.qkv\.weight \(192, 64\) vs \(96, 32\)"):
        load_satmae(ImageEncoder(cfg, 32), tmp_path / "b.pth")


def test_tower_keys_belong_to_their_kind():
    with pytest.raises(ConfigError, match=r"model\.audio\.vocab_size"):
        ModelConfig.from_dict({"audio": {"kind": "melcnn", "vocab_size": 3}})
    with pytest.raises(ConfigError, match=r"missing key `model\.audio\.path`"):
        ModelConfig.from_dict({"audio": {"kind": "clap"}})
    cfg = ModelConfig.from_dict({"text": {"kind": "minilm"}, "audio": {"kind": "aisfx", "duration_s": 5.0}})
    assert cfg.text.trainable is False and cfg.audio_spec.kind == "aisfx-mel" and cfg.audio_spec.duration_s == 5.0


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"model": {"text": {"kind": "bert"}}}, "`model.text.kind` must be one of hashed, minilm, clap; got 'bert'"),
        ({"model": {"audio": {"kind": "aisfx", "channels": [4]}}}, "unknown key `model.audio.channels`"),
        ({"train": {"loss": {"kind": "triplet"}}}, "`train.loss.kind` should be 'pcmepp' or 'infonce'"),
        ({"train": {"loss": {"weights": {"sat_sound": 1.0}}}}, "`train.loss.weights.sat_sound`"),
        ({"train": {"select_metric": "R@1"}}, "`train.select_metric` should be 'I2S_R@10%' or 'S2I_R@10%'"),
        ({"train": {"lr": "fast"}}, "`train.lr` should be a valid number, not 'fast'"),
        ({"train": {"steps": 3.5}}, "`train.steps` should be a valid integer, not 3.5"),
        ({"model": []}, "`model` must be a mapping of keys, not list"),
        ({"trian": {}}, "unknown key `trian`; a config has: model, train, data"),
    ],
)
def test_config_errors_name_the_key_and_what_it_takes(sections, message):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"data": {"kind": "synthetic"}, **sections})
    assert message in str(err.value)


def test_a_written_config_reads_back_equal():
    cfg = RunConfig.from_dict(yaml.safe_load((CONFIGS / "paper.yaml").read_text(encoding="utf-8")))
    again = RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.train.betas == (0.9, 0.98) and isinstance(again.train.lr, float)


def test_paper_config_trains_as_the_authors_code():
    """configs/paper.yaml: no gradient clipping, no early stopping, RandomResizedCrop 0.2-1, a
    random mel crop per training sample (docs/training.md, "configs/paper.yaml and the paper")."""
    cfg = RunConfig.from_dict(yaml.safe_load((CONFIGS / "paper.yaml").read_text(encoding="utf-8")))
    assert cfg.train.grad_clip is None and cfg.train.patience is None
    assert cfg.train.image_crop_scale == (0.2, 1.0) and cfg.train.image_flips
    assert cfg.data["mel_index"] == "random"


@pytest.mark.parametrize(("written", "read"), [("3e-3", 0.003), ("1E-4", 1e-4), ("+2.5e-3", 0.0025), ("0.003", 0.003)])
def test_a_learning_rate_written_as_the_docs_write_it_is_a_number(tmp_path, written, read):
    """YAML 1.1 (PyYAML) reads 3e-3, without a dot, as the text '3e-3', which `train.lr` refused."""
    from model.commands import _run_config

    text = (CONFIGS / "tiny.yaml").read_text(encoding="utf-8")
    assert "  lr: 0.003\n" in text
    path = tmp_path / "tiny.yaml"
    path.write_text(text.replace("  lr: 0.003\n", f"  lr: {written}\n"), encoding="utf-8")
    assert _run_config(path).train.lr == read


def test_an_exponent_is_still_no_count(tmp_path):
    """Only the spelling is taken: a float for an integer key is refused as before."""
    from model.commands import _run_config

    text = (CONFIGS / "tiny.yaml").read_text(encoding="utf-8")
    assert "  steps: 200\n" in text
    path = tmp_path / "tiny.yaml"
    path.write_text(text.replace("  steps: 200\n", "  steps: 1e3\n"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"`train.steps` should be a valid integer, not 1000.0"):
        _run_config(path)


@pytest.mark.parametrize(
    ("pasted", "key", "lines"),
    [
        ("  steps: 200\n", "train.steps", "4 and 5"),
        ("train:\n", "train", "3 and 4"),
        ("  lr: 0.5\n", "train.lr", "4 and 6"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(capsys, tmp_path, pasted, key, lines):
    """PyYAML kept the last of two `steps:` silently: a pasted line trained another run than the one read."""
    from cli.main import main

    text = "model:\n  embed_dim: 32\ntrain:\n  steps: 200\n  lr: 0.003\n"
    path = tmp_path / "twice.yaml"
    path.write_text(text.replace("train:\n  steps: 200\n", f"train:\n{pasted}  steps: 200\n"), encoding="utf-8")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"soundscape train: config file {path}: `{key}` is given twice (lines {lines}); keep one"
    assert not (tmp_path / "run").exists()

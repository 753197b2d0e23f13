"""Training audit leftovers: a frozen tower's cache follows its weights (an upgraded package is
never read through the old package's outputs)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.batches import SkipLog
from model.config import ModelConfig
from model.data import reader
from model.frozen_cache import fingerprint, frozen_cache
from model.nn import audio_towers, text_towers
from model.nn.psm import PSMModel, preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SYNTHETIC = {"kind": "synthetic", "samples": {"train": 6, "val": 2, "test": 2}, "duration_s": 0.5}
SMALL = {
    "embed_dim": 16,
    "image": {"size": 16, "patch": 8, "width": 32, "depth": 1, "heads": 2},
    "fusion": {"width": 32, "depth": 1, "heads": 2, "ff": 64},
    "text": {"kind": "minilm", "max_length": 32},
    "audio": {"kind": "melcnn", "channels": [8], "width": 32, "features": {"duration_s": 0.5}},
}


def small_model(**towers) -> PSMModel:
    torch.manual_seed(0)
    return PSMModel(ModelConfig.from_dict({**SMALL, **towers}))


def upgraded_minilm(tmp_path) -> Path:
    """A copy of the MiniLM package's model folder with other weights, as a new release would ship."""
    folder = tmp_path / "minilm-2"
    shutil.copytree(text_towers.minilm_package_dir(), folder)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, folder / "model.safetensors")
    return folder


def cached_text(model: PSMModel, cache_dir) -> np.ndarray:
    source = reader("synthetic")({k: v for k, v in SYNTHETIC.items() if k != "kind"}, model.cfg.image_size).train
    cache = frozen_cache(
        model,
        "train",
        source,
        preprocessing(model),
        cache_dir=cache_dir,
        data=SYNTHETIC,
        batch_size=4,
        workers=0,
        skips=SkipLog(),
        progress=False,
    )
    return cache.outputs["text"]


def test_an_upgraded_text_tower_package_is_not_read_through_the_old_packages_cache(monkeypatch, tmp_path):
    """The same config (`path` left to the package) over another release's weights: the cache was
    named by the config alone, so the old release's outputs were read back, silently."""
    cache_dir = tmp_path / "cache"
    old = cached_text(small_model(), cache_dir)
    folder = upgraded_minilm(tmp_path)
    monkeypatch.setattr(text_towers, "minilm_package_dir", lambda: folder)
    upgraded = small_model()
    new = cached_text(upgraded, cache_dir)
    assert not np.allclose(new, old, atol=1e-3)
    source = reader("synthetic")({k: v for k, v in SYNTHETIC.items() if k != "kind"}, 16).train
    captions = [source[i].caption for i in range(len(source))]
    ids, mask = upgraded.tokenizer().encode(captions)
    with torch.no_grad():
        want = upgraded.text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(new, want, atol=1e-5)
    files = sorted(cache_dir.iterdir())
    assert len(files) == 2
    np.testing.assert_array_equal(cached_text(upgraded, cache_dir), new)  # and its own cache is found again
    assert sorted(cache_dir.iterdir()) == files


def test_the_cache_name_follows_the_text_towers_tokenizer_file(monkeypatch, tmp_path):
    folder = tmp_path / "minilm-tokenizer"
    shutil.copytree(text_towers.minilm_package_dir(), folder)
    before = fingerprint(small_model(text={"kind": "minilm", "path": str(folder)}), "text", "train", SYNTHETIC, "c")
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[UNK]"', '"[UNKNOWN]"'))
    after = fingerprint(small_model(text={"kind": "minilm", "path": str(folder)}), "text", "train", SYNTHETIC, "c")
    assert after != before


@pytest.mark.usefixtures("aisfx_installed")
def test_the_cache_name_follows_the_aisfx_packages_weights(monkeypatch, tmp_path):
    aisfx = {"kind": "aisfx", "duration_s": 1.0}
    before = fingerprint(small_model(audio=aisfx), "audio", "train", SYNTHETIC, "c")
    assert fingerprint(small_model(audio=aisfx), "audio", "train", SYNTHETIC, "c") == before
    weights, datasets = torch.load(audio_towers.aisfx_checkpoint(), map_location="cpu", weights_only=False)
    name = next(k for k in weights if k.startswith("embedding_net.") and weights[k].is_floating_point())
    weights = {**weights, name: weights[name] + 0.01}
    torch.save((weights, datasets), tmp_path / "checkpoint.pth")
    monkeypatch.setattr(audio_towers, "aisfx_checkpoint", lambda: tmp_path / "checkpoint.pth")
    assert fingerprint(small_model(audio=aisfx), "audio", "train", SYNTHETIC, "c") != before

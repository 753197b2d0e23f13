"""Every number a config sets is bounded before torch or numpy sees it: a slip of digits in a
size, a float past float32, a front end the audio tower cannot pool, or a model larger than the
machine is one sentence naming its key (exit 2), never an overflow, a loop building 10**20
blocks, or a process the kernel kills. Found by setting each key of configs/tiny.yaml to
hostile values: 64 of them ended in a traceback or ran past a minute."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import typing

import pytest
import yaml

import model.readers
from model.config import ConfigError, ModelConfig, Section
from model.nn.psm import sized_parameters
from model.train import RunConfig
from tests.test_model_train import ROOT

HUGE = 10**20


@pytest.mark.parametrize(
    "sections, said",
    [
        ({"model": {"embed_dim": HUGE}}, "`model.embed_dim` should be less than or equal to 16384"),
        ({"model": {"image": {"width": HUGE}}}, "`model.image.width` should be less than or equal to 16384"),
        ({"model": {"image": {"depth": HUGE}}}, "`model.image.depth` should be less than or equal to 128"),
        ({"model": {"fusion": {"ff": HUGE}}}, "`model.fusion.ff` should be less than or equal to 16384"),
        ({"model": {"text": {"kind": "hashed", "vocab_size": HUGE}}}, "`model.text.vocab_size` should be less than"),
        ({"model": {"text": {"kind": "minilm", "max_length": 513}}}, "`model.text.max_length` should be less than"),
        ({"model": {"audio": {"kind": "melcnn", "features": {"n_fft": 0.5}}}}, "`model.audio.features.n_fft`"),
        (
            {"model": {"audio": {"kind": "melcnn", "features": {"sample_rate": None}}}},
            "`model.audio.features.sample_rate`",
        ),
        (
            {"model": {"audio": {"kind": "melcnn", "features": {"hop_length": HUGE}}}},
            "`model.audio.features.hop_length`",
        ),
        (
            {"model": {"audio": {"kind": "melcnn", "features": {"duration_s": 1e300}}}},
            "`model.audio.features.duration_s`",
        ),
        ({"model": {"audio": {"kind": "melcnn", "features": {"fmax": 9000.0}}}}, "fmax <= sample_rate / 2 (Nyquist)"),
        (
            {"model": {"audio": {"kind": "melcnn", "features": {"n_mels": 300}}}},
            "more than the 257 bins of an n_fft of 512",
        ),
        (
            {"model": {"audio": {"kind": "melcnn", "features": {"unknown": 1}}}},
            "unknown key `model.audio.features.unknown`",
        ),
        (
            {"model": {"audio": {"kind": "melcnn", "channels": [8] * 7, "features": {"n_mels": 64}}}},
            "`model.audio`: 7 channel blocks halve the features 7 times: they need at least 128 mels and frames",
        ),
        ({"train": {"lr": 1e300}}, "`train.lr`: 1e+300 is past what float32 holds"),
        ({"train": {"seed": -1}}, "`train.seed` should be greater than or equal to 0"),
        ({"train": {"threads": HUGE}}, "`train.threads` should be less than or equal to 4096"),
        ({"train": {"steps": HUGE}}, f"`train.steps`: {HUGE} is past what a 64-bit integer holds"),
        ({"train": {"loss": {"init_scale": 1e300}}}, "`train.loss.init_scale`: 1e+300 is past what float32 holds"),
    ],
)
def test_a_number_past_its_key_is_one_sentence_naming_it(sections, said):
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_dict({"data": {"kind": "synthetic"}, **sections})
    assert said in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def _sections() -> list[type[Section]]:
    """Every config section: the model's, the training's and each reader's."""
    for found in pkgutil.iter_modules(model.readers.__path__):
        importlib.import_module(f"model.readers.{found.name}")
    todo, seen = [Section], []
    while todo:
        for sub in todo.pop().__subclasses__():
            seen.append(sub)
            todo.append(sub)
    return seen


def test_every_size_that_allocates_has_an_upper_end():
    """The keys that size a tensor, a batch or a process pool are bounded by their own key, not
    only by what a 64-bit integer holds."""
    sizes = {"width", "depth", "heads", "ff", "meta_hidden", "vocab_size", "max_length", "embed_dim", "size", "patch"}
    sizes |= {"batch_size", "eval_batch_size", "workers", "threads", "n_fft", "n_mels", "classes"}
    unbounded = []
    for section in _sections():
        for name, field in section.model_fields.items():
            inner = [m for a in typing.get_args(field.annotation) for m in getattr(a, "__metadata__", ())]
            metadata = [*field.metadata, *inner, *(m for i in inner for m in getattr(i, "metadata", ()))]
            if name in sizes and not any(getattr(m, "le", None) is not None for m in metadata):
                unbounded.append(f"{section.__name__}.{name}")
    assert not unbounded, unbounded


@pytest.mark.parametrize("name", ["tiny", "demo", "paper", "finetune-demo"])
def test_the_shipped_configs_stay_within_the_bounds(name):
    RunConfig.from_dict(yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text(encoding="utf-8")))


def test_sized_parameters_counts_without_allocating():
    """The paper's image encoder is ViT-B/16: its count is read from the meta device."""
    paper = RunConfig.from_dict(yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text(encoding="utf-8")))
    assert 86_000_000 < sized_parameters(paper.model) < 100_000_000
    huge = ModelConfig.from_dict({"image": {"width": 16384, "depth": 128, "heads": 16}})
    assert sized_parameters(huge) > 400_000_000_000  # 1.6 TB of float32: counted, not built


def test_train_refuses_a_model_larger_than_the_machine_before_reading_data(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text(encoding="utf-8"))
    cfg["model"]["image"].update(width=16384, depth=128, heads=16)
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--config", str(path), "--out", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "parameters of its own" in done.stderr and "make `model` smaller" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "data, said",
    [
        ({"samples": {"train": -1, "val": 8, "test": 8}}, "`data.samples.train` should be greater than or equal to 0"),
        ({"samples": {"train": HUGE, "val": 8, "test": 8}}, "`data.samples.train` should be less than"),
        ({"classes": 0}, "`data.classes` should be greater than or equal to 1"),
        ({"kind": ["synthetic"]}, "`data.kind` must be one of"),
    ],
)
def test_a_data_section_out_of_range_is_one_sentence(data, said, tmp_path, capsys):
    from cli.main import main

    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text(encoding="utf-8"))
    cfg["data"].update(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert said in capsys.readouterr().err

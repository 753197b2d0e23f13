"""Trained parts (`soundscape export --trained-parts`, weights/demo): only the trained tensors are
saved, a bundle assembled from them embeds like the model, and a changed file is refused."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cli.main import main as soundscape
from model.export import load_trained_parts, save_trained_parts
from runtime.bundle import Bundle
from runtime.contract import RECORD_FILE, TRAINED_PARTS_FILE
from tests.test_model_towers import TEXTS


@pytest.fixture(scope="module")
def parts(frozen_text_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    save_trained_parts(
        frozen_text_model,
        folder,
        calibration=(6.0, 1.5),
        record={"name": "parts-test", "training": {"step": 7}, "metrics": {"test": {"x": 1}}},
    )
    return folder


def test_only_trained_tensors_are_saved_and_load_back(frozen_text_model, parts):
    saved = load_file(str(parts / TRAINED_PARTS_FILE))
    assert saved and not any(k.startswith("text.") for k in saved)  # MiniLM comes from its package
    assert any(k.startswith("text_heads.") for k in saved)
    model, record = load_trained_parts(parts)
    assert record["calibration"] == {"a": 6.0, "b": 1.5} and record["training"] == {"step": 7}
    for key, value in frozen_text_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.fixture(scope="module")
def exported(parts, tmp_path_factory):
    """The bundle `soundscape export --weights` assembles from the parts and the packaged MiniLM."""
    out = tmp_path_factory.mktemp("exported") / "bundle"
    assert soundscape(["export", "--weights", str(parts), "--out", str(out)]) == 0
    return Bundle(out)


def test_bundle_from_weights_records_what_the_parts_say(exported):
    assert exported.manifest["name"] == "parts-test" and exported.manifest["calibration"] == {"a": 6.0, "b": 1.5}
    assert exported.manifest["metrics"] == {"test": {"x": 1}}
    assert exported.manifest["text"]["tokenizer_kind"] == "huggingface"


def test_bundle_from_weights_tokenises_and_embeds_like_the_model(frozen_text_model, exported):
    model = frozen_text_model.eval()
    ids, mask = exported.tokenizer.encode(TEXTS)
    want_ids, _ = model.tokenizer().encode(TEXTS)
    np.testing.assert_array_equal(ids, want_ids)
    assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102  # [CLS] ... [SEP], lower-cased WordPiece
    mu, _ = exported.embed_texts(TEXTS)
    with torch.no_grad():
        expected, _ = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
        # The frozen backbone's cached output + heads (training) equals the served text graph.
        cached = model.text(torch.from_numpy(ids), torch.from_numpy(mask))
        from_cache = model.text_heads(cached)[0]
    np.testing.assert_allclose(mu, expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(mu, from_cache.numpy(), atol=1e-4)


def test_changed_weights_are_refused(parts, tmp_path, capsys):
    copy = tmp_path / "parts"
    copy.mkdir()
    for name in (RECORD_FILE, TRAINED_PARTS_FILE):
        (copy / name).write_bytes((parts / name).read_bytes())
    with open(copy / TRAINED_PARTS_FILE, "ab") as f:
        f.write(b"\0")
    assert soundscape(["export", "--weights", str(copy), "--out", str(tmp_path / "b")]) == 2
    assert "is not the file" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    (copy / RECORD_FILE).write_text(json.dumps({"weights": {}}), encoding="utf-8")
    assert soundscape(["export", "--weights", str(copy), "--out", str(tmp_path / "b")]) == 2
    assert "no readable record.json" in capsys.readouterr().err


def test_export_takes_exactly_one_source(parts, tmp_path, capsys):
    assert (
        soundscape(["export", "--weights", str(parts), "--config", "configs/tiny.yaml", "--out", str(tmp_path / "b")])
        == 2
    )
    assert "give one of" in capsys.readouterr().err
    assert soundscape(["export", "--weights", str(parts), "--trained-parts", "--out", str(tmp_path / "c")]) == 2
    assert "already are trained parts" in capsys.readouterr().err


def test_demo_without_its_weights_says_so(tmp_path, capsys):
    assert (
        soundscape(
            ["demo", "--build-only", "--data-dir", str(tmp_path / "demo"), "--weights", str(tmp_path / "missing")]
        )
        == 2
    )
    assert "the demo's trained weights are missing" in capsys.readouterr().err

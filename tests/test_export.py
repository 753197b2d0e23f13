"""Each ONNX graph, run by onnxruntime, matches torch; the bundle verifies its content."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model.export import STACK_TRACE, example_inputs
from model.nn.psm import PSMModel
from runtime.bundle import Bundle, BundleError, content_id
from runtime.contract import GRAPH_OUTPUTS, GRAPHS, MANIFEST_FILE
from tests.conftest import FIXTURE_SOURCE_DESCRIPTIONS


def torch_outputs(model: PSMModel, graph: str, inputs: dict[str, np.ndarray]) -> tuple:
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        if graph == "image":
            return (model.encode_image(t["image"], t["gsd"]),)
        if graph == "fuse":
            return model.fuse(t.pop("sat"), t)
        if graph == "text":
            return model.encode_text(t["input_ids"], t["attention_mask"])
        return model.encode_audio(t["features"])


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_torch(trained_model, bundle_path, graph, batch):
    model, _ = trained_model
    model.eval()
    bundle = Bundle(bundle_path)
    inputs = example_inputs(model, batch=batch, seed=batch + 10)[graph]
    got = bundle.run(graph, **inputs)
    want = torch_outputs(model, graph, inputs)
    assert len(got) == len(GRAPH_OUTPUTS[graph])
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        assert np.abs(g - w.numpy()).max() <= 1e-4


def test_text_and_audio_graphs_take_other_lengths(trained_model, bundle_path):
    model, _ = trained_model
    bundle = Bundle(bundle_path)
    mu, logvar = bundle.embed_texts(["birdsong", "waves breaking on a rocky shore at dawn"])
    assert mu.shape == logvar.shape == (2, model.cfg.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(mu, axis=1), 1.0, atol=1e-5)
    feats = np.random.default_rng(0).standard_normal((2, model.cfg.audio_spec.n_mels, 333)).astype(np.float32)
    mu_a, _ = bundle.embed_audio_features(feats)
    want, _ = torch_outputs(model, "audio", {"features": feats})
    assert np.abs(mu_a - want.numpy()).max() <= 1e-4


def test_embed_batch_matches_bundle_fusion(trained_model, bundle_path):
    """The training code path and the exported fuse graph agree."""
    model, _ = trained_model
    inputs = example_inputs(model, batch=4, seed=3)
    batch = {k: torch.from_numpy(v) for k, v in {**inputs["image"], **inputs["fuse"]}.items() if k != "sat"}
    with torch.no_grad():
        mu, _ = model.eval()(batch)["sat"]
    bundle = Bundle(bundle_path)
    sat = bundle.embed_images(inputs["image"]["image"], inputs["image"]["gsd"])
    meta = {k: v for k, v in inputs["fuse"].items() if k != "sat"}
    mu_b, _ = bundle.fuse(sat, meta)
    assert np.abs(mu_b - mu.numpy()).max() <= 1e-4


def test_manifest_round_trip(bundle_path, tiny_model_config):
    bundle = Bundle(bundle_path)
    m = bundle.manifest
    assert m["dims"] == {"embed": tiny_model_config.embed_dim, "sat": tiny_model_config.sat_dim}
    assert m["vocab"]["source"] == ["demo", "field"]
    assert set(m["export_parity_max_abs_diff"]) == set(GRAPHS)
    assert len(bundle.id) == 16 and bundle.sources.id("field") == 1
    assert m["vocab"]["source_descriptions"] == FIXTURE_SOURCE_DESCRIPTIONS == bundle.source_descriptions
    assert bundle.audio_spec.n_mels == tiny_model_config.audio_spec.n_mels


def test_graphs_hold_no_path_of_the_checkout_that_exported_them(bundle_path):
    """The exporter's per-node stack traces name the checkout's and the venv's files, so the same
    code and weights exported from another folder had other bytes and another bundle id."""
    repo, venv = Path(__file__).resolve().parent.parent, Path(sys.prefix)
    files = json.loads((bundle_path / MANIFEST_FILE).read_text(encoding="utf-8"))["files"]
    graphs = [name for name in files if name.endswith(".onnx")]
    assert {"text.onnx", "fuse.onnx", "int8/text.onnx"} <= set(graphs)
    for name in graphs:
        data = (bundle_path / name).read_bytes()
        assert str(repo).encode() not in data and str(venv).encode() not in data, name
        model = onnx.load_from_string(data)
        assert not any(p.key == STACK_TRACE for n in model.graph.node for p in n.metadata_props), name


def test_tampered_bundle_is_refused(bundle_path, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle_path, copy)
    with open(copy / "fuse.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"fuse\.onnx does not match"):
        Bundle(copy)
    shutil.copy(bundle_path / "fuse.onnx", copy / "fuse.onnx")
    manifest = json.loads((copy / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["calibration"]["a"] = 1.0
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="id does not match"):
        Bundle(copy)


def _restamped(bundle_path: Path, copy: Path, edit) -> Path:
    """A copy of the bundle whose manifest `edit` changed, its id made to match again."""
    shutil.copytree(bundle_path, copy)
    manifest = json.loads((copy / MANIFEST_FILE).read_text(encoding="utf-8"))
    edit(manifest)
    manifest["id"] = content_id(manifest)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    return copy


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda m: m.pop("dims"), "it lacks 'dims'"),
        (lambda m: m.update(calibration="1.0"), "string indices must be integers"),
        (lambda m: m.update(text={"tokenizer_kind": "sentencepiece"}), "unsupported tokenizer kind 'sentencepiece'"),
        (lambda m: m["audio"].update(kind="wav2vec"), "unknown audio feature kind 'wav2vec'"),
    ],
)
def test_a_manifest_of_another_shape_is_refused_in_a_sentence(bundle_path, tmp_path, edit, said):
    """A manifest whose id matches but a field is missing or of another shape stopped with a
    KeyError or ValueError traceback (exit 1), not the BundleError every other bad bundle gets."""
    copy = _restamped(bundle_path, tmp_path / "b", edit)
    with pytest.raises(BundleError, match="is not a manifest this version reads") as refused:
        Bundle(copy)
    assert said in str(refused.value)


@pytest.mark.parametrize("text", ["[]", '"a bundle"', "[" * 100_000])
def test_a_manifest_that_is_no_json_object_is_refused(tmp_path, text):
    (tmp_path / MANIFEST_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match=r"is not (a bundle manifest|valid JSON)"):
        Bundle(tmp_path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        Bundle(tmp_path)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_texts_embedding_does_not_depend_on_the_texts_beside_it(bundle_path, precision):
    """onnxruntime's dynamic int8 took one activation scale per run, so batched with other texts
    (and their padding) a text's means moved; the per-token int8 graph keeps them, as fp32 does."""
    bundle = Bundle(bundle_path, precision=precision)
    texts = ["birdsong", "waves breaking on a rocky shore under a grey sky at dawn", "traffic", "rain"]
    mu, logvar = bundle.embed_texts(texts)
    for i, text in enumerate(texts):
        mu_alone, logvar_alone = bundle.embed_texts([text])
        np.testing.assert_allclose(mu[i], mu_alone[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(logvar[i], logvar_alone[0], rtol=0, atol=1e-6)

"""The exported fuse graph's lean path (MetadataFusion.lean, Block.few and Block.first: absent
tokens dropped, attention written for a handful of tokens, the last block for the CLS token
alone) gives the training path's outputs, for every set of present metadata tokens, in torch and
through onnxruntime, at the demo's depth of two blocks."""

import itertools

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.export import PARITY_TOLERANCE, _checks, _export_graph, _FuseGraph, _parity, example_inputs
from model.nn.encoders import location_features
from model.nn.layers import Block
from model.nn.psm import PSMModel
from runtime.contract import GRAPH_INPUTS, META_TOKENS

PATTERNS = list(itertools.product((0.0, 1.0), repeat=len(META_TOKENS)))


@pytest.fixture(scope="module")
def model() -> PSMModel:
    return octave_model(0)


def octave_model(octaves: int) -> PSMModel:
    """A tiny model of the demo's fusion depth, its location token reading `octaves` scales."""
    torch.manual_seed(0)
    fusion = {"width": 24, "depth": 2, "heads": 4, "ff": 48, "meta_hidden": 16, "location_octaves": octaves}
    cfg = ModelConfig.from_dict(
        {
            "embed_dim": 16,
            "sources": ["demo", "field", "xc"],
            "caption_sources": ["template"],
            "image": {"size": 16, "patch": 8, "width": 24, "depth": 1, "heads": 2},
            "fusion": fusion,
            "text": {"kind": "hashed", "vocab_size": 64, "width": 24, "heads": 2},
            "audio": {"kind": "melcnn", "channels": [4], "width": 24},
        }
    )
    return PSMModel(cfg, pretrained=False).eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_few_and_first_are_the_block_and_its_token_zero(norm_first):
    torch.manual_seed(1)
    block = Block(24, 4, 48, 0.1, norm_first).eval()
    x = torch.randn(5, 6, 24)
    keep = torch.rand(5, 6) > 0.4
    keep[:, :2] = True
    with torch.no_grad():
        for mask in (keep, None):
            torch.testing.assert_close(block.first(x, mask), block(x, mask)[:, 0], atol=1e-6, rtol=0)
            torch.testing.assert_close(block.few(x, mask), block(x, mask), atol=1e-6, rtol=0)


def fuse_inputs(model: PSMModel, pattern: tuple[float, ...] | None) -> dict[str, np.ndarray]:
    """The example fuse inputs (mixed presence per sample), or every sample with `pattern`."""
    inputs = example_inputs(model, batch=6, seed=4)["fuse"]
    if pattern is not None:
        inputs["present"] = np.broadcast_to(np.array(pattern, np.float32), inputs["present"].shape).copy()
    return inputs


def test_lean_fusion_equals_training_fusion(model):
    for pattern in [None, *PATTERNS]:
        inputs = {k: torch.from_numpy(v) for k, v in fuse_inputs(model, pattern).items()}
        sat = inputs.pop("sat")
        with torch.no_grad():
            want = model.fusion(sat, **inputs)
            got = model.fusion.lean(sat, **inputs)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"present tokens {pattern}")


@pytest.mark.slow  # the ONNX export: ~40 s on a busy 2-core box
@pytest.mark.parametrize("octaves", [0, 8])
def test_exported_fuse_graph_matches_training_path_for_every_metadata_set(octaves, tmp_path):
    """What export_bundle checks before writing a bundle: 1 mixed batch + 32 presence sets, for
    a location token of xyz alone and of xyz with its sines and cosines."""
    model = octave_model(octaves)
    inputs = fuse_inputs(model, None)
    graph = _FuseGraph(model)
    checks = _checks(model, "fuse", graph, inputs)
    assert len(checks) == 1 + len(PATTERNS)
    path = tmp_path / "fuse.onnx"
    _export_graph(model, graph, "fuse", tuple(torch.from_numpy(inputs[n]) for n in GRAPH_INPUTS["fuse"]), path)
    assert _parity(path, checks, "fuse", relative=False) <= PARITY_TOLERANCE
    # The same graph takes other batch sizes and token sets than those it was traced with.
    one = {k: v[:1] for k, v in fuse_inputs(model, (1.0, 1.0, 0.0, 0.0, 0.0)).items()}
    assert _parity(path, _checks(model, "fuse", graph, one)[:1], "fuse", relative=False) <= PARITY_TOLERANCE


def test_location_octaves_tell_near_places_apart_and_leave_the_default_as_it_was():
    """fusion.location_octaves: the location token also reads sines and cosines of the place's
    xyz, so places about a hundredth of the Earth's radius apart get far-apart features; with 0
    (the default) the token reads xyz alone and the checkpoint holds the same tensors."""
    scales = torch.pi * 2.0 ** torch.arange(8.0)
    here = torch.tensor([[1.0, 0.0, 0.0]])
    near = torch.nn.functional.normalize(torch.tensor([[1.0, 0.01, 0.0]]), dim=-1)
    features = location_features(here, scales), location_features(near, scales)
    assert features[0].shape == (1, 3 + 6 * 8)
    assert torch.equal(features[0][:, :3], here)
    assert torch.linalg.norm(features[0] - features[1]) > 50 * torch.linalg.norm(here - near)
    assert torch.equal(location_features(here, torch.empty(0)), here)
    plain, fine = octave_model(0), octave_model(8)
    assert "fusion.location_scales" not in fine.state_dict()  # derived from the config, not stored
    assert plain.fusion.location[0].in_features == 3 and fine.fusion.location[0].in_features == 3 + 6 * 8
    for pattern in [None, (1.0, 1.0, 0.0, 0.0, 0.0)]:
        inputs = {k: torch.from_numpy(v) for k, v in fuse_inputs(fine, pattern).items()}
        sat = inputs.pop("sat")
        with torch.no_grad():
            torch.testing.assert_close(fine.fusion.lean(sat, **inputs), fine.fusion(sat, **inputs), atol=1e-6, rtol=0)

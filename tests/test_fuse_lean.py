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
from model.nn.layers import Block
from model.nn.psm import PSMModel
from runtime.contract import GRAPH_INPUTS, META_TOKENS

PATTERNS = list(itertools.product((0.0, 1.0), repeat=len(META_TOKENS)))


@pytest.fixture(scope="module")
def model() -> PSMModel:
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(
        {
            "embed_dim": 16,
            "sources": ["demo", "field", "xc"],
            "caption_sources": ["template"],
            "image": {"size": 16, "patch": 8, "width": 24, "depth": 1, "heads": 2},
            "fusion": {"width": 24, "depth": 2, "heads": 4, "ff": 48, "meta_hidden": 16},
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
def test_exported_fuse_graph_matches_training_path_for_every_metadata_set(model, tmp_path):
    """What export_bundle checks before writing a bundle: 1 mixed batch + 32 presence sets."""
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

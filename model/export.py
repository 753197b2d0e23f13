"""torch -> model bundle: the four ONNX graphs of DESIGN.md plus manifest and tokenizer.

Each graph is exported with a dynamic batch axis (and dynamic sequence/frame axes for text and
audio), then run by onnxruntime on random input and compared with torch; the largest
difference is recorded in the manifest and a mismatch above tolerance fails the export.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from model.bundle import BUNDLE_FORMAT_VERSION, finalise_manifest
from model.contract import GRAPH_FILES, GRAPH_INPUTS, GRAPH_OUTPUTS, META_TOKENS, TOKENIZER_FILE
from model.metadata import encode_metadata
from model.nn.config import ModelConfig
from model.nn.psm import PSMModel
from model.text import HashedWordTokenizer

PARITY_TOLERANCE = 1e-4
log = logging.getLogger(__name__)
# The exporter warns once per graph that torchvision's custom ops are not registered; we use none.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class _ImageGraph(nn.Module):
    def __init__(self, model: PSMModel):
        super().__init__()
        self.model = model

    def forward(self, image, gsd):
        return self.model.encode_image(image, gsd)


class _FuseGraph(nn.Module):
    def __init__(self, model: PSMModel):
        super().__init__()
        self.model = model

    def forward(self, sat, location, hour, month, source, caption_source, present):
        return self.model.fuse(sat, dict(location=location, hour=hour, month=month, source=source,
                                         caption_source=caption_source, present=present))


class _TextGraph(nn.Module):
    def __init__(self, model: PSMModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encode_text(input_ids, attention_mask)


class _AudioGraph(nn.Module):
    def __init__(self, model: PSMModel):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model.encode_audio(features)


def example_inputs(cfg: ModelConfig, batch: int = 3, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Random inputs of every graph, as numpy (what onnxruntime takes)."""
    rng = np.random.default_rng(seed)
    size = cfg.image_size
    meta = encode_metadata(
        batch, lat=rng.uniform(-80, 80, batch), lon=rng.uniform(-180, 180, batch),
        hour=rng.uniform(0, 24, batch), month=rng.integers(1, 13, batch).astype(float),
        source=rng.integers(0, len(cfg.sources), batch),
        caption_source=rng.integers(0, len(cfg.caption_sources), batch))
    meta["present"] = (rng.random((batch, len(META_TOKENS))) > 0.3).astype(np.float32)
    mask = np.ones((batch, 7), dtype=np.int64)
    mask[0, 4:] = 0
    spec = cfg.audio_spec
    return {
        "image": {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
                  "gsd": rng.uniform(100, 50000, batch).astype(np.float32)},
        "fuse": {"sat": rng.standard_normal((batch, cfg.sat_dim)).astype(np.float32), **meta},
        "text": {"input_ids": rng.integers(1, cfg.text_vocab_size, (batch, 7)).astype(np.int64),
                 "attention_mask": mask},
        "audio": {"features": rng.standard_normal((batch, spec.n_mels, 101)).astype(np.float32)},
    }


def _dynamic_shapes(graph: str) -> dict:
    batch = torch.export.Dim("batch", min=1, max=65536)
    if graph == "text":
        seq = torch.export.Dim("seq", min=1, max=4096)
        return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    if graph == "audio":
        return {"features": {0: batch, 2: torch.export.Dim("frames", min=16, max=100000)}}
    return {name: {0: batch} for name in GRAPH_INPUTS[graph]}


def _export_graph(module: nn.Module, graph: str, inputs: dict[str, np.ndarray], path: Path) -> float:
    """Export one graph and return its max |onnxruntime - torch| on `inputs`."""
    args = tuple(torch.from_numpy(inputs[name]) for name in GRAPH_INPUTS[graph])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, input_names=list(GRAPH_INPUTS[graph]), output_names=list(GRAPH_OUTPUTS[graph]),
            dynamic_shapes=_dynamic_shapes(graph), dynamo=True, external_data=False, verbose=False)
        program.save(str(path))
        expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(GRAPH_OUTPUTS[graph]), inputs)
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))


def export_bundle(model: PSMModel, out: str | Path, *, calibration: tuple[float, float],
                  training: dict | None = None, metrics: dict | None = None,
                  name: str = "soundscape") -> dict:
    """Write the bundle directory `out` (atomically: built aside, then renamed into place) and
    return its manifest."""
    out = Path(out)
    cfg = model.cfg
    model = model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        wrappers = {"image": _ImageGraph(model), "fuse": _FuseGraph(model),
                    "text": _TextGraph(model), "audio": _AudioGraph(model)}
        inputs = example_inputs(cfg)
        parity = {}
        for graph, module in wrappers.items():
            parity[graph] = _export_graph(module, graph, inputs[graph], tmp / GRAPH_FILES[graph])
            if parity[graph] > PARITY_TOLERANCE:
                raise RuntimeError(f"{graph} graph: onnxruntime differs from torch by {parity[graph]:.2e}")
            log.info("exported %s graph (max diff %.1e)", graph, parity[graph])
        tokenizer = HashedWordTokenizer(cfg.text_vocab_size, cfg.text_max_length)
        (tmp / TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_json(), indent=2) + "\n")
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "name": name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dims": {"embed": cfg.embed_dim, "sat": cfg.sat_dim},
            "image": {"size": cfg.image_size, "layout": "uint8 RGB (B, H, W, 3)", "gsd_unit_m": cfg.gsd_unit_m},
            "vocab": {"source": list(cfg.sources), "caption_source": list(cfg.caption_sources)},
            "audio": cfg.audio_spec.to_json(),
            "text": {"tokenizer": TOKENIZER_FILE},
            "meta_tokens": list(META_TOKENS),
            "graphs": {g: {"file": GRAPH_FILES[g], "inputs": list(GRAPH_INPUTS[g]),
                           "outputs": list(GRAPH_OUTPUTS[g])} for g in GRAPH_FILES},
            "calibration": {"a": float(calibration[0]), "b": float(calibration[1])},
            "export_parity_max_abs_diff": parity,
            "model_config": cfg.to_dict(),
            "training": training or {},
            "metrics": metrics or {},
        }
        manifest = finalise_manifest(tmp, manifest)
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

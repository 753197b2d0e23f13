"""torch -> model bundle: the four ONNX graphs of docs/bundle.md plus manifest and tokenizer.

Each graph is exported with a dynamic batch axis (and dynamic sequence/frame axes where the
tower allows), then run by onnxruntime on realistic inputs (tokenised text, features of a
waveform) and compared with torch; the largest difference is recorded in the manifest and a
mismatch above tolerance fails the export. `fp16=True` adds float16 copies of the graphs
(inputs and outputs stay float32/int64/uint8) under fp16/, checked the same way against a
relative tolerance, for GPU serving and precompute. `int8=True` adds, under int8/, the text
graph with int8 MatMuls (model/quantize.py: activations quantized per token) for CPU serving, checked by the
cosine of its query means to torch's and a relative tolerance on its log-variances.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from model.checkpoint import check_finite, read_trained_parts
from model.config import ModelConfig
from model.nn.psm import PSMModel
from model.quantize import quantize_per_token
from runtime.bundle import BUNDLE_FORMAT_VERSION, finalise_manifest
from runtime.contract import (
    FP16_GRAPH_FILES,
    GRAPH_FILES,
    GRAPH_INPUTS,
    GRAPH_OUTPUTS,
    INT8_GRAPH_FILES,
    INT8_GRAPHS,
    META_TOKENS,
    RECORD_FILE,
    TOKENIZER_FILE,
    TRAINED_PARTS_FILE,
)
from runtime.errors import UsageError
from runtime.files import atomic_write, file_sha256, replace_dir
from runtime.metadata import encode_metadata
from runtime.text import TextError, Tokenizer, query_text

PARITY_TOLERANCE = 1e-4
FP16_RELATIVE_TOLERANCE = 2e-2
# The int8 text graph: each query mean within this cosine of torch's (0.996 was the least over the
# 67 texts of benchmarks/text_precision.py for the demo model), its log-variances within this
# relative difference (0.0013 on the export's examples there).
INT8_MIN_COSINE = 0.95
INT8_RELATIVE_TOLERANCE = 0.1
log = logging.getLogger(__name__)
# The exporter warns once per graph that torchvision's custom ops are not registered; we use none.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
# The ONNX exporter's optimiser passes log ~30 INFO lines per graph (constant folding, unused
# functions): kept out of `soundscape -v`, which is for this project's own progress.
for _name in ("onnxscript", "onnx_ir", "torch.onnx"):
    logging.getLogger(_name).setLevel(logging.WARNING)

EXAMPLE_TEXTS = ["birdsong at dawn", "waves breaking on a rocky shore under a grey sky", "traffic"]


class _ImageGraph(nn.Module):
    def __init__(self, model: PSMModel):
        super().__init__()
        self.model = model

    def forward(self, image, gsd):
        return self.model.encode_image(image, gsd)


class _FuseGraph(nn.Module):
    """model.fuse through the fusion's lean path (MetadataFusion.lean): the same outputs, with
    the work no output reads left out (2.4x less CPU for a tile's 324 cells under hour=)."""

    def __init__(self, model: PSMModel):
        super().__init__()
        self.model = model

    def forward(self, sat, location, hour, month, source, caption_source, present):
        return self.model.sat_heads(self.model.fusion.lean(sat, location, hour, month, source, caption_source, present))


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


def example_inputs(model: PSMModel, batch: int = 3, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of every graph as numpy (what onnxruntime takes): random pixels and metadata,
    real tokenised texts, the front end's features of random waveforms."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    size = cfg.image_size
    meta = encode_metadata(
        batch,
        lat=rng.uniform(-80, 80, batch),
        lon=rng.uniform(-180, 180, batch),
        hour=rng.uniform(0, 24, batch),
        month=rng.integers(1, 13, batch).astype(float),
        source=rng.integers(0, len(cfg.sources), batch),
        caption_source=rng.integers(0, len(cfg.caption_sources), batch),
    )
    meta["present"] = (rng.random((batch, len(META_TOKENS))) > 0.3).astype(np.float32)
    ids, mask = model.tokenizer().encode([EXAMPLE_TEXTS[i % len(EXAMPLE_TEXTS)] for i in range(batch)])
    front = model.audio_front_end
    features = np.stack(
        [
            front.features(rng.standard_normal(front.n_samples).astype(np.float32) * rng.uniform(0.01, 0.5))
            for _ in range(batch)
        ]
    )
    return {
        "image": {
            "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "gsd": rng.uniform(100, 50000, batch).astype(np.float32),
        },
        "fuse": {"sat": rng.standard_normal((batch, cfg.sat_dim)).astype(np.float32), **meta},
        "text": {"input_ids": ids, "attention_mask": mask},
        "audio": {"features": features.astype(np.float32)},
    }


def _dynamic_shapes(model: PSMModel, graph: str) -> dict:
    batch = torch.export.Dim("batch", min=1, max=65536)
    if graph == "text":
        seq = torch.export.Dim("seq", min=1, max=model.tokenizer().max_length)
        return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    if graph == "audio" and model.audio_front_end.kind != "clap-fusion":
        # aisfx embeds blocks of 100 frames; the log-mel CNN pools each conv stage by 2.
        fewest = (
            100 if model.audio_front_end.kind == "aisfx-mel" else 2 ** len(getattr(model.cfg.audio, "channels", []))
        )
        return {"features": {0: batch, 2: torch.export.Dim("frames", min=max(2, fewest), max=100000)}}
    return {name: {0: batch} for name in GRAPH_INPUTS[graph]}


def _exporter(model: PSMModel, graph: str) -> str:
    tower = {"text": model.text, "audio": model.audio}.get(graph)
    return tower.onnx_exporter if tower is not None else "dynamo"


def _export_graph(model: PSMModel, module: nn.Module, graph: str, args: tuple, path: Path) -> None:
    names: dict[str, Any] = dict(input_names=list(GRAPH_INPUTS[graph]), output_names=list(GRAPH_OUTPUTS[graph]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if _exporter(model, graph) == "torchscript":
            axes = {name: {0: "batch"} for name in (*GRAPH_INPUTS[graph], *GRAPH_OUTPUTS[graph])}
            torch.onnx.export(module, args, str(path), dynamic_axes=axes, dynamo=False, **names)
        else:
            program = torch.onnx.export(
                module,
                args,
                dynamic_shapes=_dynamic_shapes(model, graph),
                dynamo=True,
                external_data=False,
                verbose=False,
                **names,
            )
            assert program is not None  # dynamo=True returns the program
            program.save(str(path))
            _drop_stack_traces(path)


# Node metadata the dynamo exporter writes: the Python stack of each node, with the absolute paths of
# the checkout and its virtual environment.
STACK_TRACE = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(path: Path) -> None:
    """Remove every node's STACK_TRACE from the graph at `path`. With them, the same code and
    weights exported from two folders (a checkout and a container image) gave graphs of different
    bytes, so bundles of different ids, and query ids that did not carry over."""
    model = onnx.load(str(path))
    for node in _nodes(model):
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: its graph's, their control-flow subgraphs', its functions'."""
    graphs = [model.graph]
    for graph in graphs:  # grows with the subgraphs met
        for node in graph.node:
            yield node
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]
    for function in model.functions:
        yield from function.node


Check = tuple[dict[str, np.ndarray], tuple[torch.Tensor, ...]]


def _checks(model: PSMModel, graph: str, module: nn.Module, inputs: dict[str, np.ndarray]) -> list[Check]:
    """(inputs, torch outputs) pairs the exported graph must reproduce. The fuse graph is held to
    the training path (model.fuse: every token through every block), on the mixed example batch
    and on one batch per set of present metadata tokens, since its lean path drops the tokens
    a whole batch lacks."""
    cases = [inputs]
    if graph == "fuse":
        shape = inputs["present"].shape
        for pattern in itertools.product((0.0, 1.0), repeat=len(META_TOKENS)):
            cases.append({**inputs, "present": np.broadcast_to(np.array(pattern, np.float32), shape).copy()})
    checks: list[Check] = []
    for case in cases:
        args = tuple(torch.from_numpy(case[n]) for n in GRAPH_INPUTS[graph])
        with torch.no_grad():
            if graph == "fuse":
                expected = model.fuse(args[0], dict(zip(GRAPH_INPUTS[graph][1:], args[1:], strict=True)))
            else:
                expected = module.eval()(*args)
        checks.append((case, expected if isinstance(expected, tuple) else (expected,)))
    return checks


def _parity(path: Path, checks: list[Check], graph: str, relative: bool) -> float:
    """Max |onnxruntime - torch| over the graph's outputs and checks (relative to max(1, |torch|)
    if asked)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for inputs, expected in checks:
        got = session.run(list(GRAPH_OUTPUTS[graph]), inputs)
        for g, t in zip(got, expected, strict=True):
            e = t.numpy()
            diffs.append(float(np.abs(g - e).max() / (max(1.0, float(np.abs(e).max())) if relative else 1.0)))
    return max(diffs)


def _to_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def _to_int8(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_per_token(src, dst)


def _int8_parity(path: Path, checks: list[Check], graph: str) -> dict[str, float]:
    """The least cosine of the graph's means (its first output) to torch's, and the largest
    relative difference of its other outputs (the log-variances)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cosines, diffs = [], [0.0]
    for inputs, expected in checks:
        mu, *rest = session.run(list(GRAPH_OUTPUTS[graph]), inputs)
        want, *rest_want = (t.numpy() for t in expected)
        cosines.append(float(((mu * want).sum(-1) / np.linalg.norm(mu, axis=-1) / np.linalg.norm(want, axis=-1)).min()))
        for g, e in zip(rest, rest_want, strict=True):
            diffs.append(float(np.abs(g - e).max() / max(1.0, float(np.abs(e).max()))))
    return {"min_cosine": min(cosines), "max_rel_diff": max(diffs)}


def described_sources(sources: list[str], descriptions: dict[str, str]) -> dict[str, str]:
    """The descriptions of `sources`, in their order; a description of a name the model does
    not know is refused, since no query could ask for it."""
    unknown = sorted(set(descriptions) - set(sources))
    if unknown:
        raise UsageError(f"source description(s) of {', '.join(unknown)}: the model's sources are {', '.join(sources)}")
    return {name: descriptions[name] for name in sources if name in descriptions}


def check_examples(examples: list[str], tokenizer: Tokenizer) -> None:
    """UsageError for an example the server would refuse as a query (empty, a control
    character, too long, or no word the model knows): the banner and the viewer offer each one,
    and `--example ''` was recorded, a link that answered 422."""
    for text in examples:
        try:
            normal = query_text(text)
        except TextError as exc:
            raise UsageError(f"--example {text[:60]!r}: {exc}") from None
        if not tokenizer.known_tokens(normal):
            raise UsageError(f"--example {normal[:60]!r} holds no word the text model knows")


def export_bundle(
    model: PSMModel,
    out: str | Path,
    *,
    calibration: tuple[float, float],
    training: dict | None = None,
    metrics: dict | None = None,
    name: str = "soundscape",
    fp16: bool = False,
    int8: bool = False,
    examples: list[str] | None = None,
    source_descriptions: dict[str, str] | None = None,
    progress: bool = False,
) -> dict:
    """Write the bundle directory `out` (atomically: built aside, then renamed into place) and
    return its manifest. `examples`: text queries this model maps well (the server shows them);
    `source_descriptions`: what some of the model's sources mean (GET /metadata shows them);
    progress: a line on stderr per graph exported and checked."""
    out = Path(out)
    cfg = model.cfg
    check_examples(examples or [], model.tokenizer())
    check_finite({**model.state_dict(), "calibration": torch.tensor(calibration)}, "the model to export")
    vocab: dict = {"source": list(cfg.sources), "caption_source": list(cfg.caption_sources)}
    if source_descriptions:
        vocab["source_descriptions"] = described_sources(list(cfg.sources), source_descriptions)
    model = model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        wrappers = {
            "image": _ImageGraph(model),
            "fuse": _FuseGraph(model),
            "text": _TextGraph(model),
            "audio": _AudioGraph(model),
        }
        inputs = example_inputs(model)
        parity, parity16, parity8 = {}, {}, {}
        for number, (graph, module) in enumerate(wrappers.items(), start=1):
            if progress:
                print(f"export {number}/{len(wrappers)}: the {graph} graph ...", file=sys.stderr, flush=True)
            args = tuple(torch.from_numpy(inputs[graph][n]) for n in GRAPH_INPUTS[graph])
            checks = _checks(model, graph, module, inputs[graph])
            _export_graph(model, module, graph, args, tmp / GRAPH_FILES[graph])
            parity[graph] = _parity(tmp / GRAPH_FILES[graph], checks, graph, relative=False)
            if not parity[graph] <= PARITY_TOLERANCE:  # NaN too
                raise RuntimeError(f"{graph} graph: onnxruntime differs from torch by {parity[graph]:.2e}")
            if fp16:
                _to_fp16(tmp / GRAPH_FILES[graph], tmp / FP16_GRAPH_FILES[graph])
                parity16[graph] = _parity(tmp / FP16_GRAPH_FILES[graph], checks, graph, relative=True)
                if not parity16[graph] <= FP16_RELATIVE_TOLERANCE:
                    raise RuntimeError(f"{graph} fp16 graph: differs from torch by {parity16[graph]:.2e} (relative)")
            if int8 and graph in INT8_GRAPHS:
                _to_int8(tmp / GRAPH_FILES[graph], tmp / INT8_GRAPH_FILES[graph])
                parity8[graph] = _int8_parity(tmp / INT8_GRAPH_FILES[graph], checks, graph)
                if (
                    not parity8[graph]["min_cosine"] >= INT8_MIN_COSINE
                    or not parity8[graph]["max_rel_diff"] <= INT8_RELATIVE_TOLERANCE
                ):
                    raise RuntimeError(f"{graph} int8 graph: too far from torch ({parity8[graph]})")
            if not progress:
                log.info("exported %s graph (max diff %.1e)", graph, parity[graph])
            else:
                print(
                    f"export {number}/{len(wrappers)}: the {graph} graph matches torch in onnxruntime "
                    f"(max difference {parity[graph]:.1e})",
                    file=sys.stderr,
                    flush=True,
                )
        text_spec = model.text.write_tokenizer(tmp / TOKENIZER_FILE)
        manifest = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "name": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "dims": {"embed": cfg.embed_dim, "sat": cfg.sat_dim},
            "image": {"size": cfg.image_size, "layout": "uint8 RGB (B, H, W, 3)", "gsd_unit_m": cfg.image.gsd_unit_m},
            "vocab": vocab,
            "audio": model.audio_front_end.to_json(),
            "text": {"tokenizer": TOKENIZER_FILE, **text_spec},
            "meta_tokens": list(META_TOKENS),
            "graphs": {
                g: {"file": GRAPH_FILES[g], "inputs": list(GRAPH_INPUTS[g]), "outputs": list(GRAPH_OUTPUTS[g])}
                for g in GRAPH_FILES
            },
            "precisions": ["fp32", *(["fp16"] if fp16 else []), *(["int8"] if int8 else [])],
            "calibration": {"a": float(calibration[0]), "b": float(calibration[1])},
            "export_parity_max_abs_diff": parity,
            **({"export_parity_fp16_max_rel_diff": parity16} if fp16 else {}),
            **({"export_parity_int8": parity8} if int8 else {}),
            "model_config": cfg.to_dict(),
            "training": training or {},
            "metrics": metrics or {},
            **({"examples": list(examples)} if examples else {}),
        }
        manifest = finalise_manifest(tmp, manifest)
        os.chmod(tmp, 0o755)
        replace_dir(tmp, out)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------------
# Trained parts only: what a repository commits when the frozen towers come from packages


def save_trained_parts(model: PSMModel, folder: str | Path, *, calibration: tuple[float, float], record: dict) -> dict:
    """Write the trained tensors of `model` (all but its frozen towers, whose weights their
    packages carry) to `folder`/trained.safetensors, and `record` (provenance: training, data,
    metrics) with the model config, calibration and the weights' hash to record.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    # Each file replaced whole (atomic_write); a stop between the two leaves weights whose hash is
    # not the record's, which load_trained_parts refuses rather than loading a mix.
    atomic_write(folder / TRAINED_PARTS_FILE, lambda path: save_file(state, str(path)))
    record = {
        **record,
        "model_config": model.cfg.to_dict(),
        "calibration": {"a": float(calibration[0]), "b": float(calibration[1])},
        "weights": {"file": TRAINED_PARTS_FILE, "sha256": file_sha256(folder / TRAINED_PARTS_FILE)},
    }
    atomic_write(folder / RECORD_FILE, json.dumps(record, indent=2) + "\n")
    return record


def load_trained_parts(folder: str | Path) -> tuple[PSMModel, dict]:
    """The model saved by `save_trained_parts`: frozen towers from their packages, trained parts
    from the file (refused when its hash is not the recorded one), and the record."""
    state, record = read_trained_parts(folder)
    model = PSMModel(ModelConfig.from_dict(record["model_config"]), pretrained=False)
    model.load_trainable_state_dict(state, str(Path(folder) / record["weights"]["file"]))
    return model.eval(), record


def bundle_from_trained_parts(
    folder: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    metrics: dict | None = None,
    fp16: bool = False,
    int8: bool = False,
    examples: list[str] | None = None,
    source_descriptions: dict[str, str] | None = None,
    progress: bool = False,
    provenance: dict | None = None,
) -> dict:
    """Export the bundle of a trained-parts folder (its record's name, calibration, training and
    metrics, and the weights' sha256, by which `soundscape demo` knows its bundle is current);
    `provenance` adds entries to the manifest's `training` section."""
    model, record = load_trained_parts(folder)
    return export_bundle(
        model,
        out,
        calibration=(record["calibration"]["a"], record["calibration"]["b"]),
        training={**record["training"], "weights_sha256": record["weights"]["sha256"], **(provenance or {})},
        metrics={**record["metrics"], **(metrics or {})},
        name=name or record["name"],
        fp16=fp16,
        int8=int8,
        examples=examples or record.get("examples"),
        source_descriptions=source_descriptions or record.get("source_descriptions"),
        progress=progress,
    )

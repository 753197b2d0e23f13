"""int8 graphs for CPU serving: every MatMul by a constant weight in int8, its activations quantized
per token as the graph runs.

onnxruntime's dynamic quantization (`quantize_dynamic`) takes one activation scale per tensor per
run, so in a batch of texts a text's embedding depends on the texts and padding beside it (by up to
0.058 in the demo model's means, benchmarks/text_precision.py): a query would mean differently on
two servers, or under load. Here each token's activations (a row over the product's inner axis) get
their own scale, so a text's embedding is the same in any batch, and nearer fp32 (each token's range
is its own, not the batch's widest).

Per product: weights symmetric in 7 bits (-63..63) held as int8, one scale per output column;
activations u8 = round(x / s) + 128 with s = max |x| / 127 over the token's row (halves rounded
up); the int32 products become floats through onnxruntime's MatMulIntegerToFloat (the weights'
scales), then times each token's s.

Why 7 bits: on x86 CPUs without VNNI (AVX2 alone, as many AMD EPYC and older Xeons), onnxruntime's
u8 x s8 kernel adds each pair of products in int16 (VPMADDUBSW), which saturates once
a1 w1 + a2 w2 passes 32767; with u8 around 128 and weights to 127 it did (a one-product test graph
off by up to 117 where VNNI CPUs were exact), so one bundle embedded a text differently by CPU.
With |w| <= 63 a pair is at most 2 x 255 x 63 = 32130: exact on every CPU, and as near fp32 over
the demo model's 67 texts (least cosine 0.9957, median 0.9991, against 0.9959 and 0.9989 for
8-bit weights on such a CPU; BENCHMARKS.md).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PREFIX = "per_token_int8"
WEIGHT_LEVELS = 63  # the largest |int8 weight|: no pair of u8 x s8 products passes int16 (above)
ZERO_POINT = 128  # activations as uint8 around 128: onnxruntime's fast u8 x s8 products
EPSILON = 1e-12  # the scale of a token whose row is all zeros (its products are 0 anyway)
CONSTANTS: dict[str, np.ndarray] = {
    "axes": np.array([-1], np.int64),
    "inv127": np.array(1 / 127, np.float32),
    "eps": np.array(EPSILON, np.float32),
    "offset": np.array(ZERO_POINT + 0.5, np.float32),
    "zero_point": np.array(ZERO_POINT, np.uint8),
    "one": np.array(1.0, np.float32),
}


def quantize_per_token(src: Path, dst: Path) -> int:
    """Write `src` to `dst` with its MatMuls by constant 2-D weights in per-token int8; returns how
    many were quantized. Products that share an input share its quantization."""
    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    products = [
        i
        for i, n in enumerate(graph.node)
        if n.op_type == "MatMul" and n.input[1] in weights and len(weights[n.input[1]].dims) == 2
    ]
    by_input: dict[str, list[int]] = defaultdict(list)
    for i in products:
        by_input[graph.node[i].input[0]].append(i)
    added = {f"{PREFIX}/{name}": value for name, value in CONSTANTS.items()}
    replacements: dict[int, list[onnx.NodeProto]] = {}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for group, (activation, indices) in enumerate(by_input.items()):
        quantized, scale, quantizer = _token_quantizer(activation, f"{PREFIX}/{group}", opset)
        for k, i in enumerate(indices):
            weight, out = graph.node[i].input[1], graph.node[i].output[0]
            added[f"{weight}/int8"], added[f"{weight}/scale"] = int8_columns(numpy_helper.to_array(weights[weight]))
            product = _product(quantized, scale, weight, out, f"{PREFIX}/{group}/{k}")
            replacements[i] = (quantizer if k == 0 else []) + product
    rebuilt = [new for i, node in enumerate(graph.node) for new in replacements.get(i, [node])]
    del graph.node[:]
    graph.node.extend(rebuilt)
    used = {name for node in graph.node for name in node.input}
    tensors = [numpy_helper.from_array(value, name) for name, value in added.items()]
    kept = [t for t in [*graph.initializer, *tensors] if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return len(products)


def int8_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale per output column): symmetric, the column's largest |w| at
    WEIGHT_LEVELS."""
    scale = np.maximum(np.abs(weight).max(axis=0) / WEIGHT_LEVELS, EPSILON).astype(np.float32)
    return np.clip(np.round(weight / scale), -WEIGHT_LEVELS, WEIGHT_LEVELS).astype(np.int8), scale


def _token_quantizer(x: str, name: str, opset: int) -> tuple[str, str, list[onnx.NodeProto]]:
    """Nodes quantizing `x` per token (its last axis): (uint8 tensor, scale (..., 1), nodes).
    |x / s| <= 127, so no clip is needed, and x / s + 128.5 lies in [1.5, 255.5]: onnxruntime's
    Cast truncates it, which rounds x / s to the nearest integer (a Round node cost more)."""
    c = f"{PREFIX}/"
    reduce = (  # ReduceMax takes its axes as an input from opset 18
        helper.make_node("ReduceMax", [f"{name}/abs", c + "axes"], [f"{name}/max"], keepdims=1)
        if opset >= 18
        else helper.make_node("ReduceMax", [f"{name}/abs"], [f"{name}/max"], axes=[-1], keepdims=1)
    )
    nodes = [
        helper.make_node("Abs", [x], [f"{name}/abs"]),
        reduce,
        helper.make_node("Mul", [f"{name}/max", c + "inv127"], [f"{name}/scale0"]),
        helper.make_node("Max", [f"{name}/scale0", c + "eps"], [f"{name}/scale"]),
        helper.make_node("Div", [x, f"{name}/scale"], [f"{name}/scaled"]),
        helper.make_node("Add", [f"{name}/scaled", c + "offset"], [f"{name}/shifted"]),
        helper.make_node("Cast", [f"{name}/shifted"], [f"{name}/uint8"], to=TensorProto.UINT8),
    ]
    return f"{name}/uint8", f"{name}/scale", nodes


def _product(quantized: str, scale: str, weight: str, out: str, name: str) -> list[onnx.NodeProto]:
    """uint8 activations x int8 weight -> float32 `out`: the weight's column scales inside
    MatMulIntegerToFloat, each token's scale after."""
    c = f"{PREFIX}/"
    inputs = [quantized, f"{weight}/int8", c + "one", f"{weight}/scale", c + "zero_point"]
    return [
        helper.make_node("MatMulIntegerToFloat", inputs, [f"{name}/float"], domain="com.microsoft"),
        helper.make_node("Mul", [f"{name}/float", scale], [out]),
    ]

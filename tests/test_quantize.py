"""model/quantize.py: per-token int8 products, checked against the same arithmetic in numpy, and a
row's result independent of the rows run beside it."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model.quantize import int8_columns, quantize_per_token

K, N1, N2 = 16, 8, 5


def two_products(path, opset: int) -> tuple[np.ndarray, np.ndarray]:
    """y1 = x @ w1, y2 = x @ w2 (one input, shared), and z = x @ x^T (no constant weight)."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((K, N1), dtype=np.float32), rng.standard_normal((K, N2), dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["y1"]),
        helper.make_node("MatMul", ["x", "w2"], ["y2"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["z"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y1", "y2", "z")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    graph = helper.make_graph(nodes, "products", [x], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return w1, w2


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-token symmetric activations, per-column symmetric weights, in numpy."""
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True) / 127, 1e-12)
    q = np.floor(x / s + 0.5)  # halves rounded up
    wq, ws = int8_columns(w)
    return (q @ wq.astype(np.float64)) * ws * s


@pytest.mark.parametrize("opset", [17, 20])  # ReduceMax's axes: an attribute, then an input
def test_products_are_per_token_int8_and_a_row_ignores_its_neighbours(tmp_path, opset):
    w1, w2 = two_products(tmp_path / "f.onnx", opset)
    assert quantize_per_token(tmp_path / "f.onnx", tmp_path / "q.onnx") == 2
    model = onnx.load(str(tmp_path / "q.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 2 and ops.count("ReduceMax") == 1 and ops.count("MatMul") == 1
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, K), dtype=np.float32) * np.array([0.01, 1, 100], np.float32)[:, None, None]
    x[1, 2] = 0  # a row of zeros: products 0, no division by zero
    y1, y2, z = session.run(None, {"x": x})
    np.testing.assert_allclose(y1, reference(x, w1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y2, reference(x, w2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, x @ x.transpose(0, 2, 1), rtol=1e-5)  # left as it was
    np.testing.assert_allclose(y1[1, 2], 0, atol=0)
    relative = np.abs(y1 - x @ w1).max(axis=-1) / np.abs(x @ w1).max(axis=-1).clip(1e-30)
    assert relative[[0, 2]].max() < 0.05  # each row near float whatever its scale (0.01 or 100)
    alone = session.run(None, {"x": x[2:3, :1]})[0]
    np.testing.assert_allclose(alone[0, 0], y1[2, 0], rtol=0, atol=1e-4)  # rows beside it: no effect


def test_weights_are_symmetric_7_bit_per_column():
    w = np.array([[1.0, -0.5], [-2.0, 0.25], [0.0, 0.0]], np.float32)
    q, scale = int8_columns(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    np.testing.assert_allclose(scale, [2 / 63, 0.5 / 63])
    assert q[1, 0] == -63 and q[0, 1] == -63 and q[2].tolist() == [0, 0]
    np.testing.assert_allclose(q * scale, w, atol=scale.max() / 2)


def test_products_that_would_pass_int16_in_pairs_are_exact_on_this_cpu(tmp_path):
    """Every activation at its largest (u8 255) against weights at their largest, all of one sign:
    the worst case for a CPU without VNNI, whose u8 x s8 kernel adds pairs of products in int16.
    With 8-bit weights (2 x 255 x 127 = 64770) such a CPU saturated and this was off by far."""
    w = np.full((K, 1), 3.0, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "f.onnx"))
    quantize_per_token(tmp_path / "f.onnx", tmp_path / "q.onnx")
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    x = np.array([np.ones(K), -np.ones(K), np.linspace(-1, 1, K)], np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, reference(x, w), rtol=1e-6)
    np.testing.assert_allclose(y[:2, 0], [3.0 * K, -3.0 * K], rtol=1e-6)

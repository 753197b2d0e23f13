"""benchmarks/gemm_floor.py: the products of a graph are counted as onnxruntime ran them (fused,
transposed and batched forms included), the floor measure runs on the served pipeline, and the
harness sets it against the targets' room."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import benchmarks.gemm_floor as gemm_floor
from benchmarks.gemm_floor import Product, floor_ms, floors, from_first_attention, product_rate, profiled_products
from benchmarks.run import markdown
from tests.test_benchmark_harness import RESULT

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gemm_floor.py"


def four_products(path: Path) -> None:
    """x (5, 3, 8) @ w (8, 16) -> h; h @ h^T per batch (5, 3, 3), its softmax @ h (5, 3, 16);
    z (4, 6) through a Gemm with a transposed weight (7, 6) and a bias -> (4, 7)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.random((8, 16), dtype=np.float32), "w"),
        numpy_helper.from_array(rng.random((7, 6), dtype=np.float32), "g"),
        numpy_helper.from_array(rng.random(7, dtype=np.float32), "bias"),
    ]
    nodes = [  # named, as exported graphs' nodes are: the profile and the graph match by name
        helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1], name="transpose"),
        helper.make_node("MatMul", ["h", "ht"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["weights", "h"], ["mixed"], name="mix"),
        helper.make_node("Gemm", ["z", "g", "bias"], ["out"], transB=1, name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "four",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3, 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 6]),
        ],
        [
            helper.make_tensor_value_info("mixed", TensorProto.FLOAT, [5, 3, 16]),
            helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 7]),
        ],
        initializer=weights,
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_products_are_counted_as_they_ran_with_their_shapes(tmp_path):
    four_products(tmp_path / "four.onnx")
    options = ort.SessionOptions()  # every optimisation: the transpose goes into a FusedMatMul
    feeds = {"x": np.ones((5, 3, 8), np.float32), "z": np.ones((4, 6), np.float32)}
    found, again = profiled_products(tmp_path / "four.onnx", options, [feeds, feeds])
    assert again == found  # each run its own products
    assert sorted((p.macs, p.operands(), p.attended) for p in found) == [
        (4 * 7 * 6, ((4, 6), (6, 7)), False),  # the weight's transposition is not counted twice
        (5 * 3 * 3 * 16, ((5, 3, 3), (5, 3, 16)), True),  # reads the softmax: an attention's output
        (5 * 3 * 3 * 16, ((5, 3, 16), (5, 16, 3)), False),  # both operands computed: batched
        (5 * 3 * 16 * 8, ((5, 3, 8), (8, 16)), False),  # a weight: two-dimensional
    ]
    for product in found:  # each runs alone, in both precisions
        assert product_rate(product, int8=False) > 0 and product_rate(product, int8=True) > 0


def test_an_hour_tile_needs_the_products_that_read_an_attention():
    encoders = [Product((9, 2), (9, 64)), Product((9, 64), (9, 96))]
    projections = Product((36, 96), (36, 96))
    after = [Product((36, 96), (36, 96), attended=True), Product((36, 96), (36, 192), attended=True)]
    assert from_first_attention([*encoders, projections, *after]) == after
    assert from_first_attention(encoders) == []  # a graph without attention needs nothing per cell and request


def test_the_floor_is_the_products_at_each_precisions_best_rate():
    rates = {"fp32": {"gmacs_per_s": 50.0}, "int8": {"gmacs_per_s": 200.0}}
    assert floor_ms(100_000_000, rates) == {"fp32": 2.0, "int8": 0.5}


def test_the_floor_measure_runs_on_the_served_pipeline(bundle_path, store_path, monkeypatch):
    monkeypatch.setattr(gemm_floor, "RATE_SECONDS", 0.002)
    monkeypatch.setattr(gemm_floor, "SQUARES", (64,))
    result = floors(str(bundle_path), str(store_path), 2)
    fusion, text = result["fusion"], result["text"]
    assert fusion["tiles"] == 2 and fusion["cells_per_tile"] > 0
    assert 0 < fusion["least_macs_per_tile"] < fusion["macs_per_tile"]
    assert 0 < fusion["least_floor_ms"]["fp32"] < fusion["floor_ms"]["fp32"]
    assert fusion["floor_ms"]["fp32"] < fusion["graph_cpu_ms"]  # the products at their best rate: part of the graph
    assert fusion["stored_read_ms"] > 0
    assert text["tokens"] >= 1 and text["macs_per_text"] > 0
    assert set(text["graph_cpu_ms"]) == {"fp32", "int8"} and text["floor_ms"]["fp32"] < text["graph_cpu_ms"]["fp32"]
    assert all(rate["gmacs_per_s"] > 0 for rate in result["best_rates"].values())


def test_the_floor_rows_set_the_products_against_the_targets_room():
    floor = {
        "cores": 2,
        "best_rates": {},
        "fusion": {
            "macs_per_tile": 150_000_000,
            "least_macs_per_tile": 110_000_000,
            "floor_ms": {"fp32": 3.0, "int8": 0.8},
            "least_floor_ms": {"fp32": 2.2, "int8": 0.6},
            "graph_cpu_ms": 6.5,
            "stored_read_ms": 0.04,
        },
        "text": {"tokens": 11, "macs_per_text": 117_000_000, "floor_ms": {"fp32": 2.2, "int8": 0.8}},
    }
    cold = {
        "soundscape": {"tiles_per_s": 300.0},
        "titiler": {"tiles_per_s": 50.0},
        "soundscape_known_text": {"tiles_per_s": 1000.0},
        "ratio_to_titiler": 6.0,
        "known_text_ratio_to_titiler": 20.0,
    }
    hour = {"level": 7, "cold_tile_hour_ms": 8.0, "cold_tile_default_ms": 1.0, "ratio": 8.0}
    hour["cpu_ms_per_tile"] = {"default": 1.0, "hour": 7.5, "hour_seen": 1.0}
    for measure in (floor, cold, hour):
        measure.update(load_before=1.0, load_after=1.5)
    text = markdown({**RESULT, "measures": {"cold": cold, "hour_tile": hour, "floor": floor}})
    # 15x TiTiler's 50 tiles/s leaves 1/750 - 1/1000 s = 0.333 ms of the box, 0.667 ms of CPU on 2 cores
    assert "| 2.2 ms of CPU in float32, 0.8 ms in int8 (117 M multiply-adds, 11 tokens) |" in text
    assert "0.333 ms of the box's time, 0.667 ms of CPU on its 2 cores | the int8 products alone are **1.2x**" in text
    assert "out of reach for this text tower here |" in text
    # (1.0 - 0.04 + 2.2) / 1.0 and (1.0 - 0.04 + 0.6) / 1.0
    assert "at least **3.2x** the default tile (target <= 3x); int8 products 1.6x |" in text
    assert "2.2 ms of CPU in float32 (110 M multiply-adds from the first attention on; 3.0 ms for the 150 M" in text
    cheap = {**floor, "text": {**floor["text"], "floor_ms": {"fp32": 0.5, "int8": 0.2}}}
    roomy = markdown({**RESULT, "measures": {"cold": cold, "floor": cheap}})
    assert "the int8 products alone are **0.3x** that room |" in roomy  # 0.2 / 0.667: no verdict


def test_a_path_that_is_not_a_bundle_exits_2_with_a_sentence(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--bundle", str(tmp_path / "none")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "is not a model bundle" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("repeat", ["0", "-3"])
def test_a_repeat_below_one_exits_2(repeat):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--repeat", repeat], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "--repeat must be at least 1" in done.stderr

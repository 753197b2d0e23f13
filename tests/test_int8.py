"""The int8 precision (runtime/contract.py): the text graph with int8 MatMuls, for CPU
serving. It must really be quantized, stay close to fp32, leave the cells' graphs as they are,
and keep its text queries apart from fp32's in every cache."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from scipy.stats import spearmanr

from model.export import INT8_MIN_COSINE
from runtime.bundle import Bundle
from runtime.contract import GRAPH_FILES, INT8_GRAPH_FILES
from tests.server_support import LAND_TILE, make_client

TEXTS = ["birdsong at dawn", "rain", "busy traffic in a city street", "waves on a beach at night"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_the_int8_text_graph_is_quantized_and_close_to_fp32(bundle_path):
    fp32, int8 = Bundle(bundle_path), Bundle(bundle_path, precision="int8")
    assert fp32.id == int8.id and int8.manifest["precisions"] == ["fp32", "int8"]
    ops = {node.op_type for node in onnx.load(str(bundle_path / INT8_GRAPH_FILES["text"])).graph.node}
    assert "MatMulIntegerToFloat" in ops and "ReduceMax" in ops, ops  # per-token activations (model/quantize.py)
    recorded = int8.manifest["export_parity_int8"]["text"]
    assert recorded["min_cosine"] >= INT8_MIN_COSINE

    mu32, lv32 = fp32.embed_texts(TEXTS)
    mu8, lv8 = int8.embed_texts(TEXTS)
    assert cosines(mu8, mu32).min() >= INT8_MIN_COSINE
    assert np.abs(mu8 - mu32).max() > 0, "the int8 graph ran"
    np.testing.assert_allclose(lv8, lv32, atol=0.1 * max(1.0, float(np.abs(lv32).max())))


def test_the_cells_graphs_stay_fp32(bundle_path):
    int8 = Bundle(bundle_path, precision="int8")
    assert {g: f for g, f in int8.graph_files.items() if g != "text"} == {
        g: f for g, f in GRAPH_FILES.items() if g != "text"
    }
    rgb = np.random.default_rng(0).integers(0, 256, (2, int8.image_size, int8.image_size, 3), dtype=np.uint8)
    gsd = np.full(2, 500.0, np.float32)
    np.testing.assert_array_equal(int8.embed_images(rgb, gsd), Bundle(bundle_path).embed_images(rgb, gsd))


def test_an_int8_server_maps_like_fp32_and_keeps_its_queries_apart(bundle_path, store_path):
    z, x, y = LAND_TILE
    with (
        make_client(bundle_path, store_path) as fp32,
        make_client(bundle_path, store_path, precision="int8") as int8,
    ):
        assert int8.get("/readyz").json()["precision"] == "int8"
        assert fp32.get("/readyz").json()["precision"] == "fp32"
        url = f"/tiles/WebMercatorQuad/{z}/{x}/{y}.npy?q=birdsong&layer=heatmap"
        a, b = fp32.get(url), int8.get(url)
        assert a.status_code == b.status_code == 200
        maps = [np.load(io.BytesIO(r.content)) for r in (a, b)]
        both = np.isfinite(maps[0]) & np.isfinite(maps[1])
        assert both.sum() > 100
        assert spearmanr(maps[0][both], maps[1][both]).statistic > 0.95
        assert a.headers["etag"] != b.headers["etag"], "a text query's tiles are cached per precision"
        png = f"/tiles/{z}/{x}/{y}.png?q=birdsong"
        assert int8.get(png).status_code == 200
        same = f"/tiles/{z}/{x}/{y}.png?layer=uncertainty"
        assert fp32.get(same).headers["etag"] == int8.get(same).headers["etag"], "no text: one tile"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_precision_the_bundle_lacks_is_refused_with_what_it_has(bundle_path, precision):
    from runtime.bundle import BundleError

    with pytest.raises(BundleError, match=f"no {precision} graphs: choose one of fp32, int8"):
        Bundle(bundle_path, precision=precision)

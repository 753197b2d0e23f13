"""benchmarks/source_maps.py: the corpus's own map of a class under each source, the verdict on a
model's maps, and the benchmark's code path on bundles with and without the corpus's sources
(the figures of the trained demo model come after its retraining)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import source_maps as sm
from corpus import rules, sources
from runtime.tiles import tile_of
from tests.conftest import FIXTURE_BBOX


def test_the_corpus_map_of_a_class_moves_with_the_source(demo_places):
    # Level-7 cells over the Black Forest and over Paris, at 7:00 in May.
    x, y = tile_of(np.array([48.0, 48.86]), np.array([8.2, 2.35]), np.array([7, 7]))
    maps = sm.reference_maps(demo_places, 7, x, y, month=5, hour=7.0)
    assert set(maps) == {*sources.NAMES, sm.UNKNOWN}
    for shares in maps.values():
        np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-6)
    birds, traffic = rules.CLASSES.index("birds"), rules.CLASSES.index("traffic")
    forest, paris = 0, 1
    assert maps["wildlife"][forest, birds] > maps["fieldrec"][forest, birds] > maps["citywalk"][forest, birds] > 0
    assert maps["citywalk"][paris, traffic] > maps["fieldrec"][paris, traffic] > maps["wildlife"][paris, traffic]
    named = np.stack([maps[n] for n in sources.NAMES])
    assert (named.min(axis=0) - 1e-9 <= maps[sm.UNKNOWN]).all() and (maps[sm.UNKNOWN] <= named.max(axis=0) + 1e-9).all()


def test_the_verdict_asks_for_the_change_the_corpus_says():
    rng = np.random.default_rng(0)
    strength = rng.gamma(0.5, 0.2, 500)
    reference = {
        "wildlife": strength,
        "citywalk": 0.4 * strength,
        "fieldrec": 0.7 * strength,
        sm.UNKNOWN: 0.8 * strength,
    }
    urban = rng.uniform(0, 0.3, 500) * (rng.uniform(size=500) < 0.5)

    def verdict(model):
        return sm.compare(model, reference, urban, "wildlife", "citywalk")

    follows = verdict({k: 0.5 * v + 0.01 for k, v in reference.items()})
    assert follows["passed"] and follows["contrast_spearman"] > 0.99 and follows["sign_agreement"] == 1.0
    ignores = verdict(dict.fromkeys(reference, strength))  # the source changes nothing
    assert not ignores["passed"] and ignores["contrast_spearman"] is None
    reversed_ = verdict({**reference, "wildlife": reference["citywalk"], "citywalk": reference["wildlife"]})
    assert not reversed_["passed"] and reversed_["sign_agreement"] == 0.0
    unrelated = verdict({**reference, "wildlife": reference["citywalk"] + rng.uniform(0, 0.1, 500)})
    assert not unrelated["passed"] and abs(unrelated["contrast_spearman"]) < 0.2
    without = sm.compare({sm.UNKNOWN: strength}, reference, urban, "wildlife", "citywalk")
    assert "passed" not in without and without["sources"][sm.UNKNOWN]["spearman"] > 0.99


@pytest.fixture(scope="module")
def source_world(imagery_path, tiny_model_config, tmp_path_factory):
    """A bundle of random weights whose source vocabulary is the corpus's, and its store (level 6
    of the fixture imagery)."""
    import torch

    from model.export import export_bundle
    from model.nn.psm import PSMModel
    from precompute.run import run
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery

    torch.manual_seed(0)
    model = PSMModel(tiny_model_config.model_copy(update={"sources": list(sources.NAMES)}))
    root = tmp_path_factory.mktemp("source-world")
    export_bundle(model, root / "bundle", calibration=(4.0, -2.0), name="sources")
    run(Imagery(imagery_path), Bundle(root / "bundle"), [6], FIXTURE_BBOX, root / "store", progress=False)
    return root / "bundle", root / "store"


def _engine(bundle, store):
    from runtime.bundle import Bundle
    from server.engine import Engine
    from store.reader import Store

    return Engine(Bundle(bundle), Store(store))


@pytest.mark.slow  # exports a bundle and builds its store: about a minute
def test_the_benchmark_measures_every_source_a_bundle_knows(source_world, demo_places):
    engine = _engine(*source_world)
    result = sm.run(engine, demo_places, engine.store.levels[6], month=5, hour=7.0)
    assert result["missing_sources"] == [] and result["land_cells"] > 30
    assert isinstance(result["passed"], bool)
    for prompt in ("birdsong", "traffic"):
        p = result["prompts"][prompt]
        assert set(p["sources"]) == {*sources.NAMES, sm.UNKNOWN}
        assert p["contrast_spearman"] is not None and p["material_cells"] > 0
    maps = {name: s["mean"] for name, s in result["prompts"]["birdsong"]["sources"].items()}
    assert len(set(maps.values())) == len(maps)  # each source is its own fusion: the maps differ
    assert "wildlife - citywalk" in sm.markdown(result)


def test_the_benchmark_reports_a_bundle_without_the_sources(bundle_path, store_path, demo_places):
    engine = _engine(bundle_path, store_path)  # the fixture bundle knows "demo" and "field"
    result = sm.run(engine, demo_places, engine.store.levels[6], month=5, hour=7.0)
    assert result["missing_sources"] == list(sources.NAMES) and result["passed"] is None
    assert set(result["prompts"]["traffic"]["sources"]) == {sm.UNKNOWN}
    assert "no contrast, no verdict" in sm.markdown(result)

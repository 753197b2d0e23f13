"""The ablation variants change only what they name: a loss's kind keeps the base's pair weights."""

import copy
from pathlib import Path

from benchmarks.demo_ablations import VARIANTS, corpora, variant_config
from model.commands import load_config

BASE = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


def test_infonce_keeps_the_base_loss_weights() -> None:
    base = copy.deepcopy(BASE)
    base["train"]["loss"] = {"weights": {"sat_audio": 0.5, "sat_text": 1.5, "audio_text": 0.2}}
    config = variant_config("infonce", base, melcnn_steps=1, seed=None, steps=None)
    assert config.train.loss.kind == "infonce"
    assert dict(config.train.loss.weights) == {"sat_audio": 0.5, "sat_text": 1.5, "audio_text": 0.2}


def test_a_weights_variant_changes_only_the_weights() -> None:
    more = variant_config("more_sat_text", BASE, melcnn_steps=1, seed=57, steps=200)
    plain = variant_config("pcmepp", BASE, melcnn_steps=1, seed=57, steps=200)
    assert dict(more.train.loss.weights) == {"sat_audio": 0.5, "sat_text": 1.5, "audio_text": 0.5}
    assert more.train.loss.kind == plain.train.loss.kind
    assert (more.train.steps, more.train.seed, more.model) == (plain.train.steps, plain.train.seed, plain.model)


def test_every_variant_builds_a_config_with_the_seed_and_steps() -> None:
    for name in VARIANTS:
        config = variant_config(name, BASE, melcnn_steps=3, seed=56, steps=100)
        assert config.train.seed == 56
        assert config.train.steps == (3 if name == "melcnn" else 100)


def test_a_vib_variant_changes_only_the_vib_weight() -> None:
    plain = variant_config("pcmepp", BASE, melcnn_steps=1, seed=56, steps=200)
    for name, beta in (("vib_more", 1e-3), ("vib_most", 1e-2)):
        vib = variant_config(name, BASE, melcnn_steps=1, seed=56, steps=200)
        assert vib.train.loss.vib_beta == beta != plain.train.loss.vib_beta
        assert vib.train.loss.model_copy(update={"vib_beta": plain.train.loss.vib_beta}) == plain.train.loss
        assert vib.model == plain.model


def test_a_variant_on_its_own_corpus_gets_its_own_ceiling() -> None:
    """The ceiling was always computed on the base config's corpus, which a run of even_places
    alone neither needs nor has."""
    assert list(corpora(BASE, ["even_places"])) == ["ceiling-even_places"]
    assert corpora(BASE, ["even_places"])["ceiling-even_places"]["path"] == "data/corpus-even-places"
    both = corpora(BASE, ["pcmepp", "wide", "town_apart", "even_places"])
    assert list(both) == ["ceiling", "ceiling-town_apart", "ceiling-even_places"]
    assert both["ceiling"] == BASE["data"]

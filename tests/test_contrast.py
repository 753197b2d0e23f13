"""Issue 14: the contrast layer (a query's log-odds against everyday sounds at the same cell), an
InfoNCE bundle scored as it was trained (cosine, no untrained log-variances), and the
discrimination benchmark's measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from benchmarks.discrimination import (
    MIN_PROMPTS,
    PROMPTS,
    SERVED_LAYERS,
    between_classes,
    beyond_truth,
    caption_texts,
    crowding,
    day_round,
    decomposition,
    discrimination,
    familiarity,
    first_direction,
    layer_maps,
    map_cell_area,
    pairwise,
    partial_spearman,
    read_prompts,
    spearman_matrix,
    town_pairwise,
    without_fit,
)
from runtime.bundle import Bundle
from runtime.scoring import (
    CONTRAST_WEIGHT,
    COSINE,
    CSD,
    REFERENCE_PROMPTS,
    csd,
    match_probability,
    scoring_kind,
    uncertainty,
)
from server.engine import CellEmbeddings, Engine, QueryMetadata
from tests.server_support import decode_npy, make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


@pytest.fixture(scope="module")
def level_cells(client):
    """The served bundle and store, and the finest level's cells under the default metadata."""
    service = client.app.state.service
    level = service.store.levels[service.store.maxlevel]
    return service.bundle, service.store, CellEmbeddings(np.asarray(level.arrays.mu), np.asarray(level.arrays.s))


def logit(bundle: Bundle, text: str, cells: CellEmbeddings) -> np.ndarray:
    """-a CSD + b of one text at the cells, computed here from the bundle's text graph."""
    mu_q, logvar_q = bundle.embed_texts([text])
    a, b = bundle.calibration
    return -a * csd(mu_q[0], float(uncertainty(logvar_q)[0]), cells.mu.astype(np.float32), cells.s) + b


def test_contrast_is_the_logit_minus_the_reference_prompts_mean_logit(level_cells):
    bundle, store, cells = level_cells
    engine = Engine(bundle, store)
    query = engine.embed_text("waves on the open ocean")
    baseline = np.mean([logit(bundle, text, cells) for text in REFERENCE_PROMPTS], axis=0)
    expected = logit(bundle, "waves on the open ocean", cells) - CONTRAST_WEIGHT * baseline
    assert np.allclose(engine.values(cells, "contrast", query), expected, atol=2e-3)
    # it discounts the same share of every sound's logit at the cell: a cell's own S_i counts
    # (1 - CONTRAST_WEIGHT) as much as in the heatmap's logit
    shifted = CellEmbeddings(cells.mu, cells.s + 0.1)
    a, _ = bundle.calibration
    change = engine.values(shifted, "contrast", query) - engine.values(cells, "contrast", query)
    assert np.allclose(change, -(1 - CONTRAST_WEIGHT) * a * 0.1, atol=1e-3)


def test_the_nearest_references_baseline_leans_on_the_references_like_the_query(level_cells, monkeypatch):
    """Weighted evenly (sharpness 0) it is the served contrast; sharpened, a query worded as one
    of the references is set mostly against that reference's own map."""
    from benchmarks import discrimination

    bundle, store, cells = level_cells
    engine = Engine(bundle, store)
    prompts = ("waves on the open ocean", REFERENCE_PROMPTS[0])
    monkeypatch.setattr(discrimination, "NEAREST_SHARPNESS", 0.0)
    even = layer_maps(engine, cells, prompts)
    assert np.allclose(even["contrast_against_the_nearest_references"], even["contrast"], atol=2e-3)
    monkeypatch.setattr(discrimination, "NEAREST_SHARPNESS", 1000.0)
    sharp = layer_maps(engine, cells, prompts)["contrast_against_the_nearest_references"]
    own = logit(bundle, REFERENCE_PROMPTS[0], cells)
    assert np.allclose(sharp[:, 1], (1 - CONTRAST_WEIGHT) * own, atol=2e-3)
    assert not np.allclose(sharp[:, 0], even["contrast"][:, 0], atol=1e-2)


def test_contrast_tiles_are_served_keyed_and_described(client, level_cells):
    params = {"q": "waves on the open ocean"}
    contrast = client.get("/tiles/WebMercatorQuad/1/1/0.npy", params={**params, "layer": "contrast"})
    heatmap = client.get("/tiles/WebMercatorQuad/1/1/0.npy", params={**params, "layer": "heatmap"})
    assert contrast.status_code == heatmap.status_code == 200
    assert contrast.headers["etag"] != heatmap.headers["etag"]
    values, probabilities = decode_npy(contrast.content), decode_npy(heatmap.content)
    drawn = ~np.isnan(values)
    assert drawn.any() and np.array_equal(drawn, ~np.isnan(probabilities))
    assert not np.allclose(values[drawn], probabilities[drawn]), "contrast is not the match probability"
    assert values[drawn].min() < 0 or values[drawn].max() > 1, "a log-odds, not a probability"

    png = client.get("/tiles/1/1/0.png", params={**params, "layer": "contrast"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    doc = client.get("/tilejson.json", params={**params, "layer": "contrast"}).json()
    assert "log-odds" in doc["scale"]["units"] and "contrast" in doc["scale"]["method"]
    assert doc["scale"]["min"] < doc["scale"]["max"]
    assert "layer=contrast" in doc["tiles"][0]

    plain = client.get("/WMTSCapabilities.xml", params={**params, "layer": "heatmap"}).text
    asked = client.get("/WMTSCapabilities.xml", params={**params, "layer": "contrast"}).text
    assert "<ows:Identifier>contrast</ows:Identifier>" not in plain
    assert "<ows:Identifier>contrast</ows:Identifier>" in asked and "log-odds" in asked


def test_contrast_needs_a_query_and_unknown_layers_are_refused(client):
    missing = client.get("/tiles/1/1/0.png", params={"layer": "contrast"})
    assert missing.status_code == 422 and "q" in missing.json()["detail"]
    bad = client.get("/tiles/1/1/0.png", params={"q": "birdsong", "layer": "lift"})
    assert bad.status_code == 422 and "contrast" in bad.json()["detail"]


@pytest.mark.parametrize(
    ("training", "kind"),
    [
        ({"config": {"train": {"loss": {"kind": "pcmepp"}}}}, CSD),
        ({"config": {"train": {"loss": {"kind": "infonce"}}}}, COSINE),
        ({"config": "configs/tiny.yaml"}, CSD),  # a random-weights export records the config's path
        ({}, CSD),
    ],
)
def test_scoring_kind_reads_the_loss_the_manifest_records(training, kind):
    assert scoring_kind({"training": training}) == kind


def test_an_infonce_bundle_is_scored_by_cosine_without_log_variances(bundle_path, store_path, level_cells):
    bundle, store, cells = level_cells
    infonce = Bundle(bundle_path)
    infonce.manifest["training"] = {"config": {"train": {"loss": {"kind": "infonce"}}}}
    engine = Engine(infonce, store)
    assert engine.scoring == COSINE
    query = engine.embed_text("birdsong")
    a, b = infonce.calibration
    dots = cells.mu.astype(np.float32) @ query.mu
    expected = match_probability(2.0 - 2.0 * dots, a, b)
    assert np.allclose(engine.values(cells, "heatmap", query), expected, atol=1e-6)
    noisier = CellEmbeddings(cells.mu, cells.s * 3.0 + 1.0)
    assert np.allclose(engine.values(noisier, "heatmap", query), expected, atol=1e-6)
    # /search's FAISS path ranks by mu_q . mu_i alone, as the fused-cells scan does
    level = store.levels[store.maxlevel]
    rows, _ = engine.top_k(level, None, query, 10)
    assert np.array_equal(rows, np.argsort(-dots, kind="stable")[:10])
    scanned, _ = engine.top_k(level, engine.embeddings(level, np.arange(len(level)), QueryMetadata()), query, 10)
    assert np.array_equal(scanned, rows)
    # the PCME++ bundle of the same weights does use S: its ranking differs
    assert not np.allclose(Engine(bundle, store).values(noisier, "heatmap", query), expected, atol=1e-3)


def test_pairwise_and_the_uncertainty_figure_on_known_maps():
    rng = np.random.default_rng(0)
    base = rng.normal(size=500)
    s = rng.normal(size=500)
    alike = np.column_stack([base, base + 0.01 * rng.normal(size=500), rng.normal(size=500)])
    result = pairwise(alike)
    assert result["max"] > 0.99 and result["max_pair"] == (0, 1)
    assert result["mean"] == pytest.approx((result["max"] + 2 * 0.0) / 3, abs=0.1)
    tied = discrimination(np.column_stack([-s, base]), s, ("confidence", "other"))
    assert tied["spearman_with_minus_uncertainty"]["confidence"] == pytest.approx(1.0)
    assert tied["max_abs_spearman_with_minus_uncertainty"] == pytest.approx(1.0)
    assert not tied["meets_targets"]


def test_a_weighted_spearman_counts_each_row_as_often_as_its_weight():
    """Integer weights give the Spearman of the rows repeated that many times (ties at their
    average rank); weights of 1 give scipy's."""
    rng = np.random.default_rng(3)
    maps = np.column_stack([rng.normal(size=40), rng.integers(0, 5, size=40), rng.normal(size=40)])
    maps[:, 2] += maps[:, 0]
    weights = rng.integers(1, 6, size=40).astype(float)
    repeated = np.repeat(maps, weights.astype(int), axis=0)
    assert np.allclose(spearman_matrix(maps, weights), spearmanr(repeated).statistic)
    assert np.allclose(spearman_matrix(maps, np.ones(40)), spearmanr(maps).statistic)
    s = -maps[:, 0]
    weighted = discrimination(maps, s, ("a", "b", "c"), weights)
    again = discrimination(repeated, -repeated[:, 0], ("a", "b", "c"))
    assert weighted["spearman_with_minus_uncertainty"] == pytest.approx(again["spearman_with_minus_uncertainty"])
    assert weighted["mean_pairwise_spearman"] == pytest.approx(again["mean_pairwise_spearman"])
    assert weighted["max_pair"] == again["max_pair"] == ["a", "c"]
    # a cell with more weight than all others together pulls the figure: not the plain Spearman's
    heavy = np.where(np.arange(40) < 20, 1.0, 50.0)
    assert not np.isclose(spearman_matrix(maps, heavy)[0, 2], spearmanr(maps).statistic[0, 2], atol=1e-3)


def test_a_prompts_file_is_read_and_lists_that_cannot_measure_are_refused(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my sounds\n\n" + "\n".join(f"  {p}  " for p in PROMPTS) + "\n", encoding="utf-8")
    assert read_prompts(path) == PROMPTS
    other = read_prompts(Path(__file__).resolve().parent.parent / "benchmarks" / "discrimination_prompts_other.txt")
    assert len(other) >= MIN_PROMPTS and not set(other) & set(PROMPTS)
    for text, reason in (
        ("\n".join(PROMPTS[: MIN_PROMPTS - 1]), "at least 12"),
        ("\n".join((*PROMPTS, PROMPTS[0])), "twice"),
        ("\n".join((*PROMPTS, REFERENCE_PROMPTS[0])), "reference prompts"),
        ("\n".join((*PROMPTS, "x" * 201)), "over 200 characters"),
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=reason):
            read_prompts(path)


def test_the_benchmark_refuses_a_bad_prompts_file_with_exit_code_2(tmp_path, capsys):
    from benchmarks import discrimination

    path = tmp_path / "prompts.txt"
    path.write_text("birdsong\n", encoding="utf-8")
    for argv in (["--prompts", str(path)], ["--prompts", str(tmp_path / "missing.txt")]):
        with pytest.raises(SystemExit) as exit_:
            discrimination.main(argv)
        assert exit_.value.code == 2
    assert "at least 12" in capsys.readouterr().err


def test_partial_spearman_removes_what_the_truth_explains():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=2000)
    s = -(truth + 0.5 * rng.normal(size=2000))  # the model is sure where the sound is
    faithful = truth + 0.1 * rng.normal(size=2000)  # follows -S only through the truth
    confident = -s + 0.1 * rng.normal(size=2000)  # follows -S itself
    assert spearmanr(faithful, -s).statistic > 0.8
    assert abs(partial_spearman(faithful, -s, truth)) < 0.1
    assert partial_spearman(confident, -s, truth) > 0.8
    figures = beyond_truth(np.column_stack([faithful, confident]), np.column_stack([truth, truth]), s, ("a", "b"))
    assert figures["max_abs_partial_spearman_with_minus_uncertainty"] == pytest.approx(
        figures["partial_spearman_with_minus_uncertainty_given_class_map"]["b"]
    )
    assert np.isnan(partial_spearman(truth, -s, truth))  # the map is its truth: nothing left to explain


def test_without_fit_leaves_nothing_linear_in_s():
    rng = np.random.default_rng(5)
    s = rng.gamma(2.0, size=400)
    maps = np.column_stack([3 * s + rng.normal(size=400), -s + 5, rng.normal(size=400)])
    left = without_fit(maps, s)
    for j in range(maps.shape[1]):
        removed = maps[:, j] - left[:, j]  # a multiple of s - mean(s)
        assert np.allclose(removed, removed[0] / (s[0] - s.mean()) * (s - s.mean()))
    for j in (0, 2):
        assert abs(np.corrcoef(left[:, j], s)[0, 1]) < 1e-9
    assert np.std(left[:, 1]) < 1e-9  # a map that is all S leaves a constant


def test_first_direction_is_the_cells_widest_spread():
    rng = np.random.default_rng(4)
    mu = rng.normal(size=(1000, 3)) * np.array([0.1, 3.0, 0.2]) + 5.0
    assert abs(first_direction(mu)[1]) > 0.99


def test_crowding_counts_the_samples_in_each_cell(tmp_path):
    """Four cells of level 2 with 3, 2, 1 and 0 samples: S falling with the count follows it
    perfectly, and the cells' means spread along the count too. The two crowded cells lie in
    the small row past 66 N, so per km^2 they are more crowded still, and the count runs against
    the cells' areas."""
    from types import SimpleNamespace

    lat = np.array([70.0, 75.0, 80.0, 70.0, 75.0, 40.0])
    lon = np.array([-170.0, -150.0, -120.0, -80.0, -20.0, -150.0])  # (0,0) x3, (1,0) x2, (0,1) x1
    np.savez(tmp_path / "samples.npz", lat=lat, lon=lon)
    x, y = np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    mu = np.column_stack([np.array([3.0, 2.0, 1.0, 0.0]), np.zeros(4)])
    cells = SimpleNamespace(s=np.array([0.1, 0.2, 0.3, 0.4]), mu=mu)
    out = crowding(tmp_path / "samples.npz", 2, x, y, cells, map_cell_area(2, y))
    assert out["spearman_with_minus_s"] == pytest.approx(1.0)
    assert out["abs_spearman_with_first_direction"] == pytest.approx(1.0)
    assert out["cells_without_samples"] == pytest.approx(0.25)
    assert out["per_area_spearman_with_minus_s"] == pytest.approx(1.0)
    assert out["spearman_with_cell_area"] < -0.8


def test_familiarity_finds_each_prompts_nearest_caption(level_cells, tmp_path):
    """A prompt that is a caption word for word is at cosine 1 from the corpus (through the
    bundle's text graph); captions of samples without imagery are not the corpus's. Prompts whose
    maps follow -S more as they lie farther from every caption give a Spearman of -1."""
    from types import SimpleNamespace

    bundle = level_cells[0]
    captions = ["Birdsong in the trees", "Waves rolling on the open ocean", "Busy traffic in the street"]
    np.savez(tmp_path / "samples.npz", captions=np.array([*captions, "Unused"]), keep=np.array([1, 1, 1, 0], bool))
    assert caption_texts(tmp_path / "samples.npz") == sorted(captions)
    out = familiarity(bundle, captions, {"Birdsong in the trees": 0.1, "church bells ringing": -0.5}, batch=2)
    cosine = out["nearest_caption_cosine"]
    assert out["captions"] == 3 and cosine["Birdsong in the trees"] == pytest.approx(1.0, abs=1e-5)
    assert cosine["church bells ringing"] < 1 - 1e-3

    def embed_texts(texts):  # a text's mean at an angle of its first number (degrees) from "a 0"
        angles = np.radians([float(t.split()[1]) for t in texts])
        return np.column_stack([np.cos(angles), np.sin(angles)]), None

    far = familiarity(SimpleNamespace(embed_texts=embed_texts), ["a 0"], {"b 10": 0.1, "c 40": -0.3, "d 80": 0.7})
    assert far["nearest_caption_cosine"]["d 80"] == pytest.approx(np.cos(np.radians(80)))
    assert far["spearman_with_abs_spearman_with_minus_uncertainty"] == pytest.approx(-1.0)


def test_the_day_round_map_is_the_mean_of_the_hourly_maps(client):
    """A contrast logit is linear in a cell's (mu, S), so the contrast map of the cells' (mu, S)
    averaged over the 24 hours equals the mean of the 24 hourly contrast maps (the fixture store
    holds no hourly fusions: each hour is fused)."""
    service = client.app.state.service
    engine, level = service.engine, service.store.levels[service.store.maxlevel]
    rows = np.arange(min(40, len(level)))
    query = engine.embed_text("birdsong")
    hourly = [
        engine.values(engine.embeddings(level, rows, QueryMetadata(hour=h)), "contrast", query) for h in range(24)
    ]
    seen = {}

    def condition_of(cells):
        seen["cells"] = cells
        return {}

    out = day_round(
        engine, level, rows, np.asarray(level.arrays.s[rows]), ("birdsong", "waves on a beach"), condition_of
    )
    day = engine.values(seen["cells"], "contrast", query)
    np.testing.assert_allclose(day, np.mean(hourly, axis=0), rtol=1e-4, atol=1e-4)
    assert not np.allclose(day, hourly[6], atol=1e-3)  # the hours differ: the mean is not any one of them
    assert 0 <= out["contrast_max_abs_spearman_with_minus_default_uncertainty"] <= 1
    assert -1 <= out["s_spearman_with_default_s"] <= 1


def test_a_map_cell_shrinks_as_the_squared_cosine_of_its_latitude():
    from runtime.tiles import tile_centres

    y = np.arange(64)
    area = map_cell_area(6, y)
    _, lat = tile_centres(6, np.zeros(64), y)
    assert area[31] == area[32] == pytest.approx(1.0) and area == pytest.approx(area[::-1])
    assert area == pytest.approx(np.cos(np.radians(lat)) ** 2 / np.cos(np.radians(lat[31])) ** 2, rel=0.02)
    assert 0.2 < area[np.argmin(np.abs(lat - 60))] < 0.3


def test_between_classes_pairs_every_class_that_varies():
    rng = np.random.default_rng(3)
    a = rng.normal(size=200)
    labels = np.column_stack([a, np.zeros(200), 2 * a + 1, -a])
    pairs = between_classes(labels, ("w", "never", "x", "y"))
    assert pairs == pytest.approx({"w / x": 1.0, "w / y": -1.0, "x / y": -1.0})
    assert between_classes(labels[:, :3], ("w", "never", "x")) == pytest.approx({"w / x": 1.0})
    assert between_classes(labels[:, :2], ("w", "never")) == {}


def test_town_pairwise_averages_the_town_classes_pairs_only():
    rng = np.random.default_rng(2)
    town, other = rng.normal(size=300), rng.normal(size=300)
    maps = np.column_stack([town, other, town + 0.01 * rng.normal(size=300), -other, town])
    names = ("traffic", "birds", "aircraft", "wind", "harbour")
    assert town_pairwise(maps, names) > 0.99  # the three town columns are alike; birds and wind are not counted
    assert np.isnan(town_pairwise(maps[:, [0, 3]], ("traffic", "wind")))  # one town class: no pair


def test_decomposition_finds_a_shared_cell_effect():
    rng = np.random.default_rng(1)
    cells, prompts = 400, 6
    shared = rng.normal(size=cells)
    own = 0.1 * rng.normal(size=(cells, prompts))
    logits = shared[:, None] + own + np.arange(prompts)[None, :]
    mu, mu_q = rng.normal(size=(cells, 4)), rng.normal(size=(prompts, 4))
    d = decomposition(logits, rng.normal(size=cells), mu, mu_q, 1.0)
    assert d["share_cell_effect"] + d["share_prompt_effect"] + d["share_interaction"] == pytest.approx(1.0)
    assert d["rank_relevant_share_cell_effect"] > 0.95
    flat = decomposition(own, rng.normal(size=cells), mu, mu_q, 1.0)
    assert flat["rank_relevant_share_cell_effect"] < 0.3


@pytest.mark.slow
def test_the_discrimination_benchmark_runs_on_a_store(bundle_path, store_path, places_file, tmp_path, capsys):
    """benchmarks/discrimination.py end to end on the fixture's bundle and store (Europe, levels
    3-6, no stored fusions: hour 6 is fused), with the corpus's real place rasters."""
    import json

    from benchmarks import discrimination

    out = tmp_path / "discrimination.json"
    argv = ["--bundle", str(bundle_path), "--store", str(store_path), "--places", str(places_file)]
    argv += ["--precision", "int8"]  # the queries through the bundle's int8 text graph
    other = Path(discrimination.__file__).with_name("discrimination_prompts_other.txt")
    assert (
        discrimination.main([*argv, "--level", "6", "--hours", "6", "--json", str(out), "--prompts", str(other)]) == 0
    )
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["land_cells"] >= 10 and tuple(result["prompts"]) == discrimination.read_prompts(other)
    assert result["precision"] == "int8"
    for cond in (result["default"], result["hours"]["6"]):
        rescorings = {
            "z_score_against_references",
            "log_share_among_references",
            "without_first_principal_direction",
            "contrast_without_its_fit_on_s",
            "contrast_against_the_nearest_references",
        }
        assert {"heatmap", "contrast", "heatmap_without_s_i", *rescorings} <= set(cond["layers"])
        town = cond["corpus_class_maps"]["town_mean_pairwise_spearman"]  # null where under two town classes are present
        assert town is None or -1 <= town <= 1
        for d in cond["class_prompt_layers"].values():
            assert 0 <= d["max_abs_partial_spearman_with_minus_uncertainty"] <= 1
        assert cond["shared_axis"]["shared_axis_spearman_with_minus_uncertainty"] >= 0  # signed to rise with -S
        for d in cond["shared_axis"]["classes"].values():
            assert -1 <= d["text_cosine_with_shared_axis"] <= 1 and -1 <= d["truth_spearman_with_shared_axis"] <= 1
        for d in cond["layers"].values():
            assert -1 <= d["mean_pairwise_spearman"] <= d["max_pairwise_spearman"] <= 1
            assert list(d["spearman_with_minus_uncertainty"]) == result["prompts"]
    for cond in (result["default"], result["hours"]["6"]):
        assert set(cond["layers_per_km2"]) == {"heatmap", "contrast"}  # each cell counted by its area
        for d in cond["layers_per_km2"].values():
            assert -1 <= d["mean_pairwise_spearman"] <= d["max_pairwise_spearman"] <= 1
    # the fixture store names its imagery, so the carriers of S's tie to the area are measured
    carried = result["cause"]["area_tie_carriers"]
    assert carried["cells_read"] == result["land_cells"]
    assert carried["served"] == pytest.approx(result["cause"]["cell_area_spearman_with_minus_s"], abs=1e-6)
    assert carried["location_absent"] != carried["served"] and -1 <= carried["mean_colour_only"] <= 1
    day = result["day_round"]  # each cell's (mu, S) averaged over the 24 hours
    assert set(SERVED_LAYERS) <= set(day["layers"]) and list(day["retrieval"]) == list(result["default"]["retrieval"])
    assert -1 <= day["layers"]["contrast"]["mean_pairwise_spearman"] <= 1
    assert 0 <= day["contrast_max_abs_spearman_with_minus_default_uncertainty"] <= 1
    used = result["cause"]["location_use"]
    assert list(used["spearman_with_location_absent"]) == result["prompts"]
    assert -1 <= used["least_spearman_with_location_absent"] <= used["median_spearman_with_location_absent"] < 1
    assert used["median_variance_share_of_location"] > 0  # the fixture's random fusion reads the location
    printed = capsys.readouterr().out
    assert "Spearman of a cell's area with -S: served" in printed and "| contrast |" in printed
    assert "samples_per_cell" not in result["cause"]  # the place rasters here have no corpus's samples beside them
    shares = result["cause"]["decomposition_prompts"]
    assert sum(shares[k] for k in ("share_cell_effect", "share_prompt_effect", "share_interaction")) == pytest.approx(1)
    # the fusion graph run here under the default metadata gives the store's own S
    assert result["uncertainty"]["s_recomputed_max_abs_diff"] < 1e-4


def test_town_towers_figures_on_known_vectors():
    from benchmarks.town_towers import TOWN, nearest_centroid, town_vs_other

    rng = np.random.default_rng(3)
    other = [c for c in range(len(TOWN) + 8) if c not in TOWN][:4]
    town_classes = [int(c) for c in TOWN[:3]]
    classes = town_classes + other
    shared = rng.normal(size=16)
    rows = np.stack([shared + 0.05 * rng.normal(size=16) if c in TOWN else rng.normal(size=16) for c in classes])
    figures = town_vs_other(rows, classes)
    assert figures["town_pairs"] > 0.95 > 0.5 > abs(figures["other_pairs"])
    centres = {c: 10 * rng.normal(size=8) for c in town_classes}
    lead = np.repeat(town_classes, 40)
    features = np.stack([centres[c] + rng.normal(size=8) for c in lead])
    assert nearest_centroid(features, lead, town_classes) == 1.0
    assert nearest_centroid(rng.normal(size=features.shape), lead, town_classes) < 0.7  # noise: near chance (1/3)

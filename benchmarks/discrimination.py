"""Do maps of different sounds differ? Issue 14's discrimination benchmark, and the measurements
that find why they did not.

    python benchmarks/discrimination.py [--data-dir data/demo] [--places data/corpus/places.npz]
                                        [--level 6] [--json benchmarks/results/discrimination.json]
                                        [--prompts FILE]

--prompts measures another list of distinct sounds instead of PROMPTS (one per line; blank lines
and lines starting with # are skipped; at least 12, none a reference prompt of the contrast).

Every map is one store level's cells (level 6 = what a zoom-2 tile draws: 16 x 16 cells per
tile) under the default metadata, scored in process through the server's own Engine, compared
over the land cells (a majority of 16 x 16 points on land in the corpus's place rasters).

Per layer (heatmap = the match probability sigmoid(-a CSD + b), the paper's -CSD map;
contrast = its log-odds against the reference prompts; diagnostics without S_i): over the
PROMPTS, the mean and max pairwise Spearman of the maps, each map's Spearman with -S (the
uncertainty layer), and text -> cell retrieval: for each sound class of the demo corpus's rules
(corpus/rules.py), its prompt ranks the land cells, a positive is a cell where the rules give the
class a weight >= 0.1 averaged over the cell (corpus.build.cell_rules, 8 x 8 points) and over
4 months x 4 hours; AUC per class, mean over the classes with >= 10 positives (all land cells,
and only the cells of the held-out level-4 regions of the demo training split). The served
layers' three figures again with each cell counted by its area on the ground (a web-mercator
map gives polar land most of its cells).

Cause: a two-way decomposition of the logit maps of the prompts over land (logit = -a d =
cell effect + prompt effect + interaction), with the cell effect split into its -a S_i part
and its 2 a mu_i . mean(mu_q) part; the prompts' text embeddings (mean pairwise cosine of mu_q);
the corpus's own class maps (how alike the rules' maps of the classes are, every pair's Spearman,
and each class's positive cells), and of the town
classes' (corpus/sources.py's "town" group, whose sounds share places and clips) against the
model's maps of their class prompts; the cells' mu (share of variance in the first principal
components). For the class prompts, how much a map follows -S beyond what its own class's rules
map does: the partial Spearman of the map and -S given the rules' map (0 when the map follows S
only where the sound is), and why some do: how each class prompt's text mean points along the
cells' first principal direction and how its true map follows the cells along it. What carries
S's tie to the map cell's area: the tie again with the fuse graph given no location, with the
cells' GSDs shuffled, and with each cell's image its mean colour (where the store's imagery is
found). How much of the contrast maps the location token makes (the maps with it and without).
Whether the contrast maps that follow -S are those of prompts unlike every caption of the
corpus (where its samples.npz lies beside the place rasters). The day round: the maps of a
sound's log-odds averaged over the 24 hours, against the default metadata's.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy.special import logsumexp, softmax
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.demo_quality import (
    MAJORITY,
    POSITIVE_WEIGHT,
    Progress,
    add_world_arguments,
    auc,
    cell_places,
    cell_xy,
    class_prompt,
    open_world,
    region_split,
)
from benchmarks.provenance import dumps
from runtime.scoring import uncertainty

# Distinct sounds (issue 14: at least 12). None is one of runtime.scoring.REFERENCE_PROMPTS.
PROMPTS = (
    "birdsong",
    "busy traffic in a city street",
    "waves on a beach",
    "church bells ringing",
    "a crowded street market",
    "ice cracking on a frozen lake",
    "frogs croaking at night",
    "wind in desert dunes",
    "rain on leaves in a rainforest",
    "cows and sheep on a farm",
    "an airport with planes taking off",
    "a mosque call to prayer",
    "a construction site",
    "a ship's horn in a harbour",
)
MIN_PROMPTS = 12
MAX_PROMPT_CHARS = 200
TARGETS = {"mean_pairwise": 0.25, "max_pairwise": 0.8, "abs_spearman_uncertainty": 0.4}
# Times the rules' class weights are averaged over for the default (unknown) metadata.
LABEL_MONTHS = (1, 4, 7, 10)
LABEL_HOURS = (0, 6, 12, 18)
MIN_POSITIVES = 10
CONTRAST_SWEEP = (0.25, 0.75, 1.0)
SERVED_LAYERS = ("heatmap", "contrast")
# The ties `carriers` measures, in the order the markdown prints them.
CARRIERS = ("served", "location_absent", "gsd_shuffled", "mean_colour_only", "served_without_bright_cells")
# A cell whose image's mean pixel value (0-255) is above this is snow or ice in the demo imagery.
BRIGHT = 180
MIN_CELLS = 10  # the fewest cells a Spearman over a subset of them is reported for
# How sharply the query-weighted baseline leans on the reference sounds nearest the query (cosine).
NEAREST_SHARPNESS = 10.0


def read_prompts(path: Path) -> tuple[str, ...]:
    """The prompts of a --prompts file; ValueError with the reason when the list cannot measure
    discrimination (too few, repeated, too long, or a reference prompt, whose contrast map is
    discounted by itself)."""
    from runtime.scoring import REFERENCE_PROMPTS

    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = tuple(line for line in lines if line and not line.startswith("#"))
    if len(set(prompts)) != len(prompts):
        raise ValueError(f"{path} names a prompt twice")
    if len(prompts) < MIN_PROMPTS:
        raise ValueError(f"{path} holds {len(prompts)} prompts; the benchmark needs at least {MIN_PROMPTS}")
    if long := [p for p in prompts if len(p) > MAX_PROMPT_CHARS]:
        raise ValueError(f"{path}: a prompt is over {MAX_PROMPT_CHARS} characters: {long[0][:40]!r}...")
    if shared := sorted(set(prompts) & set(REFERENCE_PROMPTS)):
        raise ValueError(f"{path}: {shared[0]!r} is one of the contrast's reference prompts")
    return prompts


def spearman_matrix(columns: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Spearman of every pair of columns (at least two), as a square matrix: spearmanr gives two
    columns' one coefficient as a scalar. Given a weight per row, the weighted Spearman: the
    Pearson correlation, under those weights, of the weighted ranks."""
    if weights is not None:
        ranks = np.column_stack([weighted_ranks(c, weights) for c in np.asarray(columns).T])
        cov = np.cov(ranks, rowvar=False, aweights=weights)
        spread = np.sqrt(np.diag(cov))
        return cov / np.outer(spread, spread)
    rho = spearmanr(columns).statistic
    return np.array([[1.0, rho], [rho, 1.0]]) if np.ndim(rho) == 0 else rho


def weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each value's rank as the weight of the values below it plus half the weight of its own
    (tied values share it): with every weight 1, scipy's average ranks less a half."""
    distinct, inverse = np.unique(values, return_inverse=True)
    per_value = np.bincount(inverse, weights=weights, minlength=len(distinct))
    return (np.cumsum(per_value) - per_value / 2)[inverse]


def pairwise(maps: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """Spearman of every pair of columns of `maps` (cells x prompts): mean, max and the max pair."""
    rho = spearman_matrix(maps, weights)
    pairs = list(itertools.combinations(range(maps.shape[1]), 2))
    values = np.array([rho[i, j] for i, j in pairs])
    top = pairs[int(np.argmax(values))]
    return {"mean": float(values.mean()), "max": float(values.max()), "max_pair": top, "matrix": rho}


def discrimination(maps: np.ndarray, s: np.ndarray, names: tuple[str, ...], weights: np.ndarray | None = None) -> dict:
    """The issue's three figures for one layer's maps (cells x prompts) over land; given a
    weight per cell (its area on the ground), each cell counts by it."""
    pw = pairwise(maps, weights)
    with_unc = spearman_matrix(np.column_stack([maps, -s]), weights)[-1, :-1]
    result = {
        "mean_pairwise_spearman": pw["mean"],
        "max_pairwise_spearman": pw["max"],
        "max_pair": [names[pw["max_pair"][0]], names[pw["max_pair"][1]]],
        "spearman_with_minus_uncertainty": {n: float(v) for n, v in zip(names, with_unc, strict=True)},
        "max_abs_spearman_with_minus_uncertainty": float(np.abs(with_unc).max()),
        "mean_spearman_with_minus_uncertainty": float(with_unc.mean()),
    }
    result["meets_targets"] = bool(
        result["mean_pairwise_spearman"] <= TARGETS["mean_pairwise"]
        and result["max_pairwise_spearman"] <= TARGETS["max_pairwise"]
        and result["max_abs_spearman_with_minus_uncertainty"] <= TARGETS["abs_spearman_uncertainty"]
    )
    return result


def partial_spearman(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Spearman of x and y with `given`'s ranks partialled out: how x follows y beyond what both
    share with `given` (NaN where `given` ranks exactly as x or y)."""
    r = spearmanr(np.column_stack([x, y, given])).statistic
    denominator = np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    return float((r[0, 1] - r[0, 2] * r[1, 2]) / denominator) if denominator > 1e-12 else float("nan")


def beyond_truth(maps: np.ndarray, truth: np.ndarray, s: np.ndarray, names: tuple[str, ...]) -> dict:
    """Per class (the columns of `maps` and of `truth`, its rules' map): the partial Spearman of
    the map and -S given the rules' map; the largest in absolute value, and the mean."""
    partial = np.array([partial_spearman(maps[:, j], -s, truth[:, j]) for j in range(maps.shape[1])])
    return {
        "partial_spearman_with_minus_uncertainty_given_class_map": dict(zip(names, partial.tolist(), strict=True)),
        "max_abs_partial_spearman_with_minus_uncertainty": float(np.nanmax(np.abs(partial))),
        "mean_partial_spearman_with_minus_uncertainty": float(np.nanmean(partial)),
    }


def between_classes(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, float]:
    """Spearman of the rules' maps of every pair of classes ("a / b") that vary over the cells:
    how alike a correct model's maps of two sounds would be."""
    varies = np.flatnonzero(labels.std(axis=0) > 0)
    if len(varies) < 2:
        return {}
    rho = spearman_matrix(labels[:, varies])
    return {
        f"{classes[a]} / {classes[b]}": float(rho[i, j])
        for (i, a), (j, b) in itertools.combinations(enumerate(varies), 2)
    }


def town_pairwise(maps: np.ndarray, names: tuple[str, ...]) -> float:
    """Mean Spearman over the pairs of town classes among `names` (the columns of `maps`); NaN
    where fewer than two are among them."""
    from corpus.sources import GROUPS

    town = [j for j, name in enumerate(names) if name in GROUPS["town"]]
    if len(town) < 2:
        return float("nan")
    return float(np.mean([spearmanr(maps[:, i], maps[:, j]).statistic for i, j in itertools.combinations(town, 2)]))


def decomposition(logits: np.ndarray, s: np.ndarray, mu: np.ndarray, mu_q: np.ndarray, a: float) -> dict:
    """Two-way decomposition of logit maps (cells x prompts): shares of the total sum of squares
    in the cell effect (the same for every prompt: what makes maps alike), the prompt effect
    (a constant per map: no rank changes) and the interaction (what differs between maps); the
    cell effect split into -a S_i and 2 a mu_i . mean(mu_q) (they add up to it exactly, apart
    from centring)."""
    grand = logits.mean()
    cell = logits.mean(axis=1) - grand
    prompt = logits.mean(axis=0) - grand
    inter = logits - grand - cell[:, None] - prompt[None, :]
    total = ((logits - grand) ** 2).sum()
    n_prompts = logits.shape[1]
    s_part = -a * (s - s.mean())
    mu_part = 2 * a * (mu @ mu_q.mean(axis=0))
    mu_part -= mu_part.mean()
    ss_cell = n_prompts * (cell**2).sum()
    return {
        "share_cell_effect": float(ss_cell / total),
        "share_prompt_effect": float(logits.shape[0] * (prompt**2).sum() / total),
        "share_interaction": float((inter**2).sum() / total),
        "rank_relevant_share_cell_effect": float(ss_cell / (ss_cell + (inter**2).sum())),
        "cell_effect_var_from_s": float(np.var(s_part)),
        "cell_effect_var_from_mu": float(np.var(mu_part)),
        "cell_effect_var": float(np.var(cell)),
        "corr_s_part_mu_part": float(np.corrcoef(s_part, mu_part)[0, 1]),
    }


def mean_pairwise_cosine(vectors: np.ndarray) -> float:
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    c = v @ v.T
    return float(c[np.triu_indices(len(v), 1)].mean())


def pca_shares(x: np.ndarray, k: int = 3) -> list[float]:
    """Share of the variance of the rows of `x` in each of its first k principal components."""
    centred = x - x.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False) ** 2
    return [float(v) for v in sv[:k] / sv.sum()]


def class_labels(places, level: int, x: np.ndarray, y: np.ndarray, hours: tuple[int, ...] = LABEL_HOURS) -> np.ndarray:
    """(cells, classes): the rules' class weights per cell, averaged over LABEL_MONTHS x `hours`
    (the default metadata leaves the time unknown), as the corpus labels a sample's cell."""
    from corpus.build import cell_rules
    from runtime.tiles import tile_centres

    _, lat = tile_centres(level, x, y)
    weights = []
    for month, hour in itertools.product(LABEL_MONTHS, hours):
        n = len(x)
        e = cell_rules(places, lat, np.full(n, level), x, y, np.full(n, month), np.full(n, float(hour)))
        weights.append(e.classes)
    return np.mean(weights, axis=0)


def held_out(level: int, x: np.ndarray, y: np.ndarray, training_config) -> np.ndarray:
    """Cells in the level-`split_level` regions the demo training split holds out (val or test)."""
    return region_split(level, x, y, training_config) != "train"


def retrieval(scores: dict[str, np.ndarray], labels: np.ndarray, subset: np.ndarray) -> dict:
    """AUC per class of its prompt's map (cells of `subset`), and the mean over classes with
    >= MIN_POSITIVES positives."""
    from corpus import rules

    per_class = {}
    for c, sound in enumerate(rules.CLASSES):
        positive = labels[subset, c] >= POSITIVE_WEIGHT
        if positive.sum() >= MIN_POSITIVES and (~positive).sum() >= MIN_POSITIVES:
            per_class[sound] = {"positives": int(positive.sum()), "auc": auc(scores[sound][subset], positive)}
    return {
        "classes": per_class,
        "mean_auc": float(np.mean([v["auc"] for v in per_class.values()])) if per_class else None,
        "cells": int(subset.sum()),
    }


def layer_map(engine, cells, layer: str, queries: list) -> np.ndarray:
    """(cells x queries) map of one served layer, through Engine.values as the server draws it."""
    return np.column_stack([engine.values(cells, layer, q) for q in queries])


def layer_maps(engine, cells, prompts: tuple[str, ...]) -> dict[str, np.ndarray]:
    """(cells x prompts) maps of the served layers (through Engine.values), of the CSD without the
    cell's S_i, of the contrast at the other weights of CONTRAST_SWEEP (what CONTRAST_WEIGHT
    was picked from), and of other re-scorings of the same (mu, S) that discount what every
    sound shares at a cell (none is served: the table shows what each costs)."""
    from runtime.scoring import CONTRAST_WEIGHT, REFERENCE_PROMPTS

    queries = [engine.embed_text(t) for t in prompts]
    mu_q = np.stack([q.mu for q in queries]).astype(np.float64)
    out = {layer: layer_map(engine, cells, layer, queries) for layer in SERVED_LAYERS}
    mu = cells.mu.astype(np.float64)
    out["heatmap_without_s_i"] = mu @ mu_q.T
    logit = np.column_stack([engine.logits(cells, q) for q in queries]).astype(np.float64)
    baseline = engine.logits(cells, engine.reference)[:, None]
    for weight in CONTRAST_SWEEP:
        out[f"contrast_weight_{weight:g}"] = logit - weight * baseline
    ref_queries = [engine.embed_text(t) for t in REFERENCE_PROMPTS]
    refs = np.column_stack([engine.logits(cells, r) for r in ref_queries]).astype(np.float64)
    spread = refs.std(axis=1, keepdims=True)
    # The logit in standard deviations of the reference sounds' logits above 0.75 of their mean.
    out["z_score_against_references"] = (logit - 0.75 * refs.mean(axis=1, keepdims=True)) / spread
    # log of the sound's share among itself and the reference sounds at the cell.
    out["log_share_among_references"] = np.column_stack(
        [logit[:, j] - logsumexp(np.column_stack([logit[:, j], refs]), axis=1) for j in range(logit.shape[1])]
    )
    # mu_i . mu_q with the cells' first principal direction (the shared "how much happens here" axis) removed.
    first = first_direction(mu)[None, :]
    out["without_first_principal_direction"] = (mu - (mu @ first.T) @ first) @ mu_q.T
    out["contrast_without_its_fit_on_s"] = without_fit(out["contrast"], cells.s.astype(np.float64))
    # The served contrast, its baseline the reference sounds weighted toward those nearest the query.
    nearness = softmax(NEAREST_SHARPNESS * unit(mu_q) @ unit(np.stack([r.mu for r in ref_queries])).T, axis=1)
    out["contrast_against_the_nearest_references"] = logit - CONTRAST_WEIGHT * refs @ nearness.T
    return out


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64)."""
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def without_fit(maps: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Each map (a column) less its least-squares fit on S over the same cells: what no linear
    function of the cell's confidence explains (uncorrelated with S by construction)."""
    centred = s - s.mean()
    return maps - np.outer(centred, centred @ (maps - maps.mean(axis=0)) / (centred @ centred))


def first_direction(mu: np.ndarray) -> np.ndarray:
    """The unit first principal direction of the cells' means (sign arbitrary)."""
    return np.linalg.svd(mu - mu.mean(axis=0), full_matrices=False)[2][0]


def shared_axis(engine, cells, labels: np.ndarray, present: np.ndarray) -> dict:
    """Which class maps the shared axis pulls: the cells' first principal direction (signed to
    rise with -S), how each class prompt's text mean points along it (cosine) and how its true
    map follows the cells' position on it (Spearman). A map follows S beyond its truth where the
    text points along the axis and the truth does not."""
    from corpus import rules

    s, mu = cells.s.astype(np.float64), cells.mu.astype(np.float64)
    axis = first_direction(mu)
    if spearmanr(mu @ axis, -s).statistic < 0:
        axis = -axis
    position = mu @ axis
    classes = {}
    for c in np.flatnonzero(present):
        mu_q = engine.embed_text(class_prompt(rules.CLASSES[c])).mu.astype(np.float64)
        classes[rules.CLASSES[c]] = {
            "text_cosine_with_shared_axis": float(mu_q @ axis / np.linalg.norm(mu_q)),
            "truth_spearman_with_shared_axis": float(spearmanr(labels[:, c], position).statistic),
        }
    return {"shared_axis_spearman_with_minus_uncertainty": float(spearmanr(position, -s).statistic), "classes": classes}


def condition(
    engine, cells, labels: np.ndarray, heldout: np.ndarray, area: np.ndarray, prompts: tuple[str, ...] = PROMPTS
) -> dict:
    """Every figure of one metadata condition: the prompts' maps per layer, the served layers'
    also with each cell counted by its `area` on the ground (a map cell far from the equator
    covers less of the Earth: polar ice is most of a level's land cells), the class prompts'
    maps against the rules' class maps, and retrieval AUC of the class prompts."""
    from corpus import rules

    s = cells.s.astype(np.float64)
    class_prompts = tuple(class_prompt(c) for c in rules.CLASSES)
    present = labels.max(axis=0) >= POSITIVE_WEIGHT
    names = tuple(np.array(rules.CLASSES)[present])
    maps = layer_maps(engine, cells, prompts)
    class_maps = layer_maps(engine, cells, class_prompts)
    everywhere = np.ones(len(s), bool)
    return {
        "layers": {name: discrimination(m, s, prompts) for name, m in maps.items()},
        "layers_per_km2": {name: discrimination(maps[name], s, prompts, area) for name in SERVED_LAYERS},
        "corpus_class_maps": {
            **discrimination(labels[:, present], s, names),
            "town_mean_pairwise_spearman": town_pairwise(labels[:, present], names),
            "positive_cells": dict(zip(rules.CLASSES, (labels >= POSITIVE_WEIGHT).sum(axis=0).tolist(), strict=True)),
            "spearman_between_classes": between_classes(labels, rules.CLASSES),
        },
        "class_prompt_layers": {
            name: {
                **discrimination(m[:, present], s, names),
                "town_mean_pairwise_spearman": town_pairwise(m[:, present], names),
                **beyond_truth(m[:, present], labels[:, present], s, names),
                "mean_spearman_with_own_class_map": float(
                    np.mean([spearmanr(m[:, c], labels[:, c]).statistic for c in np.flatnonzero(present)])
                ),
            }
            for name, m in class_maps.items()
        },
        "shared_axis": shared_axis(engine, cells, labels, present),
        "retrieval": {
            name: {
                "all_land": retrieval(dict(zip(rules.CLASSES, m.T, strict=True)), labels, everywhere),
                "held_out_regions": retrieval(dict(zip(rules.CLASSES, m.T, strict=True)), labels, heldout),
            }
            for name, m in class_maps.items()
        },
    }


def cause(engine, cells, prompts: tuple[str, ...] = PROMPTS) -> dict:
    """Why maps look alike: the two-way decomposition of the prompts' and the class prompts'
    logit maps, how alike the prompts' text embeddings are, and how many directions the cells'
    means use."""
    from corpus import rules

    s, mu = cells.s.astype(np.float64), cells.mu.astype(np.float32)
    a, _ = engine.bundle.calibration
    out = {}
    for name, texts in (("prompts", prompts), ("class_prompts", tuple(class_prompt(c) for c in rules.CLASSES))):
        queries = [engine.embed_text(t) for t in texts]
        mu_q = np.stack([q.mu for q in queries])
        logits = np.column_stack([engine.logits(cells, q) for q in queries])
        out[f"decomposition_{name}"] = decomposition(logits, s, mu, mu_q, a)
        out[f"text_mean_pairwise_cosine_{name}"] = mean_pairwise_cosine(mu_q)
        out[f"text_mu_pca_shares_{name}"] = pca_shares(mu_q)
    out["cell_mu_pca_shares"] = pca_shares(mu)
    return out


def map_cell_area(level: int, y: np.ndarray) -> np.ndarray:
    """The area of web-mercator map cells of row y at `level`, as a share of a cell's beside the
    equator: it shrinks as the squared cosine of the latitude (a quarter at 60 degrees)."""
    from runtime.tiles import cells_area_km2

    area = cells_area_km2(level, np.append(np.asarray(y), (1 << level) // 2))  # the last: just south of the equator
    return area[:-1] / area[-1]


def unplaced(engine, level, rows: np.ndarray):
    """The cells `rows` of `level` fused with no location (the rest of the metadata unknown too)."""
    from runtime.metadata import encode_metadata
    from server.engine import CellEmbeddings

    mu, logvar = engine.bundle.fuse(np.asarray(level.arrays.sat[rows], np.float32), encode_metadata(len(rows)))
    return CellEmbeddings(mu.astype(np.float16), uncertainty(logvar))


def carriers(
    engine, level, rows: np.ndarray, x: np.ndarray, y: np.ndarray, area: np.ndarray, cells, blind, imagery
) -> dict:
    """Which input carries S's tie to the map cell's area (the model is surest where cells are
    large): the Spearman of the area with -S as served (`cells`), then with the fuse graph given
    no location (`blind`), with the cells' GSDs shuffled among them, and with each cell's image
    its mean colour alone; S against the image's brightness, and the tie among the cells that are
    not snow or ice (mean pixel value <= BRIGHT) alone. `rows` are the level's cells at (x, y)."""
    bundle = engine.bundle
    size = int(bundle.manifest["image"]["size"])
    images = [imagery.cell(level.level, int(i), int(j), size) for i, j in zip(x, y, strict=True)]
    read = np.array([c is not None for c in images])
    rows, area = rows[read], area[read]
    rgb = np.stack([c.rgb for c in images if c is not None])
    gsd = np.array([c.gsd for c in images if c is not None], np.float32)
    located = default_metadata(level, rows)

    def s_of(sat: np.ndarray, meta: dict) -> np.ndarray:
        return uncertainty(bundle.fuse(np.asarray(sat, np.float32), meta)[1]).astype(np.float64)

    def tie(s: np.ndarray) -> float:
        return float(spearmanr(area, -s).statistic)

    served = cells.s[read].astype(np.float64)
    colour = rgb.reshape(len(rgb), -1, 3).mean(axis=1)
    flat = np.ascontiguousarray(np.broadcast_to(colour[:, None, None, :], rgb.shape).round().astype(np.uint8))
    brightness = colour.mean(axis=1)
    bright = brightness > BRIGHT
    shuffled = np.random.default_rng(0).permutation(gsd)
    return {
        "cells_read": int(read.sum()),
        "served": tie(served),
        "location_absent": tie(blind.s[read]),
        "gsd_shuffled": tie(s_of(bundle.embed_images(rgb, shuffled), located)),
        "mean_colour_only": tie(s_of(bundle.embed_images(flat, gsd), located)),
        "s_spearman_with_brightness": float(spearmanr(served, brightness).statistic),
        "bright_cells": int(bright.sum()),
        "median_s_bright": float(np.median(served[bright])) if bright.any() else None,
        "median_s_other": float(np.median(served[~bright])) if (~bright).any() else None,
        "served_without_bright_cells": float(spearmanr(area[~bright], -served[~bright]).statistic)
        if (~bright).sum() >= MIN_CELLS
        else None,
    }


def location_use(engine, cells, blind, prompts: tuple[str, ...]) -> dict:
    """How much of the prompts' contrast maps the location token makes: each map of `cells`
    against the same map of `blind` (the cells fused with no location): Spearman per prompt, its
    median and least, and the variance of their difference as a share of the map's (median). A
    model that draws its maps from the imagery alone scores a Spearman near 1 and a share near 0."""
    rho, share = [], []
    for query in (engine.embed_text(t) for t in prompts):
        placed, unplaced_map = engine.values(cells, "contrast", query), engine.values(blind, "contrast", query)
        rho.append(float(spearmanr(placed, unplaced_map).statistic))
        share.append(float(np.var(placed - unplaced_map) / np.var(placed)))
    return {
        "spearman_with_location_absent": dict(zip(prompts, rho, strict=True)),
        "median_spearman_with_location_absent": float(np.median(rho)),
        "least_spearman_with_location_absent": float(np.min(rho)),
        "median_variance_share_of_location": float(np.median(share)),
    }


def crowding(samples: Path, level: int, x: np.ndarray, y: np.ndarray, cells, area: np.ndarray) -> dict:
    """How the cells' S and their first principal direction follow how crowded the corpus's
    samples are: Spearman of -S, and of the position on that direction, with the number of the
    corpus's samples (every split) in each cell. Training met crowded places more often
    (train.balance_places evens it out). A corpus drawn by area puts fewer samples in the small
    map cells far from the equator, so the count is also split into the cell's area and its
    samples per km^2 (`area`: map_cell_area of the cells)."""
    from runtime.tiles import points_per_tile

    table = np.load(samples)
    crowded = points_per_tile(table["lat"], table["lon"], level, x, y)
    s, mu = cells.s.astype(np.float64), cells.mu.astype(np.float64)
    position = mu @ first_direction(mu)
    return {
        "spearman_with_minus_s": float(spearmanr(crowded, -s).statistic),
        "abs_spearman_with_first_direction": float(abs(spearmanr(crowded, position).statistic)),
        "cells_without_samples": float((crowded == 0).mean()),
        "spearman_with_cell_area": float(spearmanr(crowded, area).statistic),
        "per_area_spearman_with_minus_s": float(spearmanr(crowded / area, -s).statistic),
    }


def day_round(engine, level, rows: np.ndarray, default_s: np.ndarray, prompts: tuple[str, ...], condition_of) -> dict:
    """The maps of a sound's log-odds averaged over the 24 hours of the day. A logit is linear in
    the cell's (mu, S), so the mean of the 24 hourly maps is the map of the cells' mean (mu, S)
    over the hours: one (mu, S) per cell, as cheap to serve as the default. `condition_of` gives
    condition()'s figures for those cells (against their own mean S, the uncertainty layer such a
    map pairs with); the served contrast is also set against the default metadata's S."""
    from server.engine import CellEmbeddings, QueryMetadata

    hours = [engine.embeddings(level, rows, QueryMetadata(hour=h)) for h in range(24)]
    mu = np.mean([h.mu.astype(np.float64) for h in hours], axis=0)
    s = np.mean([h.s.astype(np.float64) for h in hours], axis=0)
    cells = CellEmbeddings(mu.astype(np.float32), s.astype(np.float32))
    contrast = layer_map(engine, cells, "contrast", [engine.embed_text(t) for t in prompts])
    return {
        **condition_of(cells),
        "contrast_max_abs_spearman_with_minus_default_uncertainty": discrimination(contrast, default_s, prompts)[
            "max_abs_spearman_with_minus_uncertainty"
        ],
        "s_spearman_with_default_s": float(spearmanr(s, default_s).statistic),
    }


def caption_texts(samples: Path) -> list[str]:
    """The corpus's distinct captions of the samples that have imagery (what training paired
    with sounds and places)."""
    table = np.load(samples)
    return sorted(set(table["captions"][table["keep"]].tolist()))


def familiarity(bundle, captions: list[str], follows: dict[str, float], batch: int = 64) -> dict:
    """Are the maps that follow -S those of prompts unlike anything training read? Per prompt of
    `follows` (its map's Spearman with -S), the cosine of its text mean with the nearest
    caption's, and across the prompts the Spearman of that cosine with |Spearman with -S|
    (near -1 would say: the less familiar the prompt, the more its map is the model's confidence)."""
    prompts = list(follows)
    by_length = sorted(captions, key=len)  # a batch pads to its longest text: 41 s here, 51 s in any order
    embedded = [bundle.embed_texts(by_length[i : i + batch])[0] for i in range(0, len(by_length), batch)]
    nearest = (unit(bundle.embed_texts(prompts)[0]) @ unit(np.concatenate(embedded)).T).max(axis=1)
    tie = np.abs([follows[name] for name in prompts])
    return {
        "captions": len(captions),
        "nearest_caption_cosine": dict(zip(prompts, nearest.tolist(), strict=True)),
        "spearman_with_abs_spearman_with_minus_uncertainty": float(spearmanr(nearest, tie).statistic),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_arguments(p)
    p.add_argument("--level", type=int, default=6, help="store level of the maps (6 = zoom-2 tiles)")
    p.add_argument("--hours", default="6,22", help="hours measured besides the default metadata ('' for none)")
    p.add_argument("--json", default="benchmarks/results/discrimination.json", help="where the results go")
    p.add_argument("--prompts", type=Path, help="a file of distinct sounds to measure instead of the fixed PROMPTS")
    args = p.parse_args(argv)
    try:
        prompts = read_prompts(args.prompts) if args.prompts else PROMPTS
    except (OSError, UnicodeDecodeError, ValueError) as e:
        p.error(str(e))

    from runtime.imagery import Imagery
    from runtime.scoring import CONTRAST_WEIGHT, REFERENCE_PROMPTS
    from server.engine import QueryMetadata
    from server.service import store_imagery

    say = Progress()

    engine, places = open_world(args)
    bundle, store = engine.bundle, engine.store
    level = store.levels[args.level]
    x, y = cell_xy(level)
    say(f"land cells of level {args.level} ...")
    land = cell_places(places, args.level, x, y).land >= MAJORITY
    rows = np.flatnonzero(land)
    heldout = held_out(args.level, x[land], y[land], bundle.manifest.get("training", {}).get("config"))
    cells = engine.embeddings(level, rows, QueryMetadata())
    area = map_cell_area(args.level, y[land])  # a corpus drawn by area meets small cells less often
    result = {
        "bundle": bundle.id,
        "precision": bundle.precision,
        "store": store.id,
        "level": args.level,
        "land_cells": len(rows),
        "held_out_land_cells": int(heldout.sum()),
        "prompts": list(prompts),
        "reference_prompts": len(REFERENCE_PROMPTS),
        "contrast_weight": CONTRAST_WEIGHT,
        "targets": TARGETS,
    }
    say("the rules' class weights per land cell (retrieval labels), the maps ...")
    labels = class_labels(places, args.level, x[land], y[land])
    result["default"] = condition(engine, cells, labels, heldout, area, prompts)
    say("cause: decomposition, text embeddings, the cells' means ...")
    result["cause"] = cause(engine, cells, prompts)
    result["cause"]["cell_area_spearman_with_minus_s"] = float(spearmanr(area, -cells.s).statistic)
    blind = unplaced(engine, level, rows)
    result["cause"]["location_use"] = location_use(engine, cells, blind, prompts)
    if (imagery := store_imagery(store)) is not None:
        say("what carries S's tie to the cell's area: location, GSD, the image's colour ...")
        described = Imagery.as_described(imagery, store.manifest["imagery"])
        result["cause"]["area_tie_carriers"] = carriers(
            engine, level, rows, x[land], y[land], area, cells, blind, described
        )
    if (samples := Path(args.places).with_name("samples.npz")).is_file():
        result["cause"]["samples_per_cell"] = crowding(samples, args.level, x[land], y[land], cells, area)
        say("familiarity: each prompt's nearest caption of the corpus ...")
        follows = result["default"]["layers"]["contrast"]["spearman_with_minus_uncertainty"]
        result["cause"]["familiarity"] = familiarity(bundle, caption_texts(samples), follows)
    result["hours"] = {}
    for hour in (int(h) for h in args.hours.split(",") if h.strip()):
        say(f"hour {hour} ...")
        at_hour = class_labels(places, args.level, x[land], y[land], hours=(hour,))
        result["hours"][str(hour)] = condition(
            engine, engine.embeddings(level, rows, QueryMetadata(hour=hour)), at_hour, heldout, area, prompts
        )

    say("the day round: each cell's (mu, S) averaged over the 24 hours ...")
    result["day_round"] = day_round(
        engine, level, rows, cells.s, prompts, lambda day: condition(engine, day, labels, heldout, area, prompts)
    )

    say("uncertainty: S = sum sigma^2 vs the paper's L1 norm of sigma ...")
    _, logvar = bundle.fuse(np.asarray(level.arrays.sat[rows], np.float32), default_metadata(level, rows))
    l1 = np.exp(0.5 * logvar.astype(np.float64)).sum(axis=1)
    result["uncertainty"] = {
        "spearman_s_vs_l1_sigma": float(spearmanr(cells.s, l1).statistic),
        "s_recomputed_max_abs_diff": float(np.abs(uncertainty(logvar) - cells.s).max()),
    }
    result["seconds"] = say.seconds
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(dumps(result, indent=1, default=_json) + "\n", encoding="utf-8")
    print(markdown(result))
    say(f"wrote {args.json}")
    return 0


def default_metadata(level, rows: np.ndarray) -> dict:
    """The store's default metadata for the cells `rows`: location known, the rest unknown."""
    from runtime.metadata import encode_metadata

    lonlat = np.asarray(level.arrays.lonlat[rows])
    return encode_metadata(len(lonlat), lat=lonlat[:, 1], lon=lonlat[:, 0])


def _json(value):
    if isinstance(value, np.ndarray):
        return value.round(4).tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def markdown(result: dict) -> str:
    """The tables docs/demo-model.md prints."""
    default = result["default"]
    lines = [
        f"Level {result['level']}, {result['land_cells']} land cells ({result['held_out_land_cells']} in held-out "
        f"regions), {len(result['prompts'])} prompts, default metadata.",
        "",
        "| layer | mean pairwise Spearman | max pair | max abs Spearman with -S (mean) | "
        "retrieval AUC, all land | held-out regions | targets met |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for name, d in default["layers"].items():
        lines.append(f"| {name} | {_row(d, default['retrieval'][name], pair=True)} | {d['meets_targets']} |")
    lines += [
        "",
        "Each land cell counted by its area on the ground:",
        "",
        "| layer | mean pairwise Spearman | max pair | max abs Spearman with -S (mean) | targets met |",
        "|---|---:|---|---:|---|",
    ]
    for name, d in default["layers_per_km2"].items():
        lines.append(
            f"| {name} | {_pairs(d)} ({d['mean_spearman_with_minus_uncertainty']:.3f}) | {d['meets_targets']} |"
        )
    used = result["cause"]["location_use"]
    lines += [
        "",
        f"The contrast maps without the location token: Spearman with the maps as served, median "
        f"{used['median_spearman_with_location_absent']:.3f} "
        f"(least {used['least_spearman_with_location_absent']:.3f}); "
        f"the location's share of a map's variance, median {used['median_variance_share_of_location']:.3f}.",
    ]
    if known := result["cause"].get("familiarity"):
        cosines = known["nearest_caption_cosine"]
        least = min(cosines, key=cosines.get)
        lines += [
            "",
            f"Each prompt's text mean against the nearest of the corpus's {known['captions']} captions: cosine "
            f"median {np.median(list(cosines.values())):.3f} (least {cosines[least]:.3f}, {least}); across the "
            f"prompts, Spearman of that cosine with the contrast map's |Spearman with -S| "
            f"{known['spearman_with_abs_spearman_with_minus_uncertainty']:.3f}.",
        ]
    if carried := result["cause"].get("area_tie_carriers"):
        lines += [
            "",
            "Spearman of a cell's area with -S: "
            + ", ".join(
                f"{key.replace('_', ' ')} {value:.3f}"
                for key, value in carried.items()
                if key in CARRIERS and value is not None
            )
            + f"; S with the image's brightness {carried['s_spearman_with_brightness']:.3f}.",
        ]
    lines += [
        "",
        "Class prompts (one per sound class of the rules) against the rules' own class maps:",
        "",
        "| maps | mean pairwise Spearman | max pair | max abs Spearman with -S | Spearman with own class map "
        "| town classes, mean pairwise | -S beyond the class map: max abs partial Spearman (mean) |",
        "|---|---:|---|---:|---:|---:|---:|",
        f"| the rules (truth) | {_pairs(default['corpus_class_maps'])} | 1 "
        f"| {default['corpus_class_maps']['town_mean_pairwise_spearman']:.3f} | 0 |",
    ]
    for name, d in default["class_prompt_layers"].items():
        lines.append(
            f"| {name} | {_pairs(d)} | {d['mean_spearman_with_own_class_map']:.3f} "
            f"| {d['town_mean_pairwise_spearman']:.3f} | {d['max_abs_partial_spearman_with_minus_uncertainty']:.3f} "
            f"({d['mean_partial_spearman_with_minus_uncertainty']:.3f}) |"
        )
    if result["hours"]:
        lines += [
            "",
            "Under an hour (the store's hourly fusions; retrieval labels at that hour):",
            "",
            "| hour | layer | mean pairwise Spearman | max abs Spearman with -S (mean) | retrieval AUC, all land | "
            "held-out regions |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for hour, c in result["hours"].items():
            for name in SERVED_LAYERS:
                lines.append(f"| {hour} | {name} | {_row(c['layers'][name], c['retrieval'][name], pair=False)} |")
    if day := result.get("day_round"):
        lines += [
            "",
            "The day round: each cell's (mu, S) averaged over the 24 hours (retrieval labels as by default):",
            "",
            "| layer | mean pairwise Spearman | max pair | max abs Spearman with -S (mean) | "
            "retrieval AUC, all land | held-out regions | targets met |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for name in SERVED_LAYERS:
            d = day["layers"][name]
            lines.append(f"| {name} | {_row(d, day['retrieval'][name], pair=True)} | {d['meets_targets']} |")
        lines += [
            "",
            f"Its contrast against the default metadata's S: max abs Spearman "
            f"{day['contrast_max_abs_spearman_with_minus_default_uncertainty']:.3f}; its S against the default S: "
            f"Spearman {day['s_spearman_with_default_s']:.3f}.",
        ]
    return "\n".join(lines)


def _pairs(d: dict) -> str:
    return (
        f"{d['mean_pairwise_spearman']:.3f} | {d['max_pairwise_spearman']:.3f} ({' / '.join(d['max_pair'])}) | "
        f"{d['max_abs_spearman_with_minus_uncertainty']:.3f}"
    )


def _row(d: dict, r: dict, pair: bool) -> str:
    top = f" | {d['max_pairwise_spearman']:.3f} ({' / '.join(d['max_pair'])})" if pair else ""
    return (
        f"{d['mean_pairwise_spearman']:.3f}{top} | {d['max_abs_spearman_with_minus_uncertainty']:.3f} "
        f"({d['mean_spearman_with_minus_uncertainty']:.3f}) | {_auc(r['all_land'])} | {_auc(r['held_out_regions'])}"
    )


def _auc(r: dict) -> str:
    """The mean AUC, or n/a where no class had MIN_POSITIVES positives among the cells."""
    return "n/a" if r["mean_auc"] is None else f"{r['mean_auc']:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())

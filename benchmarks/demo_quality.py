"""Quality of the demo model on the demo world: text->sample retrieval of every sound class on the
held-out geographic test split of the demo corpus, and the map checks of issue 6 on a store.

    python benchmarks/demo_quality.py [--data-dir data/demo] [--weights weights/demo]
                                      [--corpus data/corpus] [--json out.json]

Builds what is missing of the demo world with cli/demo.py's own functions (Blue Marble GeoTIFF,
the bundle assembled from --weights, the store of levels 0..7 with its fusions), then prints a
markdown report and writes JSON (stdout's last line too when --json is not given).

(a) Text -> sample retrieval, per sound class of corpus/rules.py. The gallery is every sample
of the corpus's held-out test split (the demo reader's own split: whole level-4 tiles held out,
`data:` keys of the bundle's training config). A sample's embedding is the store cell it was cut
from (same level, same pixels through runtime.imagery) fused with the sample's own latitude,
longitude, local hour and month (no source), exactly as the server fuses a cell; its score is the
match probability sigmoid(-a CSD + b) of the class's prompt (runtime.scoring). The prompt is the
class's first "any" phrase in the corpus's caption phrasings (rules.SOUNDS; "birds singing at
dawn" for birds is the dawn phrasing, used by the map check). A sample is a positive of a class
when the rules give that class a weight >= POSITIVE_WEIGHT (0.1) there and then
(`class_weights` of the corpus table: the summed rule activations behind the audio mixture,
averaged over the sample's cell since corpus commit 71325dd); a second set of figures counts
as positives the samples whose audio mixes the class (`layers`, the classes drawn from those
weights; the caption names those within 12 dB of the lead).
Figures: AUC (probability that a random positive outranks a random negative; 0.5 = chance),
R@10% (share of the positives ranked in the top 10% of the gallery; 0.1 = chance) and
precision at k = number of positives (R-precision; chance = the base rate).

(b) Map checks (the same functions tests/test_demo_world.py runs on its smaller store), scored
through the server's Engine (match probability of the query vs the cell Gaussians, stored
hourly fusions for hour=): see `map_checks`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, rankdata, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.provenance import dumps
from corpus import rules
from corpus.build import BuildConfig, cell_points, draw_locations
from corpus.places import Places
from model.data import geographic_split
from runtime.metadata import encode_metadata
from runtime.scoring import csd, match_probability
from runtime.tiles import demorton, points_per_tile, tile_centres, tile_of

# --- the map checks (issue 6) --------------------------------------------------------------------

COAST_PROMPT = "waves crashing on rocks"
DAWN_PROMPT = "birds singing at dawn"
TRAFFIC_PROMPT = "busy traffic in the street"
TOP_K = 200
COAST_KM = 50.0
DAWN_HOUR, DAY_HOUR = 5, 14
THRESHOLDS = {"coastal_share": 0.8, "traffic_spearman": 0.5}
# Cells are described by the place rasters at a regular grid of points inside them (in web-
# mercator units): STATS_GRID^2 points for land cover, climate, land and lights, COAST_GRID^2
# for the distance to the coast (a level-6 cell at the equator: points 10 km apart).
STATS_GRID = 16
COAST_GRID = 64
FORESTS = (1, 2, 3, 4, 5)  # MODIS IGBP forest classes
TEMPERATE = 3  # Koppen-Geiger main group
MAJORITY = 0.5
MIN_EFFECT_A = 0.64


def grid_points(level: int, x: np.ndarray, y: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon), each (N, grid * grid): the corpus's own grid of points over each cell."""
    return cell_points(np.full(len(x), level), np.asarray(x), np.asarray(y), grid)


def cell_xy(level) -> tuple[np.ndarray, np.ndarray]:
    """Tile x, y of every cell of a store level (rows in the store's Morton order)."""
    x, y = demorton(np.asarray(level.arrays.codes))
    return np.asarray(x, np.int64), np.asarray(y, np.int64)


def coast_distance_km(places: Places, level: int, x: np.ndarray, y: np.ndarray, grid: int = COAST_GRID) -> np.ndarray:
    """Per cell: the smallest distance to the coast (corpus `coast_km`: great-circle km to the
    nearest coast point of the 0.05 deg land mask, on either side) among grid x grid points
    spread over the cell. It is the distance from the cell's nearest point to the coast, over-
    estimated by at most half a grid diagonal, so a cell counted coastal really is."""
    out = np.empty(len(x), np.float32)
    step = max(1, 200_000 // (grid * grid))
    for i in range(0, len(x), step):
        lat, lon = grid_points(level, x[i : i + step], y[i : i + step], grid)
        out[i : i + step] = places.coast_km(lat.ravel(), lon.ravel()).reshape(lat.shape).min(axis=1)
    return out


@dataclass
class CellPlaces:
    """Place statistics of cells over STATS_GRID^2 points each."""

    land: np.ndarray  # share of points on land
    lights: np.ndarray  # mean night lights of the land points (0 without land)
    temperate_forest: np.ndarray  # share of points with forest land cover in the temperate climate


def cell_places(places: Places, level: int, x: np.ndarray, y: np.ndarray, grid: int = STATS_GRID) -> CellPlaces:
    lat, lon = grid_points(level, x, y, grid)
    shape = lat.shape
    lat, lon = lat.ravel(), lon.ravel()
    land = places.is_land(lat, lon).reshape(shape).astype(bool)
    lights = places.lights(lat, lon).reshape(shape)
    forest = np.isin(places.landcover(lat, lon), FORESTS) & (places.climate(lat, lon) == TEMPERATE)
    n_land = land.sum(axis=1)
    mean_lights = np.where(n_land > 0, (lights * land).sum(axis=1) / np.maximum(n_land, 1), 0.0)
    return CellPlaces(land.mean(axis=1), mean_lights.astype(np.float32), forest.reshape(shape).mean(axis=1))


def split_keys(training_config) -> dict:
    """The demo reader's split keys from a training config (`data:` section); its defaults when
    the config is not a dict (a bundle of random weights records the config's path)."""
    section = training_config.get("data") if isinstance(training_config, dict) else None
    keys = {"split_level": 4, "val_fraction": 0.05, "test_fraction": 0.1, "seed": 0}
    return {k: (section or {}).get(k, v) for k, v in keys.items()}


def training_locations(
    places: Places, bounds, training_config: dict | None = None, build: BuildConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lat, lon, level of the sample's image cell, split label) of the corpus's samples, drawn again by the
    corpus's own `draw_locations` (a pure function of the seed, the place rasters and the parameters; the
    defaults are those of the demo corpus: 20,000 samples, levels 4..7, seed 0) and split as the
    demo reader splits them (`data:` keys of the training config: whole split_level tiles held
    out). Needs no built corpus."""
    build = build or BuildConfig(out=Path("."), assets=Path("."), imagery=Path("."))
    rng = np.random.default_rng(build.seed)
    lat, lon, _ = draw_locations(places, build.samples, bounds, build.strata, rng)
    level = rng.choice(np.array(build.levels), size=len(lat))
    x, y = tile_of(lat, lon, level)
    return lat, lon, level, region_split(level, x, y, training_config)


def region_split(
    level: int | np.ndarray, x: np.ndarray, y: np.ndarray, training_config: dict | str | None
) -> np.ndarray:
    """The split label ("train", "val" or "test") of cells (x, y) of `level` (one level, or one
    per cell), as the demo reader splits whole `split_level` regions."""
    data = split_keys(training_config)
    shift = np.asarray(level).astype(np.int64) - int(data["split_level"])
    ulon, ulat = tile_centres(int(data["split_level"]), x >> shift, y >> shift)
    return geographic_split(
        ulat,
        ulon,
        cell_deg=0.01,
        val_fraction=float(data["val_fraction"]),
        test_fraction=float(data["test_fraction"]),
        seed=int(data["seed"]),
    )


def _scores(engine, level, query, meta=None) -> np.ndarray:
    from server.engine import QueryMetadata

    rows = np.arange(len(level))
    cells = engine.embeddings(level, rows, meta or QueryMetadata())
    return engine.values(cells, "heatmap", query)


def coastal_check(engine, places: Places, level, client=None) -> dict:
    """Top TOP_K cells of the level for COAST_PROMPT (default metadata; through the ASGI app's
    /search when a TestClient is given, else the Engine's top_k, which /search calls): the share
    within COAST_KM of a coast (coast_distance_km) must be >= 0.8. `base_rate`: that share over
    all cells of the level."""
    x_all, y_all = cell_xy(level)
    if client is not None:
        r = client.get("/search", params={"q": COAST_PROMPT, "k": TOP_K, "level": level.level})
        r.raise_for_status()
        feats = r.json()["features"]
        x = np.array([f["properties"]["x"] for f in feats])
        y = np.array([f["properties"]["y"] for f in feats])
    else:
        rows, _ = engine.top_k(level, None, engine.embed_text(COAST_PROMPT), TOP_K)
        x, y = x_all[rows], y_all[rows]
    top = coast_distance_km(places, level.level, x, y)
    every = coast_distance_km(places, level.level, x_all, y_all, grid=STATS_GRID)
    share = float((top <= COAST_KM).mean())
    return {
        "prompt": COAST_PROMPT,
        "level": level.level,
        "k": len(x),
        "coastal_share": share,
        "threshold": THRESHOLDS["coastal_share"],
        "passed": share >= THRESHOLDS["coastal_share"],
        "base_rate": float((every <= COAST_KM).mean()),
        "median_coast_km": float(np.median(top)),
    }


def dawn_check(engine, places: Places, level) -> dict:
    """Match probability of DAWN_PROMPT at hour=5 vs hour=14 averaged over the temperate forest
    of the level: each cell weighted by its share of points with forest land cover (IGBP 1-5) in
    the temperate Koppen group, i.e. the map's mean over temperate-forest ground (temperate
    forest is rare at 0.05 deg, so few coarse cells are mostly forest). hour= reads the store's
    hourly fusions where it holds them, as the server does."""
    from server.engine import QueryMetadata

    x, y = cell_xy(level)
    weight = cell_places(places, level.level, x, y).temperate_forest
    some = weight > 0
    query = engine.embed_text(DAWN_PROMPT)
    dawn = _scores(engine, level, query, QueryMetadata(hour=DAWN_HOUR))[some]
    day = _scores(engine, level, query, QueryMetadata(hour=DAY_HOUR))[some]
    w = weight[some] / weight[some].sum() if some.any() else weight[some]
    mean_dawn, mean_day = float((w * dawn).sum()), float((w * day).sum())
    return {
        "prompt": DAWN_PROMPT,
        "level": level.level,
        "cells": int(some.sum()),
        "cells_majority_forest": int((weight >= MAJORITY).sum()),
        "mean_hour5": mean_dawn,
        "mean_hour14": mean_day,
        "ratio": mean_dawn / max(mean_day, 1e-12),
        "share_weight_higher_at_5": float(w[dawn > day].sum()),
        "passed": bool(some.any() and mean_dawn > mean_day),
    }


def traffic_check(engine, places: Places, level) -> dict:
    """Spearman rank correlation, over the land cells of the level (a majority of their points
    on land), between TRAFFIC_PROMPT's match probability (default metadata) and the cells' mean
    night lights over their land points; must be >= 0.5."""
    x, y = cell_xy(level)
    stats = cell_places(places, level.level, x, y)
    land = stats.land >= MAJORITY
    scores = _scores(engine, level, engine.embed_text(TRAFFIC_PROMPT))[land]
    rho = float(spearmanr(scores, stats.lights[land]).statistic)
    return {
        "prompt": TRAFFIC_PROMPT,
        "level": level.level,
        "land_cells": int(land.sum()),
        "spearman": rho,
        "threshold": THRESHOLDS["traffic_spearman"],
        "passed": rho >= THRESHOLDS["traffic_spearman"],
    }


def uncertainty_check(engine, places: Places, level, bounds, training_config: dict | None = None) -> dict:
    """The uncertainty layer (S of each cell, default metadata) vs how much training data the cell
    held: `count` = training-split samples of the demo corpus whose location lies in the cell
    (training_locations). Thin cells hold none; dense cells hold at least the upper quartile of
    the counts of the cells that hold any (the best-covered quarter of the covered cells). Passes
    when the mean S of thin cells is higher than that of dense ones and the difference is at least
    a medium effect: the probability that a thin cell's S exceeds a dense cell's (Vargha-Delaney A,
    the AUC of S separating them) >= 0.64 (Vargha and Delaney 2000: 0.56 small, 0.64 medium, 0.71
    large). A significance test alone would not do: with thousands of cells a random-weights
    model's systematic 1e-5 differences (A = 0.53) are significant."""
    x, y = cell_xy(level)
    lat, lon, _, labels = training_locations(places, bounds, training_config)
    train = labels == "train"
    counts = points_per_tile(lat[train], lon[train], level.level, x, y)
    s = np.asarray(level.arrays.s, np.float64)
    thin = counts == 0
    dense = counts >= max(1.0, np.quantile(counts[counts > 0], 0.75)) if (counts > 0).any() else counts < 0
    stats = cell_places(places, level.level, x, y)
    seaish = stats.land < MAJORITY
    p_value = (
        float(mannwhitneyu(s[thin], s[dense], alternative="greater").pvalue) if thin.any() and dense.any() else 1.0
    )
    a_thin = _a(s[thin], s[dense])
    return {
        "level": level.level,
        "training_samples": int(train.sum()),
        "thin_cells": int(thin.sum()),
        "dense_cells": int(dense.sum()),
        "dense_min_count": int(counts[dense].min()) if dense.any() else None,
        "mean_s_thin": float(s[thin].mean()),
        "mean_s_dense": float(s[dense].mean()),
        "spearman_s_vs_count": float(spearmanr(s, counts).statistic),
        "mean_s_thin_land": _mean(s[thin & ~seaish]),
        "mean_s_dense_land": _mean(s[dense & ~seaish]),
        "mean_s_thin_sea": _mean(s[thin & seaish]),
        "mean_s_dense_sea": _mean(s[dense & seaish]),
        "a_land": _a(s[thin & ~seaish], s[dense & ~seaish]),
        "a_sea": _a(s[thin & seaish], s[dense & seaish]),
        "thin_land_cells": int((thin & ~seaish).sum()),
        "dense_land_cells": int((dense & ~seaish).sum()),
        "auc_s_thin_over_dense": a_thin,
        "min_auc": MIN_EFFECT_A,
        "mannwhitney_p": p_value,
        "passed": bool(thin.any() and dense.any() and s[thin].mean() > s[dense].mean() and a_thin >= MIN_EFFECT_A),
    }


def _a(first: np.ndarray, second: np.ndarray) -> float:
    """P(a value of `first` > one of `second`) (ties count half): Vargha-Delaney A, an AUC."""
    return auc(np.r_[first, second], np.r_[np.ones(len(first), bool), np.zeros(len(second), bool)])


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def feature_space_diagnostic(
    store, level, places: Places, bounds, training_config: dict | None = None, k: int = 10
) -> dict:
    """Diagnostic, not a check: how the uncertainty layer follows thin training data in the image
    encoder's own feature space. `distance` of a cell = mean L2 distance of its pre-fusion sat
    features (the store's `sat`) to those of the k nearest training-split sample cells (each
    sample's own cell, at its level, read from the store). Far = the quarter of cells farthest
    from the training images, near = the nearest quarter."""
    import faiss

    from runtime.tiles import morton
    from server.engine import lookup

    lat, lon, lv, labels = training_locations(places, bounds, training_config)
    train = labels == "train"
    feats = []
    for z in np.unique(lv[train]):
        if int(z) not in store.levels:
            continue
        sel = train & (lv == z)
        x, y = tile_of(lat[sel], lon[sel], np.full(int(sel.sum()), z))
        rows = lookup(store.levels[int(z)], morton(x.astype(np.uint64), y.astype(np.uint64)))
        rows = np.unique(rows[rows >= 0])
        feats.append(np.asarray(store.levels[int(z)].arrays.sat[rows], np.float32))
    train_feats = np.concatenate(feats)
    index = faiss.IndexFlatL2(train_feats.shape[1])
    index.add(train_feats)
    cells = np.asarray(level.arrays.sat, np.float32)
    d2, _ = index.search(cells, k)
    distance = np.sqrt(np.maximum(d2, 0)).mean(axis=1)
    s = np.asarray(level.arrays.s, np.float64)
    far, near = distance >= np.quantile(distance, 0.75), distance <= np.quantile(distance, 0.25)
    stats = cell_places(places, level.level, *cell_xy(level))
    land = stats.land >= MAJORITY
    return {
        "level": level.level,
        "training_cells": len(train_feats),
        "k": k,
        "spearman_s_vs_distance": float(spearmanr(s, distance).statistic),
        "mean_s_far": float(s[far].mean()),
        "mean_s_near": float(s[near].mean()),
        "a_far_over_near": _a(s[far], s[near]),
        "spearman_s_vs_distance_land": float(spearmanr(s[land], distance[land]).statistic),
        "spearman_s_vs_distance_sea": float(spearmanr(s[~land], distance[~land]).statistic),
    }


def map_checks(
    engine, places: Places, level, bounds, training_config: dict | None = None, client=None, progress=lambda msg: None
) -> dict:
    """The four checks of issue 6 on one store level."""
    out = {}
    for name, fn in (
        ("coastal_waves", lambda: coastal_check(engine, places, level, client)),
        ("dawn_chorus", lambda: dawn_check(engine, places, level)),
        ("traffic_lights", lambda: traffic_check(engine, places, level)),
        ("uncertainty_thin_data", lambda: uncertainty_check(engine, places, level, bounds, training_config)),
    ):
        progress(f"map check {name} at level {level.level} ...")
        out[name] = fn()
    return out


# --- (a) text -> sample retrieval on the held-out test split ------------------------------------

POSITIVE_WEIGHT = 0.1
REGION_DRAWS = 1000  # resamplings of the held-out regions behind each AUC's 95 % interval


def class_prompt(sound: str) -> str:
    phrases = rules.SOUNDS[sound]
    return phrases["dawn"][1] if sound == "birds" else phrases["any"][0]


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def region_resamples(regions: np.ndarray, draws: int = REGION_DRAWS, seed: int = 0) -> list[np.ndarray]:
    """Row indices of `draws` bootstrap draws of whole regions. The test split holds out whole
    regions and samples of one region are alike, so a figure's spread over regions, not over
    samples, is how much another set of held-out places would move it."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(regions == r) for r in np.unique(regions)]
    return [np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))]) for _ in range(draws)]


def interval(values: Sequence[float]) -> list[float]:
    """The central 95 % of the draws' values (those defined: a draw may hold no positive)."""
    kept = [v for v in values if not math.isnan(v)]
    return [float(v) for v in np.percentile(kept, [2.5, 97.5])] if kept else [math.nan, math.nan]


def _ranking(scores: np.ndarray, positive: np.ndarray) -> dict:
    n_pos = int(positive.sum())
    order = np.argsort(-scores, kind="stable")
    top10 = order[: max(1, math.ceil(0.1 * len(scores)))]
    return {
        "positives": n_pos,
        "base_rate": n_pos / len(scores),
        "auc": auc(scores, positive),
        "r_at_10pct": float(positive[top10].sum() / n_pos) if n_pos else float("nan"),
        "precision_at_npos": float(positive[order[:n_pos]].mean()) if n_pos else float("nan"),
    }


def retrieval(
    bundle, store, corpus_path: Path, training_config: dict | None, progress=lambda msg: None, split: str = "test"
) -> dict:
    from corpus.reader import DemoCorpus
    from runtime.scoring import uncertainty
    from runtime.tiles import morton
    from server.engine import lookup

    data = split_keys(training_config)
    corpus = DemoCorpus(corpus_path, progress=False)
    labels = corpus.split(
        int(data["split_level"]), float(data["val_fraction"]), float(data["test_fraction"]), int(data["seed"])
    )
    chosen = np.isin(labels, ["val", "test"] if split == "heldout" else [split])
    rows = corpus.index[chosen]
    unit_x, unit_y = corpus.split_units(int(data["split_level"]))
    regions = np.unique(np.stack([unit_x[chosen], unit_y[chosen]], axis=1), axis=0, return_inverse=True)[1].ravel()
    t = corpus.table
    progress(f"embedding the {len(rows)} held-out {split} samples through the store and the fuse graph ...")
    mus, ss = np.zeros((len(rows), bundle.embed_dim), np.float32), np.zeros(len(rows), np.float32)
    missing = 0
    for lv in np.unique(t["level"][rows]):
        sel = np.flatnonzero(t["level"][rows] == lv)
        level = store.levels[int(lv)]
        found = lookup(level, morton(t["x"][rows[sel]].astype(np.uint64), t["y"][rows[sel]].astype(np.uint64)))
        missing += int((found < 0).sum())
        sel, found = sel[found >= 0], found[found >= 0]
        r = rows[sel]
        meta = encode_metadata(
            len(r),
            lat=t["lat"][r],
            lon=t["lon"][r],
            hour=t["hour"][r].astype(np.float64),
            month=t["month"][r].astype(np.float64),
        )
        for i in range(0, len(r), 1024):
            part = slice(i, i + 1024)
            mu, logvar = bundle.fuse(
                np.asarray(level.arrays.sat[found[part]], np.float32), {k: v[part] for k, v in meta.items()}
            )
            mus[sel[part]] = mu.astype(np.float16).astype(np.float32)  # float16 like the store
            ss[sel[part]] = uncertainty(logvar)
    weights = t["class_weights"][rows].astype(np.float32)
    mixed = t["layers"][rows]
    resamples = region_resamples(regions)
    a, b = bundle.calibration
    per_class, draws = {}, {}
    for c, sound in enumerate(rules.CLASSES):
        prompt = class_prompt(sound)
        mu_q, logvar_q = bundle.embed_texts([prompt])
        scores = match_probability(csd(mu_q[0], float(uncertainty(logvar_q)[0]), mus, ss), a, b)
        positive = weights[:, c] >= POSITIVE_WEIGHT
        draws[sound] = [auc(scores[i], positive[i]) for i in resamples]
        per_class[sound] = {
            "prompt": prompt,
            **_ranking(scores, positive),
            "regions_with_positives": len(np.unique(regions[positive])),
            "auc_95_over_regions": interval(draws[sound]),
            "mixed": _ranking(scores, (mixed == c).any(axis=1)),
        }
    valid = [sound for sound, v in per_class.items() if v["positives"] >= 10]
    return {
        "split": split,
        "test_samples": len(rows),
        "regions": len(np.unique(regions)),
        "samples_without_store_cell": missing,
        "positive_weight": POSITIVE_WEIGHT,
        "classes": per_class,
        "mean_auc_classes_with_10_positives": float(np.mean([per_class[s]["auc"] for s in valid])) if valid else None,
        # Each draw's mean over the classes it leaves defined.
        "mean_auc_95_over_regions": interval(np.nanmean([draws[s] for s in valid], axis=0)) if valid else None,
        "classes_with_10_positives": len(valid),
    }


# --- report --------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = []
    if "retrieval" in result:
        r = result["retrieval"]
        split = {"heldout": "val + test splits"}.get(r["split"], f"{r['split']} split")
        lines += [
            f"### Text -> sample retrieval, held-out {split} ({r['test_samples']} samples; "
            f"positive = class weight >= {r['positive_weight']}; 'mixed' = the sample's audio mixes the class)",
            "",
            "| class | prompt | positives (regions) | base rate | AUC | 95 % over regions | R@10% | P@#pos "
            "| mixed: positives | AUC | R@10% |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for sound, v in r["classes"].items():
            m = v["mixed"]
            lines.append(
                f"| {sound} | {v['prompt']} | {v['positives']} ({v['regions_with_positives']}) | "
                f"{v['base_rate']:.3f} | "
                f"{v['auc']:.3f} | {v['auc_95_over_regions'][0]:.3f}-{v['auc_95_over_regions'][1]:.3f} | "
                f"{v['r_at_10pct']:.3f} | {v['precision_at_npos']:.3f} | {m['positives']} | {m['auc']:.3f} | "
                f"{m['r_at_10pct']:.3f} |"
            )
        lines += [
            "",
            f"Mean AUC over the {r['classes_with_10_positives']} classes with >= 10 positives: "
            f"{r['mean_auc_classes_with_10_positives']:.3f} (95 % over the {r['regions']} held-out regions: "
            f"{r['mean_auc_95_over_regions'][0]:.3f}-{r['mean_auc_95_over_regions'][1]:.3f})",
            "",
        ]
    for key, checks in result.get("map_checks", {}).items():
        c = checks
        lines += [
            f"### Map checks, store level {key}",
            "",
            "| check | value | threshold | passed |",
            "|---|---|---|---|",
        ]
        w = c["coastal_waves"]
        lines.append(
            f'| top {w["k"]} cells for "{w["prompt"]}" within {COAST_KM:.0f} km of a coast | '
            f"{w['coastal_share']:.3f} (all cells: {w['base_rate']:.3f}) | >= {w['threshold']} | {w['passed']} |"
        )
        d = c["dawn_chorus"]
        lines.append(
            f'| "{d["prompt"]}" over temperate forest ({d["cells"]} cells, weighted by its share), hour 5 vs 14 | '
            f"{d['mean_hour5']:.4f} vs {d['mean_hour14']:.4f} (x{d['ratio']:.2f}; higher in "
            f"{d['share_weight_higher_at_5']:.0%} of that ground) | hour 5 > hour 14 | {d['passed']} |"
        )
        t = c["traffic_lights"]
        lines.append(
            f'| "{t["prompt"]}" vs night lights, Spearman over {t["land_cells"]} land cells | '
            f"{t['spearman']:.3f} | >= {t['threshold']} | {t['passed']} |"
        )
        u = c["uncertainty_thin_data"]
        lines.append(
            f"| mean S, cells without training samples ({u['thin_cells']}) vs the best-covered quarter "
            f"({u['dense_cells']}, >= {u['dense_min_count']} samples) | {u['mean_s_thin']:.4f} vs "
            f"{u['mean_s_dense']:.4f} (A {u['auc_s_thin_over_dense']:.3f}, Mann-Whitney p {u['mannwhitney_p']:.2g}; "
            f"Spearman S vs count {u['spearman_s_vs_count']:.3f}) | thin > dense, A >= {MIN_EFFECT_A} | "
            f"{u['passed']} |"
        )
        lines.append("")
        u = c["uncertainty_thin_data"]
        lines += [
            f"Uncertainty, land cells only (most points on land): mean S thin {_f(u['mean_s_thin_land'])} "
            f"({u['thin_land_cells']} cells) vs dense {_f(u['mean_s_dense_land'])} ({u['dense_land_cells']}), "
            f"A {_f(u['a_land'])}; sea cells only: {_f(u['mean_s_thin_sea'])} vs {_f(u['mean_s_dense_sea'])}, "
            f"A {_f(u['a_sea'])}.",
            "",
        ]
        f = result.get("uncertainty_feature_space", {}).get(key)
        if f:
            lines += [
                f"Uncertainty vs feature-space distance to the {f['k']} nearest training images "
                f"({f['training_cells']} training cells): Spearman {f['spearman_s_vs_distance']:.3f} "
                f"(land {f['spearman_s_vs_distance_land']:.3f}, sea {f['spearman_s_vs_distance_sea']:.3f}); "
                f"mean S farthest quarter {f['mean_s_far']:.4f} vs nearest {f['mean_s_near']:.4f} "
                f"(A {f['a_far_over_near']:.3f}).",
                "",
            ]
    return "\n".join(lines)


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


class Progress:
    """Timestamped progress lines on stderr, from the moment it is made; `seconds` since then."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 1)

    def __call__(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {msg}", file=sys.stderr, flush=True)


def add_world_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a benchmark that maps a demo world: --data-dir (built from --weights where
    missing) or --bundle with --store, and where the corpus's place rasters come from."""
    p.add_argument(
        "--data-dir", default="data/demo", help="demo world folder (cli/demo.py layout; built where missing)"
    )
    p.add_argument("--weights", default="weights/demo", help="trained parts the demo bundle is assembled from")
    p.add_argument("--bundle", help="a bundle directory (with --store: instead of --data-dir)")
    p.add_argument("--store", help="a store directory built from --bundle")
    p.add_argument("--places", default="data/corpus/places.npz", help="the corpus's place rasters (else --assets)")
    p.add_argument("--assets", default="data/assets", help="corpus assets, to derive the place rasters")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "int8"),
        help="which of the bundle's graphs embed the queries (int8: docs/bundle.md; default fp32)",
    )


def open_world(args: argparse.Namespace):
    """(Engine, Places) of the world add_world_arguments' options name, building what is missing."""
    from corpus.build import ensure_places
    from runtime.bundle import Bundle
    from server.engine import Engine
    from store.reader import Store

    data = Path(args.data_dir)
    if args.bundle and args.store:
        bundle_dir, store_dir = Path(args.bundle), Path(args.store)
    else:
        from cli.demo import bundle_path, imagery_path, store_path

        bundle_dir = bundle_path(data, Path(args.weights))
        store_dir = store_path(data, imagery_path(data), bundle_dir)
    places_file = Path(args.places)
    places = Places(places_file) if places_file.exists() else ensure_places(Path(args.assets), data / "places.npz")
    return Engine(Bundle(bundle_dir, precision=args.precision), Store(store_dir)), places


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-dir", default="data/demo", help="demo world folder (cli/demo.py layout; built where missing)"
    )
    p.add_argument("--weights", default="weights/demo", help="trained parts the bundle is assembled from")
    p.add_argument("--corpus", default="data/corpus", help="the built demo corpus (held-out test split)")
    p.add_argument("--assets", default="data/assets", help="corpus assets (for the place rasters)")
    p.add_argument("--levels", default="5,6,7", help="store levels to run the map checks on (default 5,6,7)")
    p.add_argument(
        "--split",
        choices=("test", "val", "heldout"),
        default="test",
        help="retrieval gallery: the test split (default), val, or both held-out splits",
    )
    p.add_argument("--skip-retrieval", action="store_true", help="map checks only")
    p.add_argument("--json", help="write the results here (default: last line of stdout)")
    args = p.parse_args(argv)

    from cli.demo import bundle_path, imagery_path, store_path
    from corpus.build import ensure_places
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery
    from server.engine import Engine
    from store.reader import Store

    say = Progress()

    data = Path(args.data_dir)
    say("demo world (building what is missing) ...")
    imagery = imagery_path(data)
    bundle_dir = bundle_path(data, Path(args.weights))
    store_dir = store_path(data, imagery, bundle_dir)
    bundle, store = Bundle(bundle_dir), Store(store_dir)
    engine = Engine(bundle, store)
    places_file = Path(args.corpus) / "places.npz"
    places = Places(places_file) if places_file.exists() else ensure_places(Path(args.assets), data / "places.npz")
    training = bundle.manifest.get("training", {}).get("config")
    result = {
        "bundle": bundle.id,
        "bundle_name": bundle.manifest.get("name"),
        "store": store.id,
        "weights_sha256": bundle.manifest.get("training", {}).get("weights_sha256"),
        "training_step": bundle.manifest.get("training", {}).get("step"),
    }
    if not args.skip_retrieval:
        result["retrieval"] = retrieval(bundle, store, Path(args.corpus), training, say, args.split)
    result["map_checks"], result["uncertainty_feature_space"] = {}, {}
    bounds = Imagery(imagery).bounds
    for lv in (int(v) for v in args.levels.split(",")):
        result["map_checks"][str(lv)] = map_checks(engine, places, store.levels[lv], bounds, training, progress=say)
        say(f"uncertainty vs feature-space distance to the training images at level {lv} ...")
        result["uncertainty_feature_space"][str(lv)] = feature_space_diagnostic(
            store, store.levels[lv], places, bounds, training
        )
    result["seconds"] = say.seconds
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(dumps(result, indent=1) + "\n", encoding="utf-8")
        say(f"wrote {args.json}")
    else:
        print(dumps(result, indent=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Do the demo model's maps change with the source the way the demo corpus says? (issue 16)

    python benchmarks/source_maps.py [--bundle B --store S | --data-dir data/demo --weights weights/demo]
                                     [--places data/corpus/places.npz] [--level 6] [--hour 7] [--month 5]
                                     [--layers heatmap] [--json benchmarks/results/source_maps.json]

For each prompt ("birdsong" for the class birds, "traffic" for traffic) and each source the
corpus knows (corpus/sources.py: wildlife, citywalk, fieldrec) plus the unknown source, the
model's map is the value of the prompt at every cell of one store level, fused with the cell's
location, `--hour`, `--month` and that source, through the server's own Engine. The corpus's own
map of the same (the **reference**) is the class's share of the cell's class weights as that
source keeps them: the rules averaged over the cell (corpus.build.cell_rules, as the corpus
labels a sample's cell) times the source's factors, the class's weight over the sum of all; for
the unknown source, the shares averaged over the sources in the proportions the corpus draws
them at that place and hour (sources.mix). A sample's layers are the classes near the top of
those weights, so a class's share is what decides whether a recording there holds it.

Figures, over the land cells of the level (a majority of their points on land):
- `spearman`: rank correlation of each source's map with its reference;
- `contrast_spearman` (the measure): rank correlation of the difference between two sources'
  maps (birdsong: wildlife minus citywalk; traffic: citywalk minus wildlife) with the same
  difference of their references: does the map move between sources where, and as much as, the
  corpus says; and `sign_agreement`, the share of the cells where the reference difference is
  material (> 0.05) whose map difference has its sign;
- `top_decile_wild` / `top_decile_urban`: the share of the map's top 10 % cells that are wild
  (urban index 0 on all of the cell's land: no night lights, no town nearby) or among the most
  built-up 10 % of land cells (by mean urban index; cells of levels 6-7 are hundreds of km wide,
  so few are mostly town), for the model and the reference. These describe where each map
  peaks; the corpus's own maps of one class peak in nearly the same cells under every source
  (its sources scale classes by group, so they move a map's level, most where the class is
  strongest, more than its ranks), so the verdict is on the contrast.
A prompt passes when contrast_spearman >= 0.3 and sign_agreement >= 0.7 (THRESHOLDS).

A bundle without the corpus's sources in its vocabulary (the demo model before issue 16) gets
the references, the unknown-source map's figures, and `missing_sources`; no pass or fail.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.demo_quality import MAJORITY, add_world_arguments, cell_xy, grid_points, open_world
from corpus import rules, sources
from corpus.build import CELL_GRID, cell_rules
from corpus.places import Places

PROMPTS = {"birds": ("birdsong", "wildlife", "citywalk"), "traffic": ("traffic", "citywalk", "wildlife")}
UNKNOWN = "unknown"
THRESHOLDS = {"contrast_spearman": 0.3, "sign_agreement": 0.7}
MATERIAL = 0.05  # a reference difference of class share this large is one the map should show
URBAN_SHARE = 0.1  # the most built-up share of land cells counts as built-up
TOP = 0.1


def cell_descriptors(places: Places, level: int, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per cell: its share of land points and its mean urban index (rules.urban) over them."""
    lat, lon = grid_points(level, x, y, CELL_GRID)
    p = places.attributes(lat.ravel(), lon.ravel())
    land = p.land.reshape(lat.shape).astype(np.float64)
    urban = rules.urban(p).reshape(lat.shape)
    return {
        "land": land.mean(axis=1),
        "urban": (urban * land).sum(axis=1) / np.maximum(land.sum(axis=1), 1.0),
    }


def reference_maps(
    places: Places, level: int, x: np.ndarray, y: np.ndarray, month: int, hour: float
) -> dict[str, np.ndarray]:
    """{source or UNKNOWN: (cells, classes)} each class's share of the cell's class weights as the
    source keeps them (see the module docstring)."""
    n = len(x)
    lat, lon = grid_points(level, x, y, CELL_GRID)
    centre_lat = lat.mean(axis=1)
    weights = cell_rules(
        places, centre_lat, np.full(n, level), x, y, np.full(n, month), np.full(n, float(hour))
    ).classes
    out = {}
    for i, name in enumerate(sources.NAMES):
        kept = weights * sources.FACTORS[i]
        out[name] = kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)
    mix = sources.mix(places.attributes(lat.ravel(), lon.ravel()), hour).reshape(n, -1, len(sources.NAMES))
    mix = mix.mean(axis=1)
    out[UNKNOWN] = sum(mix[:, [i]] * out[name] for i, name in enumerate(sources.NAMES))
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _top_shares(values: np.ndarray, urban: np.ndarray) -> dict[str, float]:
    top = values >= np.quantile(values, 1.0 - TOP)
    built_up = urban >= np.quantile(urban, 1.0 - URBAN_SHARE)
    return {"top_decile_wild": float((urban[top] == 0).mean()), "top_decile_urban": float(built_up[top].mean())}


def compare(
    model: dict[str, np.ndarray], reference: dict[str, np.ndarray], urban: np.ndarray, first: str, second: str
) -> dict:
    """The figures of one prompt over land cells: `model` and `reference` map each source name
    (those the bundle knows, and UNKNOWN) to a map over the same cells."""
    per_source = {}
    for name, values in model.items():
        per_source[name] = {
            "spearman": _spearman(values, reference[name]),
            "model": _top_shares(values, urban),
            "reference": _top_shares(reference[name], urban),
            "mean": float(values.mean()),
        }
    out: dict = {"sources": per_source, "contrast": f"{first} - {second}"}
    if first in model and second in model:
        d_model, d_ref = model[first] - model[second], reference[first] - reference[second]
        material = np.abs(d_ref) > MATERIAL
        agree = float((np.sign(d_model[material]) == np.sign(d_ref[material])).mean()) if material.any() else None
        rho = _spearman(d_model, d_ref)
        out.update(
            contrast_spearman=rho,
            sign_agreement=agree,
            material_cells=int(material.sum()),
            passed=bool(
                rho is not None
                and agree is not None
                and rho >= THRESHOLDS["contrast_spearman"]
                and agree >= THRESHOLDS["sign_agreement"]
            ),
        )
    return out


def run(engine, places: Places, level, month: int, hour: float, layer: str = "heatmap") -> dict:
    """Every prompt's figures at one store level (see the module docstring)."""
    from server.engine import QueryMetadata

    x, y = cell_xy(level)
    cells = cell_descriptors(places, level.level, x, y)
    land = cells["land"] >= MAJORITY
    reference = reference_maps(places, level.level, x[land], y[land], month, hour)
    known = [name for name in sources.NAMES if name in engine.bundle.sources.names]
    rows = np.flatnonzero(land)
    embedded = {
        name: engine.embeddings(
            level, rows, QueryMetadata(hour=int(hour), month=month, source=None if name == UNKNOWN else name)
        )
        for name in [*known, UNKNOWN]
    }
    prompts = {}
    for sound, (prompt, first, second) in PROMPTS.items():
        c = rules.CLASSES.index(sound)
        query = engine.embed_text(prompt)
        model = {name: engine.values(e, layer, query) for name, e in embedded.items()}
        prompts[prompt] = {
            "class": sound,
            **compare(model, {k: v[:, c] for k, v in reference.items()}, cells["urban"][land], first, second),
        }
    missing = [name for name in sources.NAMES if name not in known]
    passed = None if missing else all(p["passed"] for p in prompts.values())
    return {
        "level": level.level,
        "land_cells": int(land.sum()),
        "hour": hour,
        "month": month,
        "layer": layer,
        "bundle_sources": list(engine.bundle.sources.names),
        "missing_sources": missing,
        "thresholds": THRESHOLDS,
        "prompts": prompts,
        "passed": passed,
    }


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(result: dict) -> str:
    lines = [
        f"Level {result['level']} ({result['land_cells']} land cells), hour {result['hour']:g}, month "
        f"{result['month']}, layer {result['layer']}; bundle sources {result['bundle_sources']}",
        "",
        "| prompt | source | Spearman with the corpus | top 10 % wild: model / corpus "
        "| top 10 % built-up: model / corpus |",
        "|---|---|---|---|---|",
    ]
    for prompt, p in result["prompts"].items():
        for name, s in p["sources"].items():
            lines.append(
                f"| {prompt} | {name} | {_f(s['spearman'])} | {_f(s['model']['top_decile_wild'])} / "
                f"{_f(s['reference']['top_decile_wild'])} | {_f(s['model']['top_decile_urban'])} / "
                f"{_f(s['reference']['top_decile_urban'])} |"
            )
    lines += [
        "",
        "| prompt | contrast | Spearman with the corpus's contrast | sign agreement | passed |",
        "|---|---|---|---|---|",
    ]
    for prompt, p in result["prompts"].items():
        lines.append(
            f"| {prompt} | {p['contrast']} | {_f(p.get('contrast_spearman'))} | {_f(p.get('sign_agreement'))} "
            f"| {p.get('passed', 'n/a')} |"
        )
    if result["missing_sources"]:
        lines += ["", f"The bundle does not know the sources {result['missing_sources']}: no contrast, no verdict."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_arguments(p)
    p.add_argument("--level", type=int, default=6, help="store level of the maps (6 = zoom-2 tiles)")
    p.add_argument("--hour", type=float, default=7.0, help="local hour of the maps (default 7)")
    p.add_argument("--month", type=int, default=5, help="month of the maps (default 5)")
    p.add_argument("--layers", default="heatmap", help="comma-separated map layers to measure (default heatmap)")
    p.add_argument("--json", default="benchmarks/results/source_maps.json", help="where the results go")
    args = p.parse_args(argv)

    t0 = time.monotonic()
    engine, places = open_world(args)
    results = {
        layer: run(engine, places, engine.store.levels[args.level], args.month, args.hour, layer)
        for layer in args.layers.split(",")
    }
    out = {"bundle": engine.bundle.id, "store": engine.store.id, "results": results}
    out["seconds"] = round(time.monotonic() - t0, 1)
    for result in results.values():
        print(markdown(result) + "\n")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json} ({out['seconds']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

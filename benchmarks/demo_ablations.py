"""Ablations of the demo model on the demo corpus's held-out geographic test split.

Each variant is configs/demo.yaml with a few keys changed, trained into runs/ablations/<name>
and evaluated with `soundscape evaluate`'s metrics (sat->audio I2S and audio->sat S2I R@10% and
median rank, docs/method.md section 4.1):

- `pcmepp`: configs/demo.yaml as it is (frozen MiniLM and aisfx towers, PCME++);
- `infonce`: the same with the InfoNCE loss (cosine scores) instead of PCME++;
- `no_metadata`: the same with every metadata token dropped in training (meta_dropout 1),
  evaluated without metadata: the paper's "metadata off";
- `balanced`, `balanced1`: batches drawn by class rarity (train.balance_classes 0.5 and 1: a
  sample's chance grows as its rarest sound class's frequency to the power -0.5 or -1), the
  corpus's rare town sounds met more often (docs/demo-model.md, "The cause, measured");
- `places`, `places_half`: batches drawn by how crowded a sample's place is
  (train.balance_places 1 and 0.5: a sample's chance falls as the number of training samples in
  its level-6 tile to the power -1 or -0.5): whether S, and with it every map, follows how often
  training met a place (docs/demo-model.md, "The cause, measured");
- `wide`: twice the embedding (128-d) and twice the fusion's width (192): the model's capacity,
  one of the causes issue 14 asked to measure (docs/demo-model.md, "The cause, measured");
- `shallow`: one fusion block instead of two: a cell's fusion at less than half the CPU, what
  `hour=` tiles and `/search` under new metadata pay per cell (issue 13); `deep`: three, as PSM's;
- `town_apart`: the same model on a corpus built with `soundscape corpus build --out
  data/corpus-town-apart --max-town-layers 1`, where a sample mixes at most one town sound
  (traffic, trains, aircraft, market, industry, harbour): whether town sounds heard together in
  the same clips are why their maps look alike (docs/demo-model.md, "The cause, measured");
- `even_places`: the same model on a corpus built with `soundscape corpus build --out
  data/corpus-even-places --strata sea=0.12,land=area,coast=area,lit=area`, whose samples on land
  and coasts lie at one density (lit places 2 % of the samples, not 18 %): whether the model is
  surest, and its maps follow S, because the corpus draws its samples where its town sounds are
  (docs/demo-model.md, "The cause, measured");
- `map_cells`: the same on a corpus built with the same --strata and `--per-map-cell`
  (data/corpus-map-cells), whose samples lie at one density per web-mercator map cell, not per
  km^2: whether the model is surest where its map cells are largest, near the equator, because
  training meets those cells most often;
- `less_sat_text`: the sat-text pairs weighted 0.1 instead of 0.5 (train.loss.weights): whether
  the pull of a text toward the cells it is paired with is what merges the town sounds' text
  means (docs/demo-model.md, "The cause, measured");
- `more_sat_text`: the sat-text pairs weighted 1.5 instead of 0.5: whether a stronger pull of a
  text toward its cells keeps the town sounds' text means apart (less_sat_text's converse);
- `less_audio_text`: the audio-text pairs weighted 0.1 instead of 0.5: whether the pull of town
  captions toward the one region aisfx puts town clips in is what merges them;
- `vib_more`, `vib_most`: the VIB term (train.loss.vib_beta, the KL of each Gaussian to N(0, I))
  weighted 1e-3 and 1e-2 instead of PCME++'s 1e-4: whether pulling every cell's variances
  toward one value loosens S from how crowded a place is, and with it the maps from S
  (docs/demo-model.md, "The cause, measured");
- `melcnn`: the small log-mel CNN audio tower trained from scratch instead of frozen aisfx,
  given --melcnn-steps steps (its steps cost ~40x a cached frozen step; choose them to match
  the wall time of the aisfx run, cache included).

The `ceiling` row is what perfect classifiers would reach (a `ceiling-<variant>` row for a variant
trained on its own corpus): each sample's class weights from the rules (what a cell, month and
hour imply) against the classes actually mixed into its audio, at their gains, scored by cosine.
No model can do better than the corpus's own randomness allows.

Variants with the same frozen towers share one frozen-tower cache (--cache), so aisfx runs once.
A variant whose run directory already holds a finished run is evaluated, not retrained.

--seeds trains each variant once per seed (train.seed) into runs/ablations/<name>-seed<k> and
adds a table of mean and sample standard deviation over the seeds, per variant and condition
(for pcmepp: with metadata and with the source unknown). --steps shortens every variant's
schedule alike (the learning-rate schedule follows it), so a seed study fits a small machine.
--shared also evaluates each run with `recordings: shared` (places held out, recordings heard
in training).

    python benchmarks/demo_ablations.py --variants pcmepp infonce no_metadata
    python benchmarks/demo_ablations.py --variants melcnn --melcnn-steps 300
    python benchmarks/demo_ablations.py --variants pcmepp infonce no_metadata --seeds 56 57 58 \
        --steps 2000 --shared --cache runs/demo-v4/frozen-cache --json benchmarks/results/seeds.json

Writes runs/ablations/<name>/test.json and prints a markdown table; --json collects them.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cli.main  # noqa: E402,F401  (registers the demo corpus reader)
from corpus.reader import factory  # noqa: E402
from model.commands import load_config  # noqa: E402
from model.evaluate import Gaussians, evaluate_checkpoint, retrieval  # noqa: E402
from model.train import RunConfig, fit  # noqa: E402

VARIANTS: dict[str, dict] = {
    "pcmepp": {},
    "infonce": {"train": {"loss": {"kind": "infonce"}}},
    "no_metadata": {"train": {"meta_dropout": 1.0}},
    "balanced": {"train": {"balance_classes": 0.5}},
    "balanced1": {"train": {"balance_classes": 1.0}},
    "places": {"train": {"balance_places": 1.0}},
    "places_half": {"train": {"balance_places": 0.5}},
    "wide": {
        "model": {
            "embed_dim": 128,
            "fusion": {"width": 192, "depth": 2, "heads": 4, "ff": 384, "meta_hidden": 64},
        }
    },
    "shallow": {"model": {"fusion": {"width": 96, "depth": 1, "heads": 4, "ff": 192, "meta_hidden": 64}}},
    "deep": {"model": {"fusion": {"width": 96, "depth": 3, "heads": 4, "ff": 192, "meta_hidden": 64}}},
    "fine_places": {
        "model": {"fusion": {"width": 96, "depth": 2, "heads": 4, "ff": 192, "meta_hidden": 64, "location_octaves": 8}}
    },
    "town_apart": {"data": {"path": "data/corpus-town-apart"}},
    "even_places": {"data": {"path": "data/corpus-even-places"}},
    "map_cells": {"data": {"path": "data/corpus-map-cells"}},
    "less_sat_text": {"train": {"loss": {"weights": {"sat_audio": 0.5, "sat_text": 0.1, "audio_text": 0.5}}}},
    "more_sat_text": {"train": {"loss": {"weights": {"sat_audio": 0.5, "sat_text": 1.5, "audio_text": 0.5}}}},
    "less_audio_text": {"train": {"loss": {"weights": {"sat_audio": 0.5, "sat_text": 0.5, "audio_text": 0.1}}}},
    "vib_more": {"train": {"loss": {"vib_beta": 1e-3}}},
    "vib_most": {"train": {"loss": {"vib_beta": 1e-2}}},
    "melcnn": {
        "model": {"audio": {"kind": "melcnn", "channels": [16, 32, 64], "width": 96, "features": {"duration_s": 2.4}}},
        "train": {"eval_every": 0},
    },
}
# The evaluation condition each variant is judged on: the metadata its training saw.
CONDITION = {"no_metadata": "no_metadata", "ceiling": "rules vs mixed classes"}


def merged(base: dict, changes: dict) -> dict:
    """`base` with each section's keys replaced by those `changes` gives (whole values: a new
    `audio` replaces the tower, it is not merged into the old one), except `train.loss`, merged
    key by key: a loss's kind and its pair weights are separate choices (`infonce` keeps the
    base's weights)."""
    out = copy.deepcopy(base)
    for section, keys in changes.items():
        old = out.get(section, {})
        new = copy.deepcopy(keys)
        if section == "train" and "loss" in new:
            new["loss"] = {**old.get("loss", {}), **new["loss"]}
        out[section] = {**old, **new}
    return out


def variant_config(name: str, base: dict, melcnn_steps: int, seed: int | None, steps: int | None) -> RunConfig:
    changes = VARIANTS[name]
    if name == "melcnn":
        steps = melcnn_steps
    train: dict = {}
    if steps is not None:
        train |= {"steps": steps, "checkpoint_every": max(1, steps // 4)}
    if seed is not None:
        train["seed"] = seed
    return RunConfig.from_dict(merged(base, merged(changes, {"train": train})))


def share_cache(run_dir: Path, cache: Path) -> None:
    """Point the run's frozen-tower cache at the shared one (files are named by fingerprint)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / "frozen-cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(cache.resolve(), target_is_directory=True)


def run_variant(name: str, config: RunConfig, out: Path, cache: Path, progress: bool, shared: bool) -> dict:
    run_dir = out / name
    share_cache(run_dir, cache)
    finished = (run_dir / "last.pt").exists() and _last_step(run_dir) >= config.train.steps
    start = time.perf_counter()
    if not finished:
        fit(config, run_dir, resume=(run_dir / "last.pt").exists(), progress=progress)
    train_s = time.perf_counter() - start
    report = evaluate_checkpoint(
        run_dir / "best.pt", split="test", oracle_caption=False, cache_dir=cache, progress=progress
    )
    report["train_seconds_this_invocation"] = round(train_s, 1)
    if shared:
        data = {**config.data, "recordings": "shared"}
        report["place_held_out"] = evaluate_checkpoint(
            run_dir / "best.pt", data=data, split="test", oracle_caption=False, cache_dir=cache, progress=progress
        )["results"]
    (run_dir / "test.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def ceiling(data: dict, image_size: int) -> dict:
    """Retrieval metrics of perfect classifiers on the test split (see the module docstring)."""
    test = factory(data, image_size).test
    table = test.corpus.table
    weights = table["class_weights"][test.rows].astype(np.float64)
    mixed = np.zeros_like(weights)
    for j, row in enumerate(test.rows):
        for c, gain_db in zip(table["layers"][row], table["layer_gain_db"][row], strict=True):
            if c >= 0:
                mixed[j, c] += 10.0 ** (gain_db / 20.0)
    eps = np.full_like(weights, 1e-12)  # every sample has a class; this only guards the norm
    unused = np.zeros_like(weights)
    result = retrieval(Gaussians(weights + eps, unused), Gaussians(mixed + eps, unused), probabilistic=False)
    return {"results": {"all": {CONDITION["ceiling"]: result}}}


def _last_step(run_dir: Path) -> int:
    import torch

    return int(torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["step"])


def corpora(base: dict, variants: list[str]) -> dict[str, dict]:
    """The data section of each corpus the variants train on, by the key of its ceiling row:
    "ceiling" for the base config's corpus, "ceiling-<variant>" for a variant's own."""
    out: dict[str, dict] = {}
    for name in variants:
        data = merged(base, VARIANTS[name])["data"]
        out.setdefault("ceiling" if data == base["data"] else f"ceiling-{name}", data)
    return out


def row(name: str, report: dict) -> str:
    """A markdown row of a run (`name` is a variant, a variant's seed run `<variant>-seed<k>`, or
    a corpus's ceiling)."""
    variant = "ceiling" if name.startswith("ceiling") else name.rsplit("-seed", 1)[0]  # corpora()'s keys
    condition = CONDITION.get(variant, "metadata")
    m = report["results"]["all"][condition]
    return (
        f"| {name} | {condition} | {m['I2S_R@10%']:.3f} | {m['I2S_median_rank']:.0f} "
        f"| {m['S2I_R@10%']:.3f} | {m['S2I_median_rank']:.0f} | {m['gallery']} |"
    )


def spread(reports: dict[str, dict], seeds: list[int]) -> list[str]:
    """Markdown rows: per variant and condition, mean and sample sd over the seeds' runs."""
    lines = []
    for name in dict.fromkeys(key.rsplit("-seed", 1)[0] for key in reports if "-seed" in key):
        runs = [reports[f"{name}-seed{seed}"] for seed in seeds]
        conditions = [CONDITION.get(name, "metadata")] + (["no_source"] if name == "pcmepp" else [])
        for held_out, key in (("places and recordings", "results"), ("places", "place_held_out")):
            for condition in conditions:
                if key not in runs[0]:
                    continue
                cells = []
                for metric in ("I2S_R@10%", "S2I_R@10%"):
                    values = np.array([run[key]["all"][condition][metric] for run in runs])
                    cells.append(f"{values.mean():.3f} ± {values.std(ddof=1):.3f}")
                lines.append(f"| {name} | {held_out} | {condition} | {cells[0]} | {cells[1]} | {len(runs)} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml", help="base config")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablations", help="runs directory")
    parser.add_argument(
        "--cache",
        type=Path,
        default=ROOT / "runs" / "ablations" / "frozen-cache",
        help="shared frozen-tower cache (default runs/ablations/frozen-cache)",
    )
    parser.add_argument("--melcnn-steps", type=int, default=300, help="training steps of the melcnn variant")
    parser.add_argument("--seeds", type=int, nargs="+", help="train each variant once per seed (train.seed)")
    parser.add_argument("--steps", type=int, help="training steps of every variant (default: the config's)")
    parser.add_argument("--shared", action="store_true", help="also evaluate with recordings heard in training")
    parser.add_argument("--json", type=Path, help="also write every report into this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    base = load_config(args.config)
    reports = {}
    for key, data in corpora(base, args.variants).items():
        reports[key] = ceiling(data, base["model"]["image"]["size"])
        print(row(key, reports[key]), flush=True)
    for seed in args.seeds or [None]:
        for name in args.variants:
            key = name if seed is None else f"{name}-seed{seed}"
            config = variant_config(name, base, args.melcnn_steps, seed, args.steps)
            reports[key] = run_variant(key, config, args.out, args.cache, not args.no_progress, args.shared)
            print(row(key, reports[key]), flush=True)
    print("\n| variant | condition | I2S R@10% | I2S median rank | S2I R@10% | S2I median rank | N |")
    print("|---|---|---|---|---|---|---|")
    for key, report in reports.items():
        print(row(key, report))
    if args.seeds:
        print("\n| variant | held out | condition | I2S R@10% (mean ± sd) | S2I R@10% (mean ± sd) | seeds |")
        print("|---|---|---|---|---|---|")
        print("\n".join(spread(reports, args.seeds)))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

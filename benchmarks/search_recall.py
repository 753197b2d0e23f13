"""Does /search under new metadata find the exact top k? Recall of the candidate search.

Under an hour+month (or a source) the store does not hold, /search ranks the engine's candidates
(server/engine.py, `Engine.candidates`: the best cells by the stored default ranking, by the
stored hourly and monthly fusions here or one level up, and by the additive proxy of the two)
instead of fusing the whole level. This measures, in process through the server's Engine, for the
discrimination benchmark's 14 prompts and the demo corpus's class prompts (one per sound class of
its rules), or the prompts of --prompts, x --pairs random hour+month pairs (and each source with
one of them) x k: the share of the exact
top k (the whole level fused under the metadata) that the candidate search returns, the scores'
largest difference, how many cells it ranks, and its time against the whole level's fusion. With
--rank-by contrast, of /search's rank_by=contrast: the candidates of the combined query whose
score ranks as the contrast (`Engine.contrast_query`), the differences in contrast; under a
source the whole level, as /search ranks it there.

    python benchmarks/search_recall.py [--data-dir data/demo] [--level 7] [--pairs 10] [--seed 0]
                                       [--prompts FILE] [--rank-by score|contrast]
                                       [--json benchmarks/results/search_recall.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.demo_quality import Progress, add_world_arguments, class_prompt, open_world
from benchmarks.discrimination import PROMPTS as DISTINCT_PROMPTS
from corpus import rules
from server.engine import (
    CellEmbeddings,
    Engine,
    QueryEmbedding,
    QueryMetadata,
    candidate_count,
    ranks_whole_level,
)
from server.settings import Settings
from store.reader import Level

KS = (10, 50, 100)
PROMPTS = (*DISTINCT_PROMPTS, *(class_prompt(c) for c in rules.CLASSES))


def candidate_search(
    engine: Engine, level: Level, meta: QueryMetadata, query: QueryEmbedding, k: int, whole: bool = False
) -> tuple[np.ndarray, CellEmbeddings, int]:
    """The best k rows under `meta` as /search finds them without exact=, their embeddings, and
    how many cells were ranked (server/service.py, `SoundscapeService.search`); `whole` ranks
    every cell, as /search does by contrast under a source (server/routes/rest.py)."""
    count = None if whole else candidate_count(k, len(level))
    limit = Settings.model_fields["max_search_cells"].default  # as `soundscape serve` by default
    rows = engine.candidates(level, meta, query, count, limit) if count is not None else np.arange(len(level))
    cells = engine.fuse(level, rows, meta)
    best, top = engine.top_k(level, cells, query, k)
    return rows[best], top, len(rows)


def metadata_cases(engine: Engine, pairs: int, seed: int) -> list[QueryMetadata]:
    rng = np.random.default_rng(seed)
    cases = [
        QueryMetadata(hour=int(h), month=int(m))
        for h, m in zip(rng.integers(0, 24, pairs), rng.integers(1, 13, pairs), strict=True)
    ]
    first = cases[0]
    return cases + [QueryMetadata(hour=first.hour, month=first.month, source=s) for s in engine.bundle.sources.names]


def measure(
    engine: Engine, level: Level, cases: list[QueryMetadata], prompts: list[str], say, rank_by: str = "score"
) -> dict:
    queries = {p: engine.embed_text(p) for p in prompts}
    # What /search ranks by (server/routes/rest.py), and the layer whose values it reports for that
    rankings = {p: q if rank_by == "score" else engine.contrast_query(q) for p, q in queries.items()}
    layer = "heatmap" if rank_by == "score" else "contrast"
    rows_all = np.arange(len(level))
    runs, full_s, found_s = [], [], []
    for meta in cases:
        start = time.perf_counter()
        exact_cells = engine.fuse(level, rows_all, meta)
        full_s.append(time.perf_counter() - start)
        say(f"{meta}: the whole level fused in {full_s[-1]:.2f} s")
        for prompt, query in queries.items():
            for k in KS:
                start = time.perf_counter()
                whole = ranks_whole_level(rank_by, meta)
                rows, cells, ranked = candidate_search(engine, level, meta, rankings[prompt], k, whole)
                found_s.append(time.perf_counter() - start)
                truth, truth_cells = engine.top_k(level, exact_cells, rankings[prompt], k)
                scores = engine.values(cells, layer, query)
                exact_scores = engine.values(truth_cells, layer, query)
                runs.append(
                    {
                        "meta": {"hour": meta.hour, "month": meta.month, "source": meta.source},
                        "prompt": prompt,
                        "k": k,
                        "recall": len(set(rows.tolist()) & set(truth.tolist())) / len(truth),
                        "max_score_difference": float(np.max(np.abs(scores - exact_scores))),
                        "ranked": ranked,
                    }
                )
    per_k = {}
    for k in KS:
        mine = [r for r in runs if r["k"] == k]
        recalls = [r["recall"] for r in mine]
        per_k[str(k)] = {
            "searches": len(mine),
            "mean_recall": statistics.fmean(recalls),
            "min_recall": min(recalls),
            "all_found": sum(r == 1.0 for r in recalls),
            "max_score_difference": max(r["max_score_difference"] for r in mine),
            "median_ranked": statistics.median(r["ranked"] for r in mine),
        }
    return {
        "cells": len(level),
        "per_k": per_k,
        "whole_level_fusion_s_median": statistics.median(full_s),
        "candidate_search_s_median": statistics.median(found_s),
        "runs": runs,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Level {result['level']} ({result['cells']} cells), {len(result['prompts'])} prompts x {len(result['cases'])} "
        f"metadata cases, ranked by {result.get('rank_by', 'score')}, in process, one thread.",
        "",
        "| k | searches | mean recall | min recall | exact top k all found | largest difference "
        "| median cells ranked |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, m in result["per_k"].items():
        lines.append(
            f"| {k} | {m['searches']} | {m['mean_recall']:.4f} | {m['min_recall']:.2f} | {m['all_found']} "
            f"| {m['max_score_difference']:.2g} | {m['median_ranked']:.0f} |"
        )
    lines += [
        "",
        f"Median time: the whole level's fusion {result['whole_level_fusion_s_median'] * 1000:.0f} ms, "
        f"a candidate search {result['candidate_search_s_median'] * 1000:.0f} ms.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_arguments(p)
    p.add_argument("--level", type=int, default=7, help="store level searched (default 7, the demo's finest)")
    p.add_argument("--pairs", type=int, default=10, help="random hour+month pairs (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs")
    p.add_argument(
        "--prompts",
        type=Path,
        help="a text file of prompts, one per line (default: the discrimination benchmark's and the corpus's "
        "class prompts; benchmarks/search_prompts_heldout.txt holds others the candidates were not tuned on)",
    )
    p.add_argument(
        "--rank-by",
        choices=("score", "contrast"),
        default="score",
        help="what the searches rank by, as /search's rank_by (default score)",
    )
    p.add_argument("--json", default="benchmarks/results/search_recall.json", help="where the results go")
    args = p.parse_args(argv)
    say = Progress()

    engine, _ = open_world(args)
    level = engine.store.levels[args.level]
    cases = metadata_cases(engine, args.pairs, args.seed)
    result = {"bundle": engine.bundle.id, "store": engine.store.id, "level": args.level, "rank_by": args.rank_by}
    prompts = args.prompts.read_text(encoding="utf-8").split("\n") if args.prompts else list(PROMPTS)
    result["prompts"] = [line.strip() for line in prompts if line.strip()]
    result["cases"] = [{"hour": m.hour, "month": m.month, "source": m.source} for m in cases]
    result |= measure(engine, level, cases, result["prompts"], say, args.rank_by)
    result["seconds"] = say.seconds
    print(markdown(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

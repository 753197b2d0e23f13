"""The int8 text graph against fp32: how far its query means move, what a text costs, and
whether a text's embedding depends on the texts run beside it.

    python benchmarks/text_precision.py --bundle data/demo/bundle [--json FILE]

Texts: the discrimination benchmark's prompts, its other list, the held-out search prompts and
the contrast's reference prompts (about 70 sounds). In one process, one onnxruntime thread:
- parity: each text alone through the int8 graph against alone through fp32: the cosine of
  the means (least, median) and the largest relative difference of S;
- batch dependence: for each precision, the largest |mu| difference between a text in a run of 8
  through `Bundle.embed_texts` (one graph run, padded to the longest) and the same text alone. An
  int8 graph from onnxruntime's dynamic quantization (one activation scale per run) moved a text by
  up to 0.058 with the texts beside it; the per-token int8 graph (model/quantize.py) keeps it
  within float rounding;
- cost: CPU ms per text, alone and in graph runs of 8, median of `--rounds` passes over the texts,
  each graph as the server runs it and at onnxruntime's default optimisation level ("all", whose
  SkipLayerNormalization kernel the server avoids: runtime/bundle.py), the passes interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.discrimination import PROMPTS, read_prompts
from benchmarks.provenance import emit, provenance
from runtime.bundle import Bundle
from runtime.errors import UserError
from runtime.scoring import REFERENCE_PROMPTS, uncertainty

HERE = Path(__file__).resolve().parent
TEXT_FILES = (HERE / "discrimination_prompts_other.txt", HERE / "search_prompts_heldout.txt")
BATCH = 8


def texts() -> list[str]:
    """The benchmark's texts, each once, in a fixed order."""
    found = [*PROMPTS, *REFERENCE_PROMPTS, *(t for path in TEXT_FILES for t in read_prompts(path))]
    return list(dict.fromkeys(found))


def batches(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + BATCH] for i in range(0, len(items) - BATCH + 1, BATCH)]


def alone(bundle: Bundle, items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    runs = [bundle.embed_texts([t]) for t in items]
    return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])


def batch_dependence(bundle: Bundle, items: Sequence[str]) -> float:
    """Largest |mu in a run of 8 - mu alone| over the texts of whole runs of 8."""
    mu_alone, _ = alone(bundle, items)
    batched = np.concatenate([bundle.embed_texts(b)[0] for b in batches(items)])
    return float(np.abs(batched - mu_alone[: len(batched)]).max())


class AtLevelAll(Bundle):
    """A bundle whose graphs run at onnxruntime's default optimisation level, not the server's."""

    def session_options(self, graph: str) -> ort.SessionOptions:
        options = super().session_options(graph)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return options


def cpu_ms_per_text(bundles: dict[str, Bundle], items: Sequence[str], size: int, rounds: int) -> dict[str, float]:
    """Per bundle, the median over rounds of CPU ms per text, the texts run `size` to a graph run;
    the bundles take turns within each round."""
    groups = [[t] for t in items] if size == 1 else batches(items)
    per_round: dict[str, list[float]] = {name: [] for name in bundles}
    for _ in range(rounds):
        for name, bundle in bundles.items():
            start = time.process_time()
            for group in groups:
                bundle.embed_texts(group)
            per_round[name].append((time.process_time() - start) * 1e3 / sum(len(g) for g in groups))
    return {name: statistics.median(values) for name, values in per_round.items()}


def measure(path: Path, rounds: int) -> dict:
    items = texts()
    bundles = {p: Bundle(path, precision=p, threads=1) for p in ("fp32", "int8")}
    (mu32, lv32), (mu8, lv8) = (alone(b, items) for b in bundles.values())
    cosine = (mu8 * mu32).sum(1) / np.linalg.norm(mu8, axis=1) / np.linalg.norm(mu32, axis=1)
    s32, s8 = uncertainty(lv32), uncertainty(lv8)
    timed = {**bundles, **{f"{p}_at_level_all": AtLevelAll(path, precision=p, threads=1) for p in bundles}}
    for bundle in timed.values():  # warm every session before timing
        bundle.embed_texts(items[:BATCH])
    alone_ms = cpu_ms_per_text(timed, items, 1, rounds)
    batched_ms = cpu_ms_per_text(timed, items, BATCH, rounds)
    return {
        "texts": len(items),
        "int8_parity_alone": {
            "min_cosine": float(cosine.min()),
            "median_cosine": float(np.median(cosine)),
            "max_s_rel_diff": float((np.abs(s8 - s32) / np.abs(s32)).max()),
        },
        "max_mu_diff_batch_of_8_vs_alone": {p: batch_dependence(b, items) for p, b in bundles.items()},
        "cpu_ms_per_text": {name: {"alone": alone_ms[name], f"in_runs_of_{BATCH}": batched_ms[name]} for name in timed},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--bundle", type=Path, default=Path("data/demo/bundle"), help="a bundle exported with --int8")
    parser.add_argument("--rounds", type=int, default=7, help="timed passes over the texts (the median is reported)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        result = measure(args.bundle, args.rounds)
    except UserError as exc:
        parser.error(str(exc))
    emit({**provenance(), **result}, args.json)


if __name__ == "__main__":
    main()

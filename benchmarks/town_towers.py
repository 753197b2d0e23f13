"""Where do the demo model's town sounds become one? Cosines of the town classes against the other
classes at each stage: the frozen MiniLM text tower, the frozen aisfx audio tower, and each given
bundle's trained text means (issue 14; docs/demo-model.md, "The cause, measured").

    python benchmarks/town_towers.py --corpus data/corpus-town-apart \
        --audio-cache runs/ablations/frozen-cache-town-apart/train-audio-*.npz \
        --bundles data/demo/bundle WORLD/bundle

- MiniLM: the 384-d mean-pooled embeddings of every class's prompt (the discrimination
  benchmark's class prompts), mean pairwise cosine of the town classes' (corpus/sources.py's
  "town" group) against the other classes', raw and centred on the prompts' mean.
- aisfx: the cached 512-d outputs of the corpus's training clips (the training split's audio
  file of the frozen-tower cache of a run on that corpus), grouped by the class that leads the
  clip (gain 0 dB; classes leading at least MIN_CLIPS clips): cosine of the centred class
  centroids, town pairs against other pairs; and a nearest-centroid rule over the town
  classes, fitted on half of each class's clips and scored on the other half (chance = 1 /
  number of town classes).
- each bundle: the mean pairwise cosine of its text means mu_q of the same prompts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.demo_quality import class_prompt
from corpus import rules
from corpus.build import TOWN

MIN_CLIPS = 20


def town_vs_other(vectors: np.ndarray, classes: list[int]) -> dict:
    """Mean pairwise cosine of the rows of town classes, and of the other classes' rows."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = v @ v.T
    town = [k for k, c in enumerate(classes) if c in TOWN]
    other = [k for k, c in enumerate(classes) if c not in TOWN]
    return {
        "town_pairs": float(np.mean([cos[i, j] for i, j in itertools.combinations(town, 2)])),
        "other_pairs": float(np.mean([cos[i, j] for i, j in itertools.combinations(other, 2)])),
    }


def minilm(prompts: list[str]) -> np.ndarray:
    """(prompts, 384) embeddings of the frozen text tower the demo trains with."""
    import torch

    from model.config import MiniLMTextConfig
    from model.nn.text_towers import MiniLMTower

    tower = MiniLMTower(MiniLMTextConfig(kind="minilm", trainable=False, max_length=48)).eval()
    ids, mask = tower.tokenizer().encode(prompts)
    with torch.no_grad():
        return tower(torch.as_tensor(ids), torch.as_tensor(mask)).numpy()


def nearest_centroid(features: np.ndarray, lead: np.ndarray, classes: list[int], seed: int = 0) -> float:
    """Share of held-out halves whose nearest class centroid (fitted on the other halves) is theirs."""
    rng = np.random.default_rng(seed)
    fitted, held = {}, {}
    for c in classes:
        rows = rng.permutation(np.flatnonzero(lead == c))
        fitted[c], held[c] = features[rows[: len(rows) // 2]].mean(axis=0), features[rows[len(rows) // 2 :]]
    centroids = np.stack([fitted[c] for c in classes])
    right = sum(
        int((np.array(classes)[np.linalg.norm(x[:, None] - centroids[None], axis=2).argmin(axis=1)] == c).sum())
        for c, x in held.items()
    )
    return right / sum(len(x) for x in held.values())


def aisfx(corpus: Path, audio_cache: Path) -> dict:
    """The audio tower's figures over the training clips of `corpus` (their cached outputs)."""
    from corpus.reader import CorpusSource, factory
    from model.commands import load_config

    data = {**load_config(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")["data"]}
    data["path"] = str(corpus)
    train = factory(data, 64).train
    assert isinstance(train, CorpusSource)
    lead = train.corpus.table["layers"][train.rows, 0]
    features = np.load(audio_cache)["values"].astype(np.float64)
    if len(features) != len(lead):
        raise SystemExit(f"town_towers: {audio_cache} holds {len(features)} rows, the training split {len(lead)}")
    classes = [c for c in range(len(rules.CLASSES)) if (lead == c).sum() >= MIN_CLIPS]
    centroids = np.stack([features[lead == c].mean(axis=0) for c in classes]) - features.mean(axis=0)
    town = [c for c in classes if c in TOWN]
    return {
        "centred_centroids": town_vs_other(centroids, classes),
        "town_classes": [rules.CLASSES[c] for c in town],
        "nearest_centroid_accuracy": nearest_centroid(features, lead, town),
        "chance": 1 / len(town),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="a demo corpus folder")
    p.add_argument(
        "--audio-cache", type=Path, required=True, help="the training split's audio file of a run's frozen-tower cache"
    )
    p.add_argument("--bundles", nargs="*", default=[], help="bundles whose text means are compared")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    from runtime.bundle import Bundle

    prompts = [class_prompt(c) for c in rules.CLASSES]
    classes = list(range(len(rules.CLASSES)))
    raw = minilm(prompts)
    result = {
        "minilm": town_vs_other(raw, classes),
        "minilm_centred": town_vs_other(raw - raw.mean(axis=0), classes),
        "aisfx": aisfx(args.corpus, args.audio_cache),
        "text_means": {b: town_vs_other(Bundle(b, threads=1).embed_texts(prompts)[0], classes) for b in args.bundles},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Checks of a run's data against its config, made once at start, before any training step, so a
mistake in the data costs a second, not a run: metadata values outside the model's vocabularies
(counted, with the likely fix), and splits too small for R@10% to mean much.

A reader's source takes part by offering `metadata_values(name)` (the value of `source` or
`caption_source` of every sample, read without decoding audio or images) and, to leave rows out,
`subset(indices)`; sources without them are not checked."""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from model.config import ConfigError, ModelConfig
from model.data import Splits, open_splits

log = logging.getLogger(__name__)
VOCABULARY_FIELDS = {"source": "model.sources", "caption_source": "model.caption_sources"}
SPLITS = ("train", "val", "test")
# Below this many galleries items the top 10% is under 10 ranks: R@10% moves in coarse steps.
SMALL_GALLERY = 100
RECALL_FRACTION = 0.1


def recall_cutoff(n: int, fraction: float = RECALL_FRACTION) -> float:
    """The rank a true match must reach to count in R@10% of a gallery of n: 0.1 n, and at least
    rank 1, so a gallery under 10 has a metric that can move (rank <= 0.7 of 7 would be 0 whatever
    the model, and best.pt always the first validation). Galleries of 10 or more are unchanged."""
    return max(fraction * n, 1.0)


@dataclass
class Mismatch:
    """Samples whose `field` value is not in the model's vocabulary."""

    field: str
    value: str
    count: int
    suggestion: str | None  # the vocabulary entry it probably means

    def describe(self) -> str:
        hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        return f"{self.field} {self.value!r} in {self.count} row(s){hint}"


def suggest(value: str, names: list[str]) -> str | None:
    """The vocabulary entry `value` most likely means: the same word in another case, else the
    closest spelling."""
    for name in names:
        if name.casefold() == value.casefold():
            return name
    close = difflib.get_close_matches(value.casefold(), [n.casefold() for n in names], n=1, cutoff=0.75)
    return next((n for n in names if n.casefold() == close[0]), None) if close else None


def vocabulary_mismatches(splits: Splits, vocabularies: dict[str, list[str]]) -> tuple[list[Mismatch], int]:
    """(every value outside its vocabulary with its count over all splits, samples checked)."""
    counts: Counter[tuple[str, str]] = Counter()
    checked = 0
    for name in SPLITS:
        source = getattr(splits, name)
        values = getattr(source, "metadata_values", None)
        if values is None:
            continue
        checked += len(source)
        for field, names in vocabularies.items():
            counts.update((field, v) for v in values(field) if v is not None and v not in names)
    return [
        Mismatch(field, value, n, suggest(value, vocabularies[field])) for (field, value), n in counts.most_common()
    ], checked


class _WithMetadata(Protocol):
    """A reader that lists one metadata field of every sample without reading the samples."""

    def metadata_values(self, name: str) -> Sequence[str | None]: ...


def _bad_indices(source: _WithMetadata, vocabularies: dict[str, list[str]]) -> set[int]:
    bad: set[int] = set()
    for field, names in vocabularies.items():
        bad.update(i for i, v in enumerate(source.metadata_values(field)) if v is not None and v not in names)
    return bad


def check_vocabularies(splits: Splits, vocabularies: dict[str, list[str]], *, skip: bool) -> Splits:
    """The splits when every sample's source and caption source are in the model's vocabularies.
    Otherwise ConfigError with the counts and the likely fix, or, with skip, the splits without
    those samples (a warning says how many)."""
    mismatches, checked = vocabulary_mismatches(splits, vocabularies)
    if not mismatches:
        return splits
    # Distinct samples: one with both its source and caption source outside counts once.
    bad = {
        name: _bad_indices(getattr(splits, name), vocabularies)
        for name in SPLITS
        if hasattr(getattr(splits, name), "metadata_values")
    }
    total = sum(len(indices) for indices in bad.values())
    listed = "; ".join(m.describe() for m in mismatches[:5]) + ("; ..." if len(mismatches) > 5 else "")
    fields = sorted({m.field for m in mismatches})
    known = ", ".join(f"{VOCABULARY_FIELDS[f]} {vocabularies[f]}" for f in fields)
    fix = (
        "fix the spelling in the data"
        if all(m.suggestion for m in mismatches)
        else f"add the values to {' and '.join(VOCABULARY_FIELDS[f] for f in fields)} or fix the data"
    )
    if not skip:
        raise ConfigError(
            f"{total} of {checked} samples have metadata outside the model's vocabulary "
            f"({known}): {listed}; {fix}, or set train.skip_mismatched_rows: true to "
            "train without those samples"
        )
    if total == sum(len(getattr(splits, name)) for name in SPLITS):
        raise ConfigError(
            f"train.skip_mismatched_rows leaves out all {total} samples: their metadata is outside the "
            f"model's vocabulary ({known}): {listed}; {fix}"
        )
    kept, why_empty = {}, dict(splits.why_empty)
    for name in SPLITS:
        source, left_out = getattr(splits, name), bad.get(name, set())
        if left_out and not hasattr(source, "subset"):
            raise ConfigError(
                f"{listed}: this data kind cannot leave samples out; fix model.sources or model.caption_sources"
            )
        kept[name] = source.subset([i for i in range(len(source)) if i not in left_out]) if left_out else source
        if left_out and not len(kept[name]):
            why_empty[name] = (
                f"train.skip_mismatched_rows left out all {len(left_out)} of its samples, whose metadata is "
                f"outside the model's vocabulary ({known}): {fix}"
            )
    log.warning(
        "left out %d of %d samples whose metadata is outside the model's vocabulary (%s): %s",
        total,
        checked,
        known,
        listed,
    )
    return Splits(**kept, settled=splits.settled, why_empty=why_empty)


def small_split_warnings(sizes: dict[str, int]) -> list[str]:
    """A sentence for each evaluation split too small for R@10% to separate models: with N items
    it counts rank <= recall_cutoff(N), and one query moves the metric by 1/N."""
    out = []
    for name, n in sizes.items():
        if n < SMALL_GALLERY:
            effect = (
                "best.pt is chosen largely by noise"
                if name in ("val", "validation")
                else "its metrics are largely noise"
            )
            advice = (
                f"give the split at least {SMALL_GALLERY} samples "
                "(more data, or a larger split fraction of the data section)"
            )
            if not n:
                out.append(f"the {name} split has no samples, so it gives no metrics; {advice}")
                continue
            below = " (the top 10% holds no whole rank, so it counts the first)" if n < 1 / RECALL_FRACTION else ""
            out.append(
                f"the {name} split has {n} sample(s): R@10% counts rank <= {int(recall_cutoff(n))} of {n}{below} "
                f"and moves in steps of {1 / n:.3f}, so {effect}; {advice}"
            )
    return out


def checked_splits(data: dict, model: ModelConfig, *, skip: bool) -> Splits:
    """The splits of a `data:` section, checked against the model's vocabularies (model.checks)."""
    vocabularies = {"source": list(model.sources), "caption_source": list(model.caption_sources)}
    return check_vocabularies(open_splits(data, model.image_size), vocabularies, skip=skip)

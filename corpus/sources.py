"""The recordists of the demo corpus: who made each sample, and how that shapes what it holds.

Real archives differ by source (PSM's iNaturalist, radio aporee, Freesound, YFCC): a wildlife
archive holds animals recorded in wild places at dawn and dusk, a city sound walk holds streets
by day, a general field recordist takes whatever a place offers at any hour. Each `Source` here
is such a practice, layered on top of the place/time rules (corpus/rules.py):

- where: how willing the recordist is to record at a place (0..1 from its attributes); a
  sample's source is drawn in proportion to `share` x that, so the source mix varies by place;
- when: the local hours it records (a density over the day: a profile of rules.TIME_PROFILES);
- keeps: a factor per group of sound classes on the rules' class weights (what the recordist aims
  the microphone at, or waits out), so a wildlife recording in a town rarely holds traffic.

docs/corpus.md prints this table (a test keeps it identical); `soundscape corpus explain` shows
each source's share and strongest classes at a place. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from corpus import rules
from corpus.places import PlaceAttributes

# Sound classes by what a recordist makes of them (every class in exactly one group).
GROUPS: dict[str, tuple[str, ...]] = {
    "animals": (
        "birds",
        "tropical_forest",
        "night_insects",
        "owl",
        "savanna_animals",
        "camels",
        "frogs",
        "water_birds",
    ),
    "water and leaves": ("water", "waves", "sea_swell", "wind_in_leaves"),
    "weather": ("rain", "thunder", "wind", "snowstorm"),
    "farm and village": ("farm_animals", "dogs"),
    "town": ("traffic", "trains", "aircraft", "market", "industry", "harbour"),
}
assert sorted(c for g in GROUPS.values() for c in g) == sorted(rules.CLASSES), "each class in one group"

# Where a recordist goes: place attributes -> willingness 0..1.
WHERE: dict[str, Callable[[PlaceAttributes], np.ndarray]] = {
    "wild land: (1 - urban index)^2 on vegetated land, half on bare land, 0.1 at sea": lambda p: np.where(
        p.land,
        (1.0 - rules.urban(p)) ** 2 * np.where(np.isin(p.landcover, rules.VEGETATED), 1.0, 0.5),
        0.1,
    ),
    "built-up places: the urban index (0 at sea)": rules.urban,
    "anywhere: 1": lambda p: np.ones(len(p.lat)),
}


@dataclass(frozen=True)
class Source:
    name: str  # the `source=` value of a query and the model's vocabulary entry
    recordist: str
    share: float  # relative share where every source is equally willing
    where: str  # key of WHERE
    when: str  # key of rules.TIME_PROFILES
    keeps: dict[str, float]  # group of GROUPS -> factor on its classes' weights

    def factors(self) -> np.ndarray:
        """The factor of every class of rules.CLASSES."""
        return np.array([self.keeps[next(g for g, cs in GROUPS.items() if c in cs)] for c in rules.CLASSES])


SOURCES: tuple[Source, ...] = (
    Source(
        "wildlife",
        "a wildlife recordist: animal and nature sounds, at dawn and dusk, in wild places",
        1.0,
        "wild land: (1 - urban index)^2 on vegetated land, half on bare land, 0.1 at sea",
        "dawn and dusk (5:30 and 19:00, 1.5 h), 0.2 otherwise",
        {"animals": 1.0, "water and leaves": 1.0, "weather": 0.4, "farm and village": 0.15, "town": 0.05},
    ),
    Source(
        "citywalk",
        "a city sound walk: streets, traffic and crowds, by day, in towns",
        3.0,
        "built-up places: the urban index (0 at sea)",
        "walking hours 9:00-20:00 (none from 20:30 to 8:30)",
        {"animals": 0.3, "water and leaves": 0.5, "weather": 0.5, "farm and village": 0.5, "town": 1.0},
    ),
    Source(
        "fieldrec",
        "a general field recordist: whatever the place offers, at any hour, anywhere",
        0.5,
        "anywhere: 1",
        "always",
        dict.fromkeys(GROUPS, 1.0),
    ),
)
NAMES: tuple[str, ...] = tuple(s.name for s in SOURCES)
FACTORS = np.stack([s.factors() for s in SOURCES])  # (sources, classes)
HOUR_BINS = 24 * 60  # hours are drawn by the minute from a source's profile


def mix(p: PlaceAttributes, hour: float | np.ndarray | None = None) -> np.ndarray:
    """(N, sources): the chance that a recording at each place comes from each source; given
    the hour too, the chance among the recordings made at that hour (each source's `when`
    density, normalised over the day, weighs its share)."""
    weight = np.stack([s.share * WHERE[s.where](p) for s in SOURCES], axis=1)
    if hour is not None:
        day = (np.arange(HOUR_BINS) + 0.5) / 60.0
        density = [rules.TIME_PROFILES[s.when] for s in SOURCES]
        h = np.broadcast_to(np.asarray(hour, np.float64), len(p.lat))
        weight = weight * np.stack([d(h) / d(day).mean() for d in density], axis=1)
    return weight / weight.sum(axis=1, keepdims=True)


def draw(p: PlaceAttributes, rng: np.random.Generator) -> np.ndarray:
    """The source index of a recording at each place, drawn from `mix`."""
    cumulative = np.cumsum(mix(p), axis=1)
    u = rng.uniform(size=(len(cumulative), 1))
    return np.minimum((u > cumulative).sum(axis=1), len(SOURCES) - 1).astype(np.int8)


def draw_hours(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A local hour in [0, 24) for each recording, drawn from its source's `when` profile."""
    minutes = (np.arange(HOUR_BINS) + 0.5) / 60.0
    hours = np.empty(len(source), np.float64)
    for i, s in enumerate(SOURCES):
        rows = np.flatnonzero(source == i)
        density = rules.TIME_PROFILES[s.when](minutes)
        bins = rng.choice(HOUR_BINS, size=len(rows), p=density / density.sum())
        hours[rows] = (bins + rng.uniform(size=len(rows))) / 60.0
    return np.minimum(hours, np.nextafter(24.0, 0.0))


def class_weights(place_weights: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(N, classes): the rules' class weights as each sample's source keeps them."""
    return place_weights * FACTORS[np.asarray(source, np.int64)]


def markdown_table() -> str:
    """The sources as the Markdown tables docs/corpus.md prints (a test keeps them identical)."""
    rows = ["| source | recordist | share | where | when | keeps |", "|---|---|---|---|---|---|"]
    for s in SOURCES:
        keeps = ", ".join(f"{group} {factor:g}" for group, factor in s.keeps.items())
        rows.append(f"| `{s.name}` | {s.recordist} | {s.share:g} | {s.where} | {s.when} | {keeps} |")
    rows += ["", "| group | sound classes |", "|---|---|"]
    rows += [f"| {g} | {', '.join(classes)} |" for g, classes in GROUPS.items()]
    return "\n".join(rows)


def explain(
    places: PlaceAttributes, month: int, hour: float, index: int = 0, top: int = 4
) -> list[tuple[str, float, float, list[tuple[str, float]]]]:
    """Per source at place `index`: (name, its share of the recordings there, its share of those
    made at this hour, its `top` strongest class weights as it keeps them)."""
    weights = rules.evaluate(places, np.full(len(places.lat), month), np.full(len(places.lat), hour)).classes[index]
    shares, at_hour = mix(places)[index], mix(places, hour)[index]
    out = []
    for i, s in enumerate(SOURCES):
        kept = weights * FACTORS[i]
        strongest = [(rules.CLASSES[c], float(kept[c])) for c in np.argsort(-kept)[:top] if kept[c] > 0]
        out.append((s.name, float(shares[i]), float(at_hour[i]), strongest))
    return out

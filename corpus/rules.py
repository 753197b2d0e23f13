"""The soundscape rules: an explicit table from place attributes and time to sound classes.

Each rule says: where it applies (a place weight 0..1 from land cover, climate, coast distance,
night lights, population, location), when (a profile over the local hour), in which season (a
factor per season, from latitude and month), and how strongly (its weight). A sample's class
weight is the sum of the rules of that class. docs/corpus.md prints this table; `explain`
shows which rules fired for one place and time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from corpus.places import PlaceAttributes

# ---------------------------------------------------------------------------------------------
# Seasons: latitude and month. Outside the tropics the four seasons (southern hemisphere shifted
# by six months); inside them (|lat| < 23.5) a wet season (local summer half) and a dry one.

SEASONS = ("winter", "spring", "summer", "autumn", "wet season", "dry season")
WINTER, SPRING, SUMMER, AUTUMN, WET, DRY = range(6)
TROPIC_DEG = 23.5


def season(lat: np.ndarray, month: np.ndarray) -> np.ndarray:
    """Season index (into SEASONS) of each (latitude, month 1..12)."""
    lat, month = np.asarray(lat, np.float64), np.asarray(month, np.int64)
    local = np.where(lat >= 0, month, (month + 5) % 12 + 1)  # the month as the north sees it
    temperate = np.select(
        [np.isin(local, (12, 1, 2)), np.isin(local, (3, 4, 5)), np.isin(local, (6, 7, 8))],
        [WINTER, SPRING, SUMMER],
        AUTUMN,
    )
    tropical = np.where((local >= 5) & (local <= 10), WET, DRY)
    return np.where(np.abs(lat) < TROPIC_DEG, tropical, temperate)


# ---------------------------------------------------------------------------------------------
# Day cycle: smooth profiles over the local hour (0 <= h < 24, on a circle).


def _circular(h: np.ndarray, centre: float) -> np.ndarray:
    d = np.abs(np.asarray(h, np.float64) - centre) % 24
    return np.minimum(d, 24 - d)


def bump(centre: float, width: float) -> Callable[[np.ndarray], np.ndarray]:
    """A Gaussian bump peaking (1) at `centre` hours."""
    return lambda h: np.exp(-0.5 * (_circular(h, centre) / width) ** 2)


def window(start: float, end: float, ramp: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """1 from `start` to `end` (wrapping past midnight), with linear ramps of `ramp` hours."""
    length = (end - start) % 24
    middle = (start + length / 2) % 24
    return lambda h: np.clip((length / 2 + ramp / 2 - _circular(h, middle)) / ramp, 0.0, 1.0)


def _max(*profiles: tuple[float, Callable]) -> Callable[[np.ndarray], np.ndarray]:
    """The pointwise maximum of scaled profiles."""
    return lambda h: np.max([scale * p(h) for scale, p in profiles], axis=0)


ALWAYS = lambda h: np.ones_like(np.asarray(h, np.float64))  # noqa: E731
DAWN = bump(5.5, 1.0)
DAY = window(7.0, 18.0)
NIGHT = window(20.5, 4.5)
AFTERNOON = bump(16.0, 2.5)
EVENING = bump(19.5, 1.5)
RUSH = _max((1.0, bump(8.0, 1.0)), (1.0, bump(17.5, 1.2)))
TIME_PROFILES = {  # name -> profile, for the docs and for `Rule.time`
    "always": ALWAYS,
    "dawn": DAWN,
    "day": DAY,
    "night": NIGHT,
    "afternoon": AFTERNOON,
    "rush hours (0.1 at night, 0.4 by day, 1 at 8 and 17:30)": _max((0.1, ALWAYS), (0.4, DAY), (1.0, RUSH)),
    "dawn, then day at 0.6": _max((1.0, DAWN), (0.6, DAY)),
    "day and dawn": _max((1.0, DAY), (1.0, DAWN)),
    "midday": bump(12.5, 3.0),
    "working hours": window(8.0, 18.0),
    "evening, day at 0.5": _max((1.0, EVENING), (0.5, DAY)),
    "dusk to dawn, day at 0.5": _max((1.0, window(18.0, 6.0)), (0.5, DAY)),
    "always, afternoon peak": _max((0.5, ALWAYS), (1.0, AFTERNOON)),
    "day 1, night 0.3": _max((0.3, ALWAYS), (1.0, DAY)),
    # Recording hours of the corpus's sources (corpus/sources.py), as densities over the day.
    "dawn and dusk (5:30 and 19:00, 1.5 h), 0.2 otherwise": _max(
        (0.2, ALWAYS), (1.0, bump(5.5, 1.5)), (1.0, bump(19.0, 1.5))
    ),
    "walking hours 9:00-20:00 (none from 20:30 to 8:30)": window(9.0, 20.0),
}

# ---------------------------------------------------------------------------------------------
# Place weights: functions of PlaceAttributes -> 0..1 per place.

FOREST = (1, 2, 3, 4, 5)
WOODY = (*FOREST, 8)
FARMLAND = (12, 14)
VEGETATED = (*FOREST, 6, 7, 8, 9, 10, 11, 12, 14)
TROPICAL, ARID, TEMPERATE, COLD, POLAR = 1, 2, 3, 4, 5


# Sounds of built-up places, loud enough to be heard well beyond them (corpus.build.cell_rules).
CARRYING = ("traffic", "trains", "aircraft", "market", "industry", "harbour")


def urban(p: PlaceAttributes) -> np.ndarray:
    """How built-up a place is, 0..1: mostly night lights, plus population, plus MODIS urban."""
    people = np.clip((np.log10(1.0 + p.population) - 4.0) / 3.0, 0.0, 1.0)
    index = 0.75 * p.lights + 0.25 * people
    return np.where(p.landcover == 13, np.maximum(index, 0.6), index) * p.land


def _is(values: np.ndarray, classes) -> np.ndarray:
    return np.isin(values, classes).astype(np.float64)


def _cover(*classes: int) -> Callable[[PlaceAttributes], np.ndarray]:
    return lambda p: _is(p.landcover, classes) * p.land


def _cover_in_climate(cover: tuple, climates: tuple) -> Callable[[PlaceAttributes], np.ndarray]:
    return lambda p: _is(p.landcover, cover) * _is(p.climate, climates) * p.land


def _coastal(scale_km: float, max_km: float) -> Callable[[PlaceAttributes], np.ndarray]:
    """Near the coast on either side, decaying with distance."""
    return lambda p: np.exp(-p.coast_km / scale_km) * (p.coast_km < max_km)


def _open_sea(p: PlaceAttributes) -> np.ndarray:
    return (~p.land) * np.clip((p.coast_km - 20.0) / 30.0, 0.0, 1.0)


def _in_box(p: PlaceAttributes, west: float, south: float, east: float, north: float) -> np.ndarray:
    return ((p.lon >= west) & (p.lon <= east) & (p.lat >= south) & (p.lat <= north)).astype(np.float64)


PLACES: dict[str, Callable[[PlaceAttributes], np.ndarray]] = {
    "woody land (forest, woody savanna) outside the tropics and poles": _cover_in_climate(
        WOODY, (ARID, TEMPERATE, COLD)
    ),
    "woody land, farmland or grassland outside the tropics and poles": _cover_in_climate(
        WOODY + FARMLAND + (10,), (ARID, TEMPERATE, COLD)
    ),
    "woody land in the tropical climate": _cover_in_climate(WOODY, (TROPICAL,)),
    "vegetated land, not polar": lambda p: _is(p.landcover, VEGETATED) * (p.climate != POLAR) * p.land,
    "forest in temperate or cold climates": _cover_in_climate(WOODY, (TEMPERATE, COLD)),
    "built-up (urban index)": urban,
    "built-up above 0.3": lambda p: urban(p) * (urban(p) > 0.3),
    "big city (>= 1 million people nearby)": lambda p: np.clip(np.log10(1.0 + p.population) - 5.5, 0.0, 1.0) * p.land,
    "built-up coast (within 20 km)": lambda p: (
        np.clip(urban(p) * 2, 0, 1) * np.exp(-p.coast_km / 10) * (p.coast_km < 20)
    ),
    "coast, either side (exp(-km/12), < 40 km)": _coastal(12.0, 40.0),
    "open sea (> 20 km offshore, full beyond 50 km)": _open_sea,
    "sea": lambda p: (~p.land).astype(np.float64),
    "tropical land": lambda p: (p.climate == TROPICAL) * p.land,
    "temperate land": lambda p: (p.climate == TEMPERATE) * p.land,
    "cold land": lambda p: (p.climate == COLD) * p.land,
    "tropical or temperate/cold land": lambda p: np.isin(p.climate, (TROPICAL, TEMPERATE, COLD)) * p.land,
    "arid climate, barren land or open shrubland": lambda p: (
        np.maximum(p.climate == ARID, np.isin(p.landcover, (7, 16))) * p.land
    ),
    "grassland or savanna": _cover(9, 10),
    "polar climate or snow and ice": lambda p: np.maximum(p.climate == POLAR, p.landcover == 15) * p.land,
    "woody land": _cover(*WOODY),
    "cold or polar land": lambda p: np.isin(p.climate, (COLD, POLAR)) * p.land,
    "snow and ice": _cover(15),
    "farmland (cropland, mosaics)": _cover(*FARMLAND),
    "grassland near people (> 5,000 nearby), half weight": lambda p: (
        0.5 * _is(p.landcover, (10,)) * (p.population > 5e3) * p.land
    ),
    "farmland or built-up land with > 10,000 people nearby": lambda p: (
        _is(p.landcover, (*FARMLAND, 13)) * (p.population > 1e4) * p.land
    ),
    "savanna, grassland or shrubland in Africa (tropical or arid)": lambda p: (
        _cover_in_climate((7, 8, 9, 10), (TROPICAL, ARID))(p) * _in_box(p, -20, -35, 52, 20)
    ),
    "arid open land of the Old World dry belt (20W-80E, 10N-50N)": lambda p: (
        _cover_in_climate((7, 10, 16), (ARID,))(p) * _in_box(p, -20, 10, 80, 50)
    ),
    "permanent wetland": _cover(11),
    "wetland, or woody land in the tropics": lambda p: np.maximum(
        _cover(11)(p), _cover_in_climate(WOODY, (TROPICAL,))(p)
    ),
    "wetland, or land within 10 km of the coast": lambda p: np.maximum(_cover(11)(p), (p.coast_km < 10) * p.land),
    "anywhere": lambda p: np.ones(len(p.lat)),
}

# ---------------------------------------------------------------------------------------------
# Season factors: a weight per SEASONS entry (winter, spring, summer, autumn, wet, dry).

BREEDING = (0.15, 1.0, 0.8, 0.4, 1.0, 0.8)  # bird song follows the breeding season
WARM_NIGHTS = (0.0, 0.4, 1.0, 0.4, 1.0, 0.7)  # insects and frogs need warm nights
ANY_SEASON = (1.0,) * 6


@dataclass(frozen=True)
class Rule:
    name: str
    sound: str  # the sound class it adds weight to
    weight: float
    place: str  # key of PLACES
    time: str  # key of TIME_PROFILES
    seasons: tuple[float, ...] = ANY_SEASON

    def evaluate(self, p: PlaceAttributes, season_index: np.ndarray, hour: np.ndarray) -> np.ndarray:
        return (
            self.weight
            * PLACES[self.place](p)
            * TIME_PROFILES[self.time](hour)
            * np.asarray(self.seasons)[season_index]
        )


RULES: tuple[Rule, ...] = (
    Rule(
        "dawn chorus",
        "birds",
        1.0,
        "woody land (forest, woody savanna) outside the tropics and poles",
        "dawn",
        BREEDING,
    ),
    Rule(
        "daytime birdsong",
        "birds",
        0.35,
        "woody land, farmland or grassland outside the tropics and poles",
        "day",
        BREEDING,
    ),
    Rule("rainforest chorus", "tropical_forest", 1.0, "woody land in the tropical climate", "dawn, then day at 0.6"),
    Rule("insects at night", "night_insects", 0.8, "vegetated land, not polar", "night", WARM_NIGHTS),
    Rule("owls at night", "owl", 0.5, "forest in temperate or cold climates", "night"),
    Rule(
        "rush-hour traffic",
        "traffic",
        1.0,
        "built-up (urban index)",
        "rush hours (0.1 at night, 0.4 by day, 1 at 8 and 17:30)",
    ),
    Rule("trains", "trains", 0.35, "built-up above 0.3", "day"),
    Rule("aircraft", "aircraft", 0.3, "big city (>= 1 million people nearby)", "day"),
    Rule("market crowds", "market", 0.5, "built-up (urban index)", "midday"),
    Rule("industry and construction", "industry", 0.35, "built-up (urban index)", "working hours"),
    Rule("harbours", "harbour", 0.8, "built-up coast (within 20 km)", "day 1, night 0.3"),
    Rule(
        "surf on the coast",
        "waves",
        1.3,
        "coast, either side (exp(-km/12), < 40 km)",
        "always",
        (1.2, 1.0, 0.9, 1.1, 1.0, 1.0),
    ),
    Rule("open-sea swell", "sea_swell", 1.0, "open sea (> 20 km offshore, full beyond 50 km)", "always"),
    Rule("wind at sea", "wind", 0.6, "sea", "always", (1.3, 1.0, 0.8, 1.1, 1.0, 1.0)),
    Rule("tropical rain", "rain", 0.8, "tropical land", "always, afternoon peak", (1, 1, 1, 1, 1.0, 0.15)),
    Rule("temperate rain", "rain", 0.45, "temperate land", "always", (0.8, 0.6, 0.4, 0.8, 0.6, 0.6)),
    Rule("cold-climate rain", "rain", 0.3, "cold land", "always", (0.0, 0.5, 0.8, 0.8, 0.8, 0.8)),
    Rule(
        "thunderstorms", "thunder", 0.45, "tropical or temperate/cold land", "afternoon", (0.0, 0.3, 1.0, 0.2, 1.0, 0.1)
    ),
    Rule("desert wind", "wind", 0.8, "arid climate, barren land or open shrubland", "always, afternoon peak"),
    Rule("wind on open grassland", "wind", 0.4, "grassland or savanna", "always"),
    Rule("polar wind", "wind", 0.9, "polar climate or snow and ice", "always"),
    Rule("wind in the leaves", "wind_in_leaves", 0.35, "woody land", "day", (0.5, 1, 1, 1, 1, 1)),
    Rule("winter snowstorms", "snowstorm", 1.0, "cold or polar land", "always", (1.0, 0.0, 0.0, 0.1, 0.0, 0.0)),
    Rule("ice-sheet storms", "snowstorm", 0.8, "snow and ice", "always"),
    Rule("farmyard animals", "farm_animals", 1.0, "farmland (cropland, mosaics)", "day and dawn"),
    Rule("grazing animals", "farm_animals", 1.0, "grassland near people (> 5,000 nearby), half weight", "day"),
    Rule("village dogs", "dogs", 0.3, "farmland or built-up land with > 10,000 people nearby", "evening, day at 0.5"),
    Rule(
        "savanna wildlife",
        "savanna_animals",
        0.7,
        "savanna, grassland or shrubland in Africa (tropical or arid)",
        "dusk to dawn, day at 0.5",
    ),
    Rule("desert camels", "camels", 0.4, "arid open land of the Old World dry belt (20W-80E, 10N-50N)", "day"),
    Rule("wetland water", "water", 0.8, "permanent wetland", "always"),
    Rule("rainforest streams", "water", 0.3, "woody land in the tropical climate", "always"),
    Rule("frogs at night", "frogs", 0.6, "wetland, or woody land in the tropics", "night", WARM_NIGHTS),
    Rule("water birds", "water_birds", 0.5, "wetland, or land within 10 km of the coast", "day"),
    Rule("quiet air", "wind", 0.08, "anywhere", "always"),
)

# Sound classes, in a fixed order (column order of the weight matrices), with caption phrases.
# A phrase list keyed "dawn"/"night"/... is used at that time of day; "any" otherwise.
SOUNDS: dict[str, dict[str, tuple[str, ...]]] = {
    "birds": {
        "dawn": ("a dawn chorus of birds", "birds singing at dawn"),
        "any": ("birds singing", "birdsong in the trees"),
    },
    "tropical_forest": {"any": ("tropical birds and monkeys calling", "the chorus of a tropical rainforest")},
    "night_insects": {"any": ("crickets chirping at night", "insects buzzing in the dark")},
    "owl": {"any": ("an owl hooting", "the call of an owl")},
    "traffic": {
        "rush": ("rush-hour traffic", "busy traffic in the street"),
        "any": ("traffic noise", "cars and buses passing"),
    },
    "trains": {"any": ("a train passing", "trains at a station")},
    "aircraft": {"any": ("aircraft taking off", "a jet passing overhead")},
    "market": {"any": ("a busy market crowd", "people bustling in a market square")},
    "industry": {"any": ("machinery and factory noise", "construction work and machines")},
    "harbour": {"any": ("a busy harbour with ship horns", "boats and ships in a port")},
    "waves": {"any": ("waves crashing on the shore", "surf breaking on rocks")},
    "sea_swell": {"any": ("the swell of the open sea", "waves rolling on the open ocean")},
    "water": {"any": ("a flowing stream", "water rushing in a river")},
    "rain": {"any": ("rain falling", "steady rain")},
    "thunder": {"any": ("thunder rumbling", "a thunderstorm")},
    "wind": {"any": ("wind blowing", "gusts of wind")},
    "wind_in_leaves": {"any": ("wind rustling the leaves", "a breeze in the trees")},
    "snowstorm": {"any": ("a howling snowstorm", "a blizzard")},
    "farm_animals": {"any": ("farm animals: cows, sheep and chickens", "a farmyard with animals")},
    "dogs": {"any": ("dogs barking", "a dog barking in a village")},
    "savanna_animals": {"any": ("lions and elephants on the savanna", "wild animals calling on the savanna")},
    "camels": {"any": ("camels grunting in the desert",)},
    "frogs": {"any": ("frogs croaking in a pond", "a chorus of frogs")},
    "water_birds": {"any": ("water birds calling on a wetland", "ducks and wading birds")},
}
CLASSES: tuple[str, ...] = tuple(SOUNDS)
assert {r.sound for r in RULES} <= set(CLASSES), "every rule must name a known sound class"


@dataclass
class Evaluation:
    """Rule activations (N, len(RULES)) and class weights (N, len(CLASSES)) of N places/times."""

    rules: np.ndarray
    classes: np.ndarray
    season: np.ndarray


_RULE_TO_CLASS = np.array([[r.sound == c for c in CLASSES] for r in RULES], dtype=np.float64)


def evaluate(places: PlaceAttributes, month: np.ndarray, hour: np.ndarray) -> Evaluation:
    """Every rule at every place and time; class weight = sum of its rules' activations."""
    seasons = season(places.lat, month)
    hour = np.asarray(hour, np.float64)
    return from_activations(np.stack([rule.evaluate(places, seasons, hour) for rule in RULES], axis=1), seasons)


def from_activations(activations: np.ndarray, seasons: np.ndarray) -> Evaluation:
    """The evaluation of given rule activations (N, len(RULES)), e.g. averaged over a cell."""
    return Evaluation(rules=activations, classes=activations @ _RULE_TO_CLASS, season=seasons)


def explain(places: PlaceAttributes, month: int, hour: float, index: int = 0) -> list[tuple[str, str, float]]:
    """(rule, class, activation) of the rules that fired for place `index`, strongest first."""
    e = evaluate(places, np.full(len(places.lat), month), np.full(len(places.lat), hour))
    fired = [(r.name, r.sound, float(e.rules[index, i])) for i, r in enumerate(RULES) if e.rules[index, i] > 0]
    return sorted(fired, key=lambda t: -t[2])


def markdown_table() -> str:
    """The rules as the Markdown table docs/corpus.md prints (a test keeps the two identical)."""
    season_names = ("winter", "spring", "summer", "autumn", "wet", "dry")
    rows = ["| rule | sound class | weight | where | when | season factors |", "|---|---|---|---|---|---|"]
    for r in RULES:
        seasons = (
            "any"
            if r.seasons == ANY_SEASON
            else ", ".join(f"{n} {f:g}" for n, f in zip(season_names, r.seasons, strict=True))
        )
        rows.append(f"| {r.name} | {r.sound} | {r.weight:g} | {r.place} | {r.time} | {seasons} |")
    return "\n".join(rows)

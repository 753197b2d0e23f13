"""Captions from templates: the audible sounds of a sample, where (from its place attributes) and
when (time of day, season). Several templates and phrasings per class, so the text tower does not
learn one fixed sentence per class."""

from __future__ import annotations

import numpy as np

from corpus.places import PlaceAttributes
from corpus.rules import ARID, COLD, POLAR, SEASONS, SOUNDS, TEMPERATE, TROPICAL, urban

TEMPLATES = (
    "{sounds}",
    "{sounds} {place}",
    "the sound of {sounds} {when}",
    "{sounds} {place}, {when}",
    "a recording of {sounds} in {season}",
    "{sounds}, {when} {place}",
)

COVER_NOUNS = {
    0: "a lake",
    1: "forest",
    2: "forest",
    3: "forest",
    4: "forest",
    5: "forest",
    6: "shrubland",
    7: "shrubland",
    8: "savanna",
    9: "savanna",
    10: "grassland",
    11: "wetland",
    12: "farmland",
    13: "city",
    14: "farmland",
    15: "ice field",
    16: "desert",
}
CLIMATE_ADJECTIVES = {TROPICAL: "tropical", ARID: "dry", TEMPERATE: "temperate", COLD: "cold", POLAR: "polar"}


def daypart(hour: float) -> str:
    """The time-of-day word a caption uses: dawn, morning, midday, afternoon, evening, night."""
    h = hour % 24
    for end, name in (
        (4.5, "night"),
        (7.0, "dawn"),
        (11.0, "morning"),
        (14.0, "midday"),
        (18.0, "afternoon"),
        (21.0, "evening"),
    ):
        if h < end:
            return name
    return "night"


WHEN = {
    "night": "at night",
    "dawn": "at dawn",
    "morning": "in the morning",
    "midday": "at midday",
    "afternoon": "in the afternoon",
    "evening": "in the evening",
}


def place_phrase(p: PlaceAttributes, i: int) -> str:
    """'in a temperate forest', 'in a city', 'on the coast', 'on the open ocean', ... for place i."""
    if p.coast_km[i] < 10 or (not p.land[i] and p.coast_km[i] < 40):
        return "on the coast"
    if not p.land[i]:
        return "on the open ocean"
    if urban(p)[i] > 0.5 or p.landcover[i] == 13:
        return "in a city"
    noun = COVER_NOUNS[int(p.landcover[i])]
    adjective = CLIMATE_ADJECTIVES.get(int(p.climate[i]))
    if noun.startswith("a "):
        return f"on {noun}"
    if adjective is None:
        return f"in a {noun}"
    return f"in {'an' if adjective[0] in 'aeiou' else 'a'} {adjective} {noun}"


def sound_phrase(sound: str, part: str, rng: np.random.Generator) -> str:
    phrases = SOUNDS[sound]
    key = "rush" if part in ("morning", "afternoon") and "rush" in phrases else part
    options = phrases.get(key, phrases["any"])
    return options[int(rng.integers(len(options)))]


def caption(
    sounds: list[str], p: PlaceAttributes, i: int, hour: float, season_index: int, rng: np.random.Generator
) -> tuple[str, int]:
    """(caption, template index) naming `sounds` (loudest first) at place i."""
    part = daypart(hour)
    phrases = [sound_phrase(s, part, rng) for s in sounds]
    joined = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    template = int(rng.integers(len(TEMPLATES)))
    text = TEMPLATES[template].format(
        sounds=joined, place=place_phrase(p, i), when=WHEN[part], season=SEASONS[season_index]
    )
    return text[0].upper() + text[1:], template

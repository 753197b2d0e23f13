"""The soundscape rules table: seasons, day cycle and class weights for hand-made places."""

from __future__ import annotations

import numpy as np

from corpus import rules
from corpus.captions import caption, daypart, place_phrase
from corpus.places import PlaceAttributes

PLACE = dict(landcover=5, climate=rules.TEMPERATE, land=True, coast_km=400.0, lights=0.0, population=0.0)


def places(**overrides) -> PlaceAttributes:
    """One place (lat 48 N, lon 8 E: the Black Forest) with the given attributes."""
    values = {"lat": 48.0, "lon": 8.0, **PLACE, **overrides}
    return PlaceAttributes(**{k: np.array([v]) for k, v in values.items()})


def weights(p: PlaceAttributes, month: int, hour: float) -> dict[str, float]:
    e = rules.evaluate(p, np.array([month]), np.array([hour]))
    return dict(zip(rules.CLASSES, e.classes[0], strict=True))


def top(p: PlaceAttributes, month: int, hour: float) -> str:
    w = weights(p, month, hour)
    return max(w, key=w.get)


def test_seasons_follow_hemisphere_and_tropics():
    lat = np.array([50.0, -50.0, 10.0, 10.0, -10.0])
    month = np.array([1, 1, 7, 1, 1])
    assert [rules.SEASONS[s] for s in rules.season(lat, month)] == [
        "winter",
        "summer",
        "wet season",
        "dry season",
        "wet season",
    ]


def test_day_cycle_profiles_wrap_midnight():
    assert rules.NIGHT(np.array([0.0]))[0] == 1.0 and rules.NIGHT(np.array([12.0]))[0] == 0.0
    assert rules.DAWN(np.array([5.5]))[0] == 1.0 and rules.DAWN(np.array([14.0]))[0] < 1e-6
    assert rules.RUSH(np.array([8.0]))[0] > 0.99 and rules.RUSH(np.array([3.0]))[0] < 0.01


def test_temperate_forest_has_a_dawn_chorus_in_may():
    forest = places()
    dawn, afternoon, night = weights(forest, 5, 5.0), weights(forest, 5, 14.0), weights(forest, 5, 23.0)
    assert top(forest, 5, 5.0) == "birds" and dawn["birds"] >= 0.8
    assert dawn["birds"] > 2 * afternoon["birds"]
    assert night["birds"] < 0.01 and night["night_insects"] > 0.2 and night["owl"] > 0.3
    assert weights(forest, 1, 5.0)["birds"] < 0.3 * dawn["birds"]  # winter: little song


def test_city_traffic_peaks_at_rush_hour():
    city = places(landcover=13, lights=1.0, population=3e6)
    assert top(city, 3, 8.0) == "traffic"
    assert weights(city, 3, 8.0)["traffic"] > 5 * weights(city, 3, 3.0)["traffic"]
    countryside = places(landcover=12, lights=0.0, population=2e3)
    assert weights(countryside, 3, 8.0)["traffic"] < 0.05
    assert top(countryside, 6, 11.0) == "farm_animals"


def test_coast_gets_waves_and_open_sea_gets_swell():
    coast_sea = places(landcover=0, land=False, coast_km=2.0, climate=0)
    open_sea = places(landcover=0, land=False, coast_km=400.0, climate=0)
    assert top(coast_sea, 8, 12.0) == "waves"
    assert weights(open_sea, 8, 12.0)["waves"] == 0.0
    assert top(open_sea, 8, 12.0) == "sea_swell"


def test_cold_winters_bring_snowstorms_and_tropical_rain_follows_the_wet_season():
    taiga = places(lat=62.0, lon=100.0, landcover=1, climate=rules.COLD)
    assert weights(taiga, 1, 12.0)["snowstorm"] >= 1.0 and weights(taiga, 7, 12.0)["snowstorm"] == 0.0
    rainforest = places(lat=5.0, lon=20.0, landcover=2, climate=rules.TROPICAL)
    assert weights(rainforest, 7, 16.0)["rain"] > 3 * weights(rainforest, 1, 16.0)["rain"]
    assert top(rainforest, 7, 5.5) == "tropical_forest"


def test_every_place_has_some_sound():
    desert = places(lat=23.0, lon=10.0, landcover=16, climate=rules.ARID)
    assert top(desert, 4, 14.0) == "wind"
    assert all(sum(weights(p, m, h).values()) > 0 for p in (places(), desert) for m in (1, 7) for h in (0, 12))


def test_explain_lists_the_rules_that_fired():
    fired = rules.explain(places(), 5, 5.0)
    assert fired[0][:2] == ("dawn chorus", "birds")
    assert all(w > 0 for _, _, w in fired)


def test_captions_name_sounds_place_and_time():
    rng = np.random.default_rng(0)
    p = places()
    assert place_phrase(p, 0) == "in a temperate forest"
    assert place_phrase(places(land=False, landcover=0, coast_km=300.0), 0) == "on the open ocean"
    assert place_phrase(places(land=False, landcover=0, coast_km=5.0), 0) == "on the coast"
    assert daypart(5.5) == "dawn" and daypart(23.0) == "night"
    texts = {caption(["birds"], p, 0, 5.5, rules.SPRING, rng)[0] for _ in range(40)}
    assert len(texts) >= 4  # several templates and phrasings
    assert all("bird" in t.lower() for t in texts)


def test_docs_print_the_rules_table_of_the_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "corpus.md").read_text(encoding="utf-8")
    assert rules.markdown_table() in doc, "regenerate the table in docs/corpus.md from rules.markdown_table()"


class HalfSea:
    """Sea west of lon 11.25, temperate forest east of it."""

    def attributes(self, lat, lon) -> PlaceAttributes:
        land = lon >= 11.25
        n = len(lat)
        return PlaceAttributes(
            lat=lat,
            lon=lon,
            landcover=np.where(land, 5, 0),
            climate=np.full(n, rules.TEMPERATE),
            land=land,
            coast_km=np.abs(lon - 11.25) * 75.0,
            lights=np.zeros(n),
            population=np.zeros(n),
        )


def test_cell_points_lie_inside_their_cells():
    import mercantile

    from corpus.build import cell_points

    level, x, y = np.array([4, 7]), np.array([8, 100]), np.array([5, 40])
    lat, lon = cell_points(level, x, y, 8)
    assert lat.shape == (2, 64)
    for i in range(2):
        b = mercantile.bounds(int(x[i]), int(y[i]), int(level[i]))
        assert (lon[i] > b.west).all() and (lon[i] < b.east).all()
        assert (lat[i] > b.south).all() and (lat[i] < b.north).all()


def test_a_cells_sounds_are_its_rules_averaged_over_the_cell():
    from corpus.build import cell_points, cell_rules

    # Near 48 N: level-5 cell x=15 spans lon -11.25..0 (sea), x=17 spans 11.25..22.5 (forest),
    # and level-4 cell x=8 spans 0..22.5 (half of each).
    level, x, y = np.array([5, 5, 4]), np.array([15, 17, 8]), np.array([11, 11, 5])
    lat, month, hour = np.array([48.0, 48.0, 48.0]), np.array([5, 5, 5]), np.array([5.5, 5.5, 5.5])
    cells = cell_rules(HalfSea(), lat, level, x, y, month, hour)
    grid_lat, grid_lon = cell_points(level, x, y, 8)
    for i in range(3):
        points = HalfSea().attributes(grid_lat[i], grid_lon[i])
        expected = rules.evaluate(points, np.full(64, 5), np.full(64, 5.5)).classes.mean(axis=0)
        np.testing.assert_allclose(cells.classes[i], expected)
    birds = rules.CLASSES.index("birds")
    # Dawn in May: the forest cell sings, the sea cell does not, the half-and-half cell half as much.
    assert cells.classes[1, birds] > 0 and cells.classes[0, birds] == 0
    np.testing.assert_allclose(cells.classes[2, birds], cells.classes[1, birds] / 2, rtol=0.05)


class Town(HalfSea):
    """HalfSea with a lit town on the forest side between lon 11.25 and 12.0."""

    def attributes(self, lat, lon) -> PlaceAttributes:
        p = super().attributes(lat, lon)
        p.lights = np.where((lon >= 11.25) & (lon < 12.0), 1.0, 0.0)
        return p


def test_sounds_that_carry_are_heard_beyond_their_town():
    from corpus.build import cell_points, cell_rules

    level, x, y = np.array([5]), np.array([17]), np.array([11])  # lon 11.25..22.5: town on 1/8 of the grid
    lat, month, hour = np.array([48.0]), np.array([5]), np.array([8.0])  # rush hour
    cells = cell_rules(Town(), lat, level, x, y, month, hour)
    grid_lat, grid_lon = cell_points(level, x, y, 8)
    points = rules.evaluate(Town().attributes(grid_lat[0], grid_lon[0]), np.full(64, 5), np.full(64, 8.0)).rules
    traffic = next(i for i, r in enumerate(rules.RULES) if r.sound == "traffic")
    birds = next(i for i, r in enumerate(rules.RULES) if r.name == "daytime birdsong")
    mean, peak = points[:, traffic].mean(), points[:, traffic].max()
    assert 0 < mean < peak
    np.testing.assert_allclose(cells.rules[0, traffic], np.sqrt(mean * peak))  # 0.35 of the town's level, not 0.125
    np.testing.assert_allclose(cells.rules[0, birds], points[:, birds].mean())  # birdsong does not carry


def test_town_sounds_can_be_heard_apart():
    """choose_sounds with max_town keeps the first drawn town sounds only, every other sound as
    drawn, and still lets each town sound lead in proportion to its weight."""
    from corpus.build import TOWN, choose_sounds

    w = np.zeros(len(rules.CLASSES))
    town = {c: rules.CLASSES.index(c) for c in ("traffic", "aircraft", "market")}
    w[list(town.values())] = [1.0, 0.8, 0.6]
    w[rules.CLASSES.index("wind")] = 0.9
    available = np.ones(len(rules.CLASSES), bool)
    heard_alone = dict.fromkeys(town.values(), 0)
    for seed in range(300):
        every = choose_sounds(w, available, np.random.default_rng(seed))
        apart = choose_sounds(w, available, np.random.default_rng(seed), max_town=1)
        kept = [c for c, _ in apart if c in TOWN]
        assert len([c for c, _ in every if c in TOWN]) == 3 and len(kept) == 1
        assert rules.CLASSES.index("wind") in [c for c, _ in apart]
        assert max(g for _, g in apart) == 0.0 and len(apart) == 2
        heard_alone[kept[0]] += 1
    assert heard_alone[town["traffic"]] > heard_alone[town["aircraft"]] > heard_alone[town["market"]] > 0

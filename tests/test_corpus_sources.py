"""The demo corpus's sources (recordists) and its recording split, on hand-made places and clips:
where each source records, at which hours, which classes it keeps, and which recordings the
held-out samples may play. Needs no assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from corpus import rules, sources
from corpus.clips import Clip, split_recordings
from corpus.mixing import layer_events
from corpus.places import PlaceAttributes

FOREST = dict(lat=48.0, lon=8.0, landcover=5, climate=rules.TEMPERATE, land=True, coast_km=400.0, lights=0.0)
CITY = dict(FOREST, landcover=13, lights=1.0, population=3e6)
SEA = dict(FOREST, landcover=0, climate=0, land=False, coast_km=300.0)


def places(*rows: dict) -> PlaceAttributes:
    rows = [{"population": 0.0, **r} for r in rows]
    return PlaceAttributes(**{k: np.array([r[k] for r in rows]) for k in rows[0]})


def index(name: str) -> int:
    return sources.NAMES.index(name)


def kept(place: dict, month: int, hour: float, source: str) -> dict[str, float]:
    """A place's class weights as `source` keeps them."""
    p = places(place)
    base = rules.evaluate(p, np.array([month]), np.array([hour])).classes
    weights = sources.class_weights(base, np.array([index(source)]))[0]
    return dict(zip(rules.CLASSES, weights, strict=True))


def test_the_source_mix_varies_by_place_as_archives_do():
    mix = dict(zip(("forest", "city", "sea"), sources.mix(places(FOREST, CITY, SEA)), strict=True))
    np.testing.assert_allclose([m.sum() for m in mix.values()], 1.0)
    wildlife, citywalk, fieldrec = (index(n) for n in ("wildlife", "citywalk", "fieldrec"))
    assert mix["forest"][wildlife] > 0.5 > mix["city"][wildlife] * 5  # wildlife clusters in wild places
    assert mix["city"][citywalk] > 0.5 and mix["forest"][citywalk] == 0.0  # city walks in towns
    assert mix["sea"][citywalk] == 0.0 and mix["sea"][fieldrec] > mix["sea"][wildlife] > 0


def test_each_source_keeps_its_classes():
    city_rush = {s: kept(CITY, 5, 8.0, s) for s in sources.NAMES}
    assert max(city_rush["citywalk"], key=city_rush["citywalk"].get) == "traffic"
    assert city_rush["wildlife"]["traffic"] == city_rush["fieldrec"]["traffic"] * 0.05
    forest_dawn = {s: kept(FOREST, 5, 5.5, s) for s in sources.NAMES}
    assert max(forest_dawn["wildlife"], key=forest_dawn["wildlife"].get) == "birds"
    assert forest_dawn["citywalk"]["birds"] == forest_dawn["fieldrec"]["birds"] * 0.3
    assert forest_dawn["fieldrec"] == kept(FOREST, 5, 5.5, "fieldrec")  # fieldrec keeps the rules as they are
    assert set(sources.FACTORS[index("fieldrec")]) == {1.0}


def test_each_source_records_at_its_own_hours():
    rng = np.random.default_rng(3)
    source = np.repeat(np.arange(len(sources.SOURCES)), 20000).astype(np.int8)
    hours = sources.draw_hours(source, rng)
    assert ((hours >= 0) & (hours < 24)).all()
    by = {name: hours[source == i] for i, name in enumerate(sources.NAMES)}
    walk = by["citywalk"]
    assert ((walk >= 8.5) & (walk <= 20.5)).all()  # no city walk at night
    dawn_dusk = lambda h: ((h >= 4.5) & (h < 6.5)) | ((h >= 18) & (h < 20))  # noqa: E731
    assert dawn_dusk(by["wildlife"]).mean() > 2 * dawn_dusk(by["fieldrec"]).mean()  # 4 of 24 hours: 38 % vs 17 %
    counts = np.histogram(by["fieldrec"], bins=24, range=(0, 24))[0]
    assert counts.min() > 0.8 * counts.mean()  # fieldrec: any hour
    again = sources.draw_hours(source, np.random.default_rng(3))
    np.testing.assert_array_equal(hours, again)


def test_docs_print_the_sources_table_of_the_code():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "corpus.md").read_text(encoding="utf-8")
    assert sources.markdown_table() in doc


def _clips(counts: dict[str, int]) -> list[Clip]:
    out, offset = [], 0
    for sound, n in counts.items():
        for k in range(n):
            frames = 44100 * (k + 2)
            out.append(Clip(f"asset/{sound}/{k}.ogg", sound, offset, frames, 1.0, "credit"))
            offset += frames
    return out


def test_recordings_are_split_into_disjoint_pools_from_the_seed():
    clips = _clips({"birds": 11, "traffic": 6, "waves": 2, "owl": 1})
    pools = split_recordings(clips, seed=0)
    for sound, n in (("birds", 11), ("traffic", 6), ("waves", 2)):
        train = {r.clip for r in pools["train"][sound]}
        held = {r.clip for r in pools["held_out"][sound]}
        assert train and held and not train & held and len(train | held) == n
        assert len(held) == max(1, round(0.3 * n))
    (first,), (second,) = pools["train"]["owl"], pools["held_out"]["owl"]  # one recording: halves in time
    assert first.clip == second.clip and first.start + first.frames == second.start
    assert second.start + second.frames == clips[first.clip].frames
    assert pools["train"]["frogs"] == pools["held_out"]["frogs"] == []
    assert split_recordings(clips, seed=0) == pools
    assert any(split_recordings(clips, seed=s)["held_out"]["birds"] != pools["held_out"]["birds"] for s in (1, 2, 3))


def test_a_layer_plays_only_its_pools_stretches():
    clips = _clips({"owl": 1, "birds": 3})
    pools = split_recordings(clips, seed=0)
    rng = np.random.default_rng(0)
    for pool in ("train", "held_out"):
        for sound in ("owl", "birds"):
            stretches = pools[pool][sound]
            for _ in range(50):
                for clip, src, _dst, length, _gain in layer_events(stretches, -3.0, 44100 * 3, 44100, rng):
                    assert any(
                        r.clip == clip and r.start <= src and src + length <= r.start + r.frames for r in stretches
                    )

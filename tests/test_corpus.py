"""The demo corpus end to end on small real assets: acquisition and integrity checks, archive
readers, place look-ups, a small build over the Blue Marble fixture with OpenSFX sounds, and
the `demo` reader (valid samples, same pixels as runtime.imagery, determinism, geographic split).

Downloads about 70 MB once per session (the place assets and the 9.9 MB openttd-opensfx)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from cli.main import main
from corpus import assets, rules, sources
from corpus.archives import ArchiveError, zip_stream_entries
from corpus.build import STRATA, BuildConfig, build, draw_locations, resolve_shares
from corpus.errors import CorpusError
from corpus.places import PLACE_ASSETS
from corpus.reader import DemoCorpus, factory
from model.config import ConfigError
from model.data import Sample, reader
from runtime.imagery import Imagery
from runtime.tiles import MERCATOR_LAT_LIMIT

LEVELS = (4, 5, 6)


@pytest.fixture(scope="session")
def asset_root(place_assets):
    """The session's place assets (conftest) plus one sound asset: fetched once per session."""
    assets.ensure([*PLACE_ASSETS, "openttd-opensfx"], place_assets, progress=False)
    return place_assets


def small_config(out, asset_root, imagery_path, **overrides) -> BuildConfig:
    values = dict(
        out=out,
        assets=asset_root,
        imagery=imagery_path,
        samples=400,
        levels=LEVELS,
        image_size=32,
        duration_s=2.0,
        seed=7,
        audio_assets=("openttd-opensfx",),
    )
    return BuildConfig(**{**values, **overrides})


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory, asset_root, imagery_path):
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build(small_config(out, asset_root, imagery_path), progress=False)
    return out


# --- assets and archives -----------------------------------------------------------------------


def test_acquired_assets_carry_licence_attribution_and_stamp(asset_root):
    folder = assets.verify(assets.ASSETS["openttd-opensfx"], asset_root)
    assert "CC BY-SA 3.0" in (folder / "ATTRIBUTION.txt").read_text(encoding="utf-8")
    assert (folder / "license.txt").stat().st_size > 1000
    assert len(list((folder / "opensfx").glob("*.wav"))) == 73
    assert "Janis Lukss" in (folder / "catalogue.tsv").read_text(encoding="utf-8")
    for name in PLACE_ASSETS:
        assert (asset_root / name / "ATTRIBUTION.txt").exists()


def test_corrupt_cached_asset_is_refused_with_one_sentence_and_exit_2(asset_root, tmp_path, capsys):
    shutil.copytree(asset_root / "mcd12c1", tmp_path / "mcd12c1")
    tif = tmp_path / "mcd12c1" / "landcover.tif"
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])  # truncated
    with pytest.raises(assets.AssetError, match=r"asset mcd12c1 .* is corrupt \(landcover.tif"):
        assets.verify(assets.ASSETS["mcd12c1"], tmp_path)
    assert main(["corpus", "fetch", "mcd12c1", "--assets", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "soundscape corpus fetch mcd12c1 --force" in err


def test_incomplete_stamp_counts_as_missing(asset_root, tmp_path):
    shutil.copytree(asset_root / "mcd12c1", tmp_path / "mcd12c1")
    (tmp_path / "mcd12c1" / assets.STAMP).write_text("{", encoding="utf-8")  # killed mid-write
    with pytest.raises(assets.AssetError, match="missing or incomplete"):
        assets.verify(assets.ASSETS["mcd12c1"], tmp_path)


def test_partial_download_never_passes_for_complete(tmp_path):
    asset = assets.ASSETS["global-land-mask"]
    archive = assets._download(asset, tmp_path)
    assets.check_archive(asset, archive)  # the real download matches its pin
    archive.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(assets.AssetError, match="incomplete or changed download"):
        assets.check_archive(asset, archive)


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        chunk = self._data.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)


def test_zip_entries_stream_without_seeking_and_check_crc():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("audio/a.ogg", b"x" * 5000, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("art/b.png", b"skip me" * 100)
        z.writestr("audio/c.txt", b"licence", compress_type=zipfile.ZIP_STORED)
    data = buf.getvalue()
    entries = dict(zip_stream_entries(io.BufferedReader(_Unseekable(data)), lambda n: n.startswith("audio/")))
    assert entries == {"audio/a.ogg": b"x" * 5000, "audio/c.txt": b"licence"}
    with pytest.raises(ArchiveError, match="truncated"):
        list(zip_stream_entries(io.BytesIO(data[:200]), lambda n: True))


# --- places --------------------------------------------------------------------------------------


def test_place_lookups_read_the_real_rasters(corpus_path):
    places = DemoCorpus(corpus_path, progress=False).places()
    names = ["berlin", "sahara", "mid-atlantic", "lands end", "black forest"]
    lat = np.array([52.52, 23.0, 30.0, 50.07, 48.0])
    lon = np.array([13.40, 10.0, -40.0, -5.70, 8.2])
    p = dict(
        zip(
            names,
            zip(
                *[
                    getattr(places.attributes(lat, lon), k)
                    for k in ("landcover", "climate", "land", "coast_km", "lights", "population")
                ],
                strict=True,
            ),
            strict=True,
        )
    )
    assert p["berlin"][0] == 13 and p["berlin"][4] > 0.9 and p["berlin"][5] > 1e6
    assert p["sahara"][0] == 16 and p["sahara"][1] == 2 and p["sahara"][4] == 0
    assert not p["mid-atlantic"][2] and p["mid-atlantic"][3] > 1000
    assert p["lands end"][3] < 10
    assert p["black forest"][0] in (1, 4, 5) and p["black forest"][3] > 300


# --- build and reader ----------------------------------------------------------------------------


class _StripedPlaces:
    """Land everywhere, lit east of 5 E, a coast west of 1 E: half the area lit, a tenth coast."""

    def is_land(self, lat, lon):
        return np.ones(np.shape(lat), bool)

    def coast_km(self, lat, lon):
        return np.where(np.asarray(lon) < 1, 10.0, 1e4)

    def lights(self, lat, lon):
        return np.where(np.asarray(lon) > 5, 1.0, 0.0)


def test_strata_given_by_area_are_drawn_at_one_density():
    """`--strata land=area,coast=area,lit=area` places samples independently of what is heard
    there; numbered shares hold whatever the areas (the default over-samples lit places: 18 % of the
    samples on 0.8 % of the map)."""
    box, even = (0.0, 10.0, 10.0, 20.0), {"land": "area", "coast": "area", "lit": "area"}
    shares = resolve_shares(_StripedPlaces(), box, even, np.random.default_rng(0))
    assert shares["sea"] == 0 and abs(sum(shares.values()) - 1) < 1e-9
    assert shares["lit"] == pytest.approx(0.5, abs=0.01) and shares["coast"] == pytest.approx(0.1, abs=0.01)
    _, lon, stratum = draw_locations(_StripedPlaces(), 4000, box, even, np.random.default_rng(1))
    counts = np.histogram(lon, bins=10, range=(0, 10))[0]
    assert counts.min() > 330 and counts.max() < 470  # about 400 in every tenth of the box
    with pytest.raises(CorpusError, match=r"^the imagery bounds hold none of sea, the strata given by area$"):
        resolve_shares(_StripedPlaces(), box, {"land": 0.5, "sea": "area"}, np.random.default_rng(0))
    shares = {"land": 0.6, "coast": 0.1, "lit": 0.3}  # numbers: lit places get 0.3, not half
    _, lon, stratum = draw_locations(_StripedPlaces(), 4000, box, shares, np.random.default_rng(1))
    assert (lon > 5).sum() == (stratum == list(STRATA).index("lit")).sum() == 1200


def test_per_map_cell_draws_meet_every_map_cell_as_often():
    """By area, a level-4 map cell at 56-67 N holds a quarter of the points of one at the equator
    (a map cell's km^2 shrink as cos^2 of the latitude); drawn per map cell, as many."""
    import mercantile

    box, land = (0.0, -MERCATOR_LAT_LIMIT, 10.0, MERCATOR_LAT_LIMIT), {"land": 1.0}  # unlit land: 1-5 E
    equator, north = mercantile.tile(5, 0, 4), mercantile.tile(5, 63, 4)
    band = [np.ptp(np.sin(np.radians([b.south, b.north]))) for b in map(mercantile.bounds, (north, equator))]
    for per_map_cell, ratio in ((False, band[0] / band[1]), (True, 1.0)):  # 0.25 of the points, then 1
        lat, lon, _ = draw_locations(_StripedPlaces(), 40_000, box, land, np.random.default_rng(2), per_map_cell)
        tiles = [mercantile.tile(a, b, 4) for a, b in zip(lon, lat, strict=True)]
        assert tiles.count(north) / tiles.count(equator) == pytest.approx(ratio, rel=0.1)


def test_build_writes_manifest_recipes_and_provenance(corpus_path):
    corpus = DemoCorpus(corpus_path, progress=False)
    m = corpus.manifest
    assert m["samples"] == len(corpus) > 300 and m["sample_rate"] == 44100
    assert sum(m["strata"].values()) + m["dropped_without_imagery"] == 400
    assert m["classes_without_clips"]  # OpenSFX alone has no birdsong: said, not hidden
    assert "openttd-opensfx" in (corpus_path / "ATTRIBUTION.md").read_text(encoding="utf-8")
    row = int(corpus.index[0])
    fired_sounds = {r.sound for r in rules.RULES if r.name in corpus.fired(row)}
    assert corpus.sounds(row) and set(corpus.sounds(row)) <= fired_sounds  # every layer has a rule behind it
    lit = np.flatnonzero((corpus.table["lights"] > 0.5) & (corpus.table["hour"] > 7) & (corpus.table["hour"] < 9))
    assert any("traffic" in corpus.sounds(int(r)) for r in lit)  # rush hour in lit places


def test_reader_yields_valid_samples_with_the_pixels_of_model_imagery(corpus_path, imagery_path):
    splits = reader("demo")({"kind": "demo", "path": str(corpus_path)}, 32)
    imagery = Imagery(imagery_path)
    corpus = splits.train.corpus
    for i in range(0, len(splits.train), max(1, len(splits.train) // 6)):
        s = splits.train[i]
        assert isinstance(s, Sample) and s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert s.audio.dtype == np.float32 and s.audio.shape == (2 * 44100,) and np.isfinite(s.audio).all()
        assert 0 < np.sqrt(np.mean(s.audio**2)) <= 0.06 and s.sample_rate == 44100
        assert s.caption and s.source == corpus.source(int(splits.train.rows[i])) and s.caption_source == "template"
        assert 1 <= s.month <= 12 and 0 <= s.hour < 24 and -90 <= s.lat <= 90
        row = int(splits.train.rows[i])
        z, x, y = (int(corpus.table[k][row]) for k in ("level", "x", "y"))
        assert s.level == z and s.path.endswith(f"#{row}")
        cell = imagery.cell(z, x, y, 32)
        np.testing.assert_array_equal(s.image, cell.rgb)
        assert s.gsd == pytest.approx(cell.gsd)


def test_reader_cuts_other_image_sizes_through_model_imagery(corpus_path, imagery_path):
    splits = factory({"path": str(corpus_path), "audio": False}, 16)
    s = splits.val[0]
    row = int(splits.val.rows[0])
    t = splits.val.corpus.table
    expected = Imagery(imagery_path).cell(int(t["level"][row]), int(t["x"][row]), int(t["y"][row]), 16)
    np.testing.assert_array_equal(s.image, expected.rgb)
    assert s.audio is None
    lean = splits.val.get(0, without=frozenset({"image", "caption"}))
    assert lean.image is None and lean.caption is None and lean.lat == s.lat


def test_samples_are_deterministic(corpus_path, asset_root, imagery_path, tmp_path):
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(corpus_path / "places.npz", again / "places.npz")  # same assets: skip re-deriving
    build(small_config(again, asset_root, imagery_path), progress=False)
    a, b = DemoCorpus(corpus_path, progress=False), DemoCorpus(again, progress=False)
    assert a.manifest["content_hash"] == b.manifest["content_hash"]
    for key in ("lat", "lon", "hour", "month", "source", "captions", "event_clip", "event_src", "held_out_event_clip"):
        np.testing.assert_array_equal(a.table[key], b.table[key])
    row = int(a.index[3])
    np.testing.assert_array_equal(a.audio(row), b.audio(row))
    np.testing.assert_array_equal(a.audio(row, "held_out"), b.audio(row, "held_out"))
    np.testing.assert_array_equal(a.audio(row), a.audio(row))
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(corpus_path / "places.npz", other / "places.npz")
    build(small_config(other, asset_root, imagery_path, seed=8), progress=False)
    assert not np.array_equal(DemoCorpus(other, progress=False).table["lat"], a.table["lat"])


def test_split_holds_out_whole_geographic_cells(corpus_path):
    splits = factory({"path": str(corpus_path), "split_level": 4, "val_fraction": 0.2, "test_fraction": 0.3}, 32)
    corpus = splits.train.corpus
    t = corpus.table

    def units(source) -> set:
        rows = source.rows
        shift = t["level"][rows].astype(int) - 4
        return set(zip((t["x"][rows] >> shift).tolist(), (t["y"][rows] >> shift).tolist(), strict=True))

    def cells(source) -> set:
        return set(t["cell"][source.rows].tolist())

    parts = (splits.train, splits.val, splits.test)
    assert all(len(p) > 0 for p in parts) and sum(len(p) for p in parts) == len(corpus)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not units(parts[a]) & units(parts[b])  # no level-4 tile in two splits
        assert not cells(parts[a]) & cells(parts[b])  # so no image either
    same = factory({"path": str(corpus_path), "split_level": 4, "val_fraction": 0.2, "test_fraction": 0.3}, 32)
    np.testing.assert_array_equal(same.test.rows, splits.test.rows)


def test_every_sample_has_a_source_mixed_by_place_and_kept_by_its_rule(corpus_path):
    corpus = DemoCorpus(corpus_path, progress=False)
    t, rows = corpus.table, corpus.index
    assert corpus.manifest["sources"] == list(sources.NAMES)
    assert sum(corpus.manifest["source_counts"].values()) == len(rows)
    source = t["source"][rows]
    assert set(source.tolist()) == set(range(len(sources.NAMES)))  # all three present
    wildlife, citywalk = sources.NAMES.index("wildlife"), sources.NAMES.index("citywalk")
    wild = (t["land"][rows] == 1) & (t["lights"][rows] < 0.05) & (t["population"][rows] < 1e4)
    lit = t["lights"][rows] >= 0.25
    assert (source[wild] == wildlife).mean() > 2 * (source[lit] == wildlife).mean()
    assert (source[lit] == citywalk).mean() > 5 * (source[wild] == citywalk).mean()
    hour = t["hour"][rows]
    assert ((hour[source == citywalk] >= 8.5) & (hour[source == citywalk] <= 20.5)).all()  # no city walk at night
    expected = t["place_class_weights"][rows].astype(np.float64) * sources.FACTORS[source]
    np.testing.assert_allclose(t["class_weights"][rows], expected, rtol=2e-3, atol=1e-4)  # float16 columns
    towns = sum(rules.CLASSES.index(c) == t["layers"][rows] for c in sources.GROUPS["town"]).any(axis=1)
    assert towns[source == citywalk].mean() > towns[source == wildlife].mean()


def _stretches(corpus: DemoCorpus, pool: str) -> dict[int, list[tuple[int, int]]]:
    """{clip index: [(first frame, end frame)]} of a pool's recordings, from the manifest."""
    ids = {c.id: i for i, c in enumerate(corpus.clips)}
    out: dict[int, list[tuple[int, int]]] = {}
    for recordings in corpus.manifest["recordings"][pool].values():
        for text in recordings:
            clip, span = text.rsplit("@", 1)
            start, frames = (int(v) for v in span.split("+"))
            out.setdefault(ids[clip], []).append((start, start + frames))
    return out


def test_recording_held_out_split_never_plays_a_training_recording_in_test(corpus_path):
    splits = factory({"path": str(corpus_path), "val_fraction": 0.2, "test_fraction": 0.3}, 32)
    corpus = splits.train.corpus
    train, held = _stretches(corpus, "train"), _stretches(corpus, "held_out")
    for clip in set(train) & set(held):  # a one-recording class: two halves in time, never overlapping
        ((a0, a1),), ((b0, b1),) = train[clip], held[clip]
        assert a1 <= b0 or b1 <= a0

    def played(source) -> list[tuple[int, int, int]]:
        out = []
        for row in source.rows:
            e = corpus.events(int(row), source.pool)
            out += [(int(c), int(s), int(s + n)) for c, s, n in zip(e.clip, e.src, e.length, strict=True)]
        return out

    assert (splits.train.pool, splits.val.pool, splits.test.pool) == ("train", "held_out", "held_out")
    for source, pool in ((splits.train, train), (splits.test, held), (splits.val, held)):
        events = played(source)
        assert events and all(any(lo <= s and e <= hi for lo, hi in pool.get(c, [])) for c, s, e in events)
    assert not {c for c, _, _ in played(splits.test)} - set(held)
    assert not {c for c, _, _ in played(splits.train)} - set(train)
    shared = factory({"path": str(corpus_path), "val_fraction": 0.2, "test_fraction": 0.3, "recordings": "shared"}, 32)
    np.testing.assert_array_equal(shared.test.rows, splits.test.rows)  # the same places, either way
    row = next(i for i, r in enumerate(splits.test.rows) if corpus.sounds(int(r)))
    a, b = splits.test[row], shared.test[row]
    assert a.key == b.key + "-held_out" and a.caption == b.caption and not np.array_equal(a.audio, b.audio)
    with pytest.raises(ConfigError, match=r"`data\.recordings` should be 'held_out' or 'shared', not 'all'"):
        factory({"path": str(corpus_path), "recordings": "all"}, 32)


def test_bad_data_section_and_missing_corpus_are_user_errors(corpus_path, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key `data\.shuffle`; `data` takes: path, split_level"):
        factory({"path": str(corpus_path), "shuffle": True}, 32)
    with pytest.raises(ConfigError, match=r"`data\.split_level` should be a valid integer, not '4'"):
        factory({"path": str(corpus_path), "split_level": "4"}, 32)
    with pytest.raises(CorpusError, match="soundscape corpus build"):
        factory({"path": str(tmp_path / "nothing")}, 32)
    with pytest.raises(CorpusError, match="split_level 6 is finer"):
        factory({"path": str(corpus_path), "split_level": 6}, 32)


def test_cli_explains_rules_and_rejects_bad_input(corpus_path, capsys):
    assert (
        main(
            [
                "corpus",
                "explain",
                "--lat",
                "48",
                "--lon",
                "8.2",
                "--month",
                "5",
                "--hour",
                "5",
                "--out",
                str(corpus_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dawn chorus" in out and all(name in out for name in sources.NAMES)
    assert '"landcover_name": "mixed forest"' in out and '"climate_name": "cold"' in out  # named, not only numbered
    # The command line refuses these in argparse (tests/test_cli_hostile.py); build() itself too.
    for change, said in [
        ({"samples": 0}, "--samples must lie in 1..1,000,000"),
        ({"max_town_layers": 0}, "--max-town-layers must be at least 1"),
    ]:
        with pytest.raises(CorpusError, match=said):
            build(BuildConfig(out=corpus_path, assets=corpus_path, imagery=corpus_path, **change))


def test_corpus_help_explains_itself():
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "corpus", "build", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--samples" in out and "resumes" in out


def test_image_cutting_resumes_from_finished_chunks(corpus_path, imagery_path, tmp_path):
    from corpus.build import cut_images, image_chunks_dir

    cells = DemoCorpus(corpus_path, progress=False).table["cells"][:20]
    first = cut_images(Imagery(imagery_path), cells, 16, tmp_path, progress=False)[0].copy()
    # A killed run left chunk 0 behind (marked here by inverted pixels): the next run keeps it.
    parts = image_chunks_dir(tmp_path, 16, cells)
    parts.mkdir()
    np.savez(parts / "00000.npz", images=255 - first, gsd=np.ones(len(cells), np.float32))
    for name in ("images-16.npy", "images-16-gsd.npy", "images-16-cells.npy"):
        (tmp_path / name).unlink()
    resumed, gsd = cut_images(Imagery(imagery_path), cells, 16, tmp_path, progress=False)
    np.testing.assert_array_equal(resumed, 255 - first)
    assert not parts.exists() and (gsd == 1).all()


def test_reader_labels_each_sample_with_the_classes_mixed_into_its_audio(corpus_path):
    from corpus.rules import CLASSES

    splits = factory({"path": str(corpus_path), "audio": False}, 16)
    classes = splits.train.sound_classes()
    layers = splits.train.corpus.table["layers"][splits.train.rows]
    assert classes.shape == (len(splits.train), len(CLASSES))
    for row, mixed in zip(classes, layers, strict=True):
        assert set(np.flatnonzero(row)) == {int(c) for c in mixed if c >= 0}

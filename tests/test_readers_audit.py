"""Rows of a user's data that were read as something other than what they mean, without a word:
a place past web mercator's edge cut as another cell (and a corpus drawn there), a recording
listed twice or at two places, a missing place written as 0, 0, a time on spreadsheets' day zero,
non-finite coordinates reported as off the globe, UTF-16 without its mark taken for misnamed
columns, a released dataset's place off the globe or unreadable kept as a place, and a captions
file whose empty or repeated rows replaced captions. Each is now skipped (a csv row, with its
reason counted in the read's warning; a released sample, as an unreadable one) or refused in one
sentence."""

from __future__ import annotations

import json
import logging

import mercantile
import numpy as np
import pytest
from rasterio.transform import from_origin

from corpus.build import draw_locations
from corpus.errors import CorpusError
from model.data import BadSample, DataError, reader
from tests.conftest import reprojected
from tests.test_antimeridian import _Places
from tests.test_model_readers import clap_mel, image_bytes, write_shard
from tests.test_own_data_audit import folder, row, rows, table


def test_rows_past_web_mercators_edge_are_not_cut_as_another_cell(imagery_path, tmp_path, caplog):
    """Imagery around the pole covers latitude 88, but no web-mercator cell does (they end at
    85.05): the row was cut as the cell at 85 N, another place, and one at the pole stopped the
    read with mercantile's error. A row with its own image keeps its place: the model takes any."""
    size, pixel = 300, 40_000.0
    polar = reprojected(
        imagery_path, tmp_path / "polar.tif", "EPSG:3413", (from_origin(-6e6, 6e6, pixel, pixel), size, size)
    )
    text = "lat,lon,audio,image,gsd\n60,15,audio/0.wav,,\n88,15,audio/1.wav,,\n90,0,audio/2.wav,,\n"
    text += "89,15,audio/3.wav,images/3.png,10\n"
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "north", text), imagery=str(polar), level=3)
    assert [(r.lat, r.image) for r in kept] == [(60.0, None), (89.0, "images/3.png")]
    assert mercantile.tile(15, 60, 3) == mercantile.tile(kept[0].lon, kept[0].lat, 3)
    assert "lat ... is past web mercator's edge ...: no map cell holds it: 2 (" in caplog.text


def test_a_corpus_of_imagery_wholly_past_web_mercators_edge_is_refused():
    """Imagery north of 85.05 N (a polar scene's core) had its places drawn between 85.05 and its
    south edge, every one cut as a cell at the map's edge: another place. No map cell lies there."""
    shares = {"land": 1.0, "coast": 0.0, "sea": 0.0, "lit": 0.0}
    with pytest.raises(CorpusError, match=r"^the imagery lies past web mercator's edge \(86 N\.\.89 N"):
        draw_locations(_Places(), 100, (0.0, 86.0, 10.0, 89.0), shares, np.random.default_rng(0))
    lat, _, _ = draw_locations(_Places(), 100, (0.0, 80.0, 10.0, 89.0), shares, np.random.default_rng(0))
    assert lat.max() <= 85.0511287798066 and lat.min() >= 80


def test_a_recording_listed_twice_or_at_two_places_is_read_once_or_not_at_all(tmp_path, caplog):
    """A row pasted twice trained its recording twice as often; one audio file named at two places
    (or times) trained it at both, and across two held-out cells it was heard in training and in
    test. A copy is skipped; a file at two places is skipped at both, as neither is known right.
    The same recording with other images or levels (PSM's zooms) is kept."""
    base = [row(0), row(1), row(2), row(3)]
    data = [
        *base,
        row(0),  # a pasted copy
        row(0, audio="./audio/0.wav", image="images//0.png"),  # another, its files named otherwise
        row(1, lat="50.0"),  # audio/1.wav somewhere else
        row(2, image="images/3.png"),  # audio/2.wav with another image of its place
    ]
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "dup", table(data)))
    assert [(r.line, r.audio) for r in kept] == [
        (2, "audio/0.wav"),
        (4, "audio/2.wav"),
        (5, "audio/3.wav"),
        (9, "audio/2.wav"),
    ]
    assert "the same as an earlier row ...: a duplicated row: 2 (" in caplog.text and "samples.csv:7)" in caplog.text
    assert "its audio file is named at other places or times too ...: 2 (" in caplog.text


def test_a_recording_named_through_dot_dot_or_its_absolute_path_is_the_same_recording(tmp_path, caplog):
    """`audio/../audio/1.wav` and the absolute path of audio/2.wav escaped the check: each file
    trained at two places, and a pasted copy named so trained twice."""
    root = tmp_path / "dup"
    data = [
        *(row(i) for i in range(4)),
        row(1, lat="50.0", audio="audio/../audio/1.wav"),  # audio/1.wav somewhere else
        row(2, lat="50.0", audio=str(root / "audio" / "2.wav")),  # audio/2.wav somewhere else
        row(3, audio="audio/../audio/3.wav"),  # a pasted copy of row 3
    ]
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(root, table(data)))
    assert [(r.line, r.audio) for r in kept] == [(2, "audio/0.wav"), (5, "audio/3.wav")]
    assert "its audio file is named at other places or times too ...: 4 (" in caplog.text
    assert "a duplicated row: 1 (" in caplog.text


def test_an_hour_written_without_its_minutes_is_kept(tmp_path):
    """dateutil fills an unwritten minute from its default, which the two readings' defaults made
    differ: ISO's reduced `T12`, `T06Z`, `6am` and `18h` lost their hour (and `Z` its conversion)."""
    forms = ["2022-07-01T12", "2022-07-01T06Z", "2022-07-01 6am", "2022-07-01 18h"]
    kept = rows(folder(tmp_path / "hours", table([row(i, datetime=text) for i, text in enumerate(forms)])))
    # Near 45.5 N, 5.5-8.5 E: central European summer time, UTC+2 (06:00Z is 08:00 there).
    assert [(r.month, r.hour) for r in kept] == [(7, 12.0), (7, 8.0), (7, 6.0), (7, 18.0)]


def test_utf16_without_a_byte_order_mark_is_named_as_such(tmp_path):
    """It decoded as UTF-8 with a NUL in every other character, and was refused as lacking the
    columns its header names ('lacks the column(s) lat, lon, audio (its header: l\\x00a\\x00t...')."""
    root = folder(tmp_path / "utf16", table([row(0), row(1)]).encode("utf-16-le"))
    with pytest.raises(DataError, match=r"holds NUL characters \(line 1\): UTF-16 text without a byte-order mark\?"):
        rows(root)


def test_a_time_on_spreadsheets_day_zero_is_no_date_of_december(tmp_path, caplog):
    """A time-only cell of a workbook converted by pandas, openpyxl or LibreOffice comes out on
    their day zero ('1899-12-30 06:30:00'): every such row trained in December, without a word."""
    data = [row(0, datetime="1899-12-30 06:30:00"), row(1, datetime="30/12/1899 06:30"), row(2), row(3)]
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "zero", table(data)))
    assert [(r.month, r.hour) for r in kept] == [(5, 6.5), (5, 6.5)]
    assert (
        "datetime ... is dated 30 December 1899, spreadsheets' day zero: a time whose cell had no date? "
        "write the time alone, or its date: 2 ("
    ) in caplog.text


def test_a_place_at_zero_zero_is_a_missing_one_not_the_gulf_of_guinea(tmp_path, caplog):
    """GPS loggers, cameras and exports write a missing fix as 0, 0: such a row trained a recording of
    anywhere as one at sea off West Africa (and its cell was cut there). The equator or the prime
    meridian alone is a place."""
    data = [row(0, lat="0", lon="0"), row(1, lat="0.0", lon="0.000"), row(2, lat="0"), row(3, lon="0")]
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "zero", table(data)))
    assert [(r.lat, r.lon) for r in kept] == [(0.0, 7.5), (45.5, 0.0)]
    assert "null island in the Gulf of Guinea: a missing place written as zeros?: 2 (" in caplog.text


def test_a_released_sample_at_zero_zero_is_unreadable(tmp_path):
    split = released(tmp_path, [(0.0, 0.0), (0.0, 7.5)])
    with pytest.raises(BadSample, match=r"null island in the Gulf of Guinea: a missing place written as zeros\?"):
        split.get(0, frozenset({"image", "audio"}))
    assert split.get(1, frozenset({"image", "audio"})).lon == 7.5


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_a_coordinate_that_is_no_finite_number_says_so(tmp_path, caplog, value):
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "nan", table([row(0, lat=value), row(1), row(2, lon=value)])))
    assert [r.audio for r in kept] == ["audio/1.wav"]
    assert "lat ... is not a finite number: 1 (" in caplog.text and "lon ... is not a finite number: 1 (" in caplog.text
    assert "outside the globe" not in caplog.text


def released(tmp_path, places: list[tuple[object, object]]):
    """A GeoSound train split of one sample per (latitude, longitude) as its meta.json writes it."""
    members = {}
    for n, (lat, lon) in enumerate(places):
        meta = {"sample_id": f"iNat-{n}", "date": "2022-06-12", "latitude": lat, "longitude": lon, "text": "birds"}
        members[f"iNat-{n}.meta.json"] = json.dumps(meta).encode()
        members[f"iNat-{n}.image.jpg"] = image_bytes(1280, n, "JPEG")
        members[f"iNat-{n}.audio_mel1.pyd"] = clap_mel(n)
    for split in ("train_0", "val_0", "test_0"):
        write_shard(tmp_path / "geosound" / "with_sentinel" / f"{split}.tar", members)
    return reader("geosound")({"root": str(tmp_path / "geosound"), "zooms": [1]}, 32).train


def test_a_released_samples_place_off_the_globe_or_unreadable_is_no_place(tmp_path):
    """latitude 200 was kept as a place, '45,5' read as no place at all (as a missing one): both are
    unreadable samples now, skipped while training; a missing place (null, or NaN as Parquet writes
    a missing float) stays unknown."""
    split = released(tmp_path, [(48.8, 2.3), (200.0, 2.3), ("45,5", 2.3), (None, None), (float("nan"), 2.3)])
    no_media = frozenset({"image", "audio"})
    assert (split.get(0, no_media).lat, split.get(0, no_media).lon) == (48.8, 2.3)
    with pytest.raises(BadSample, match=r"latitude/longitude \(200.0, 2.3\) outside the globe"):
        split.get(1, no_media)
    with pytest.raises(BadSample, match=r"latitude '45,5' is not a number"):
        split.get(2, no_media)
    assert [(split.get(i, no_media).lat, split.get(i, no_media).lon) for i in (3, 4)] == [(None, None), (None, 2.3)]


def test_a_captions_file_with_empty_repeated_or_missing_values_is_read_as_meant(tmp_path, caplog):
    """An empty caption replaced the dataset's caption with '', the last of a sample_id given twice
    won, and a file without the columns (or saved with Excel's byte-order mark, which hid
    sample_id) stopped the run with a KeyError."""
    split = released(tmp_path, [(48.8, 2.3)] * 3)
    root = str(tmp_path / "geosound")
    captions = tmp_path / "captions.csv"
    captions.write_bytes(
        b"\xef\xbb\xbfsample_id,caption,caption_source\n"
        b"iNat-0,wind in reeds,notes\niNat-1,,notes\niNat-2,rain,notes\niNat-2,traffic,notes\n"
    )
    with caplog.at_level(logging.WARNING):
        split = reader("geosound")({"root": root, "zooms": [1], "captions": str(captions)}, 32).train
    got = [split.get(i, frozenset({"image", "audio"})) for i in range(3)]
    assert [(s.caption, s.caption_source) for s in got] == [
        ("wind in reeds", "notes"),
        ("birds", "meta"),
        ("birds", "meta"),
    ]
    assert "3 row(s) not read" in caplog.text and "no caption: 1" in caplog.text
    assert "a sample_id given again with another caption: 2" in caplog.text
    captions.write_text("id,text\niNat-0,wind\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"captions.csv lacks the column\(s\) sample_id, caption \(its header: id, text\)"
    ):
        reader("geosound")({"root": root, "zooms": [1], "captions": str(captions)}, 32)
    captions.write_bytes("sample_id,caption\niNat-0,vent\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"captions.csv is not UTF-8 text"):
        reader("geosound")({"root": root, "zooms": [1], "captions": str(captions)}, 32)

"""Rows of a user's data that were read as something other than what they mean, without a word:
a place past web mercator's edge cut as another cell, a recording listed twice or at two places,
non-finite coordinates reported as off the globe. Each is now skipped, its reason counted in the
read's warning."""

from __future__ import annotations

import logging

import mercantile
import pytest
from rasterio.transform import from_origin

from tests.conftest import reprojected
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


def test_a_recording_listed_twice_or_at_two_places_is_read_once_or_not_at_all(tmp_path, caplog):
    """A row pasted twice trained its recording twice as often; one audio file named at two places
    (or times) trained it at both, and across two held-out cells it was heard in training and in
    test. A copy is skipped; a file at two places is skipped at both, as neither is known right.
    The same recording with other images or levels (PSM's zooms) is kept."""
    base = [row(0), row(1), row(2), row(3)]
    data = [
        *base,
        row(0),  # a pasted copy
        row(1, lat="50.0"),  # audio/1.wav somewhere else
        row(2, image="images/3.png"),  # audio/2.wav with another image of its place
    ]
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "dup", table(data)))
    assert [(r.line, r.audio) for r in kept] == [
        (2, "audio/0.wav"),
        (4, "audio/2.wav"),
        (5, "audio/3.wav"),
        (8, "audio/2.wav"),
    ]
    assert "the same as an earlier row ...: a duplicated row: 1 (" in caplog.text and "samples.csv:6)" in caplog.text
    assert "its audio file is named at other places or times too ...: 2 (" in caplog.text


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_a_coordinate_that_is_no_finite_number_says_so(tmp_path, caplog, value):
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "nan", table([row(0, lat=value), row(1), row(2, lon=value)])))
    assert [r.audio for r in kept] == ["audio/1.wav"]
    assert "lat ... is not a finite number: 1 (" in caplog.text and "lon ... is not a finite number: 1 (" in caplog.text
    assert "outside the globe" not in caplog.text

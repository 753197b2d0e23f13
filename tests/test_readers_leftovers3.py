"""What the csv reader still read loosely (docs/own-data.md): a `month` or `hour` column read as a
float ('1e1' was October, while 'sept.' was refused), and a date without its year ('5/6') read
month first in a file whose dates put the day first."""

from __future__ import annotations

import logging

import pytest

from model.data import DataError
from model.readers.common import When, parse_when
from tests.test_own_data_audit import folder, rows
from tests.test_readers_leftovers import when_columns

# 1. month and hour columns ---------------------------------------------------------------------

READ = [
    (" 5 ", "", (5, None)),
    ("05", "07", (5, 7.0)),
    ("Sep", "", (9, None)),
    ("Sept", "", (9, None)),
    ("sept.", "", (9, None)),
    ("SEPTEMBER", "", (9, None)),
    (" jan. ", "", (1, None)),
    ("12.0", "0.0", (12, 0.0)),  # pandas writes a whole-number column with gaps so
]


@pytest.mark.parametrize(("month", "hour", "expected"), READ)
def test_month_and_hour_columns_read_what_people_write(tmp_path, month, hour, expected):
    assert when_columns(tmp_path, "read", [("", month, hour)]) == [expected]


REFUSED_MONTHS = ["1e1", "1E1", "10.5", "+5", "0x5", "5_0", "\u0665", "inf", "nan", "Sept..", "Septemb", "5."]
REFUSED_HOURS = ["1e1", "6.5", "+6", "0x6", "6_0", "\u0666", "-0", "6h"]


@pytest.mark.parametrize("month", REFUSED_MONTHS)
def test_a_month_no_person_writes_skips_its_row_with_the_reason(tmp_path, caplog, month):
    """float() read '1e1' as 10 and int() would read '5_0' and Arabic-Indic digits: each is a row
    skipped, as 'sept.' was, with the row's reason."""
    with caplog.at_level(logging.WARNING):
        got = when_columns(tmp_path, "month", [("", month, ""), ("", "5", "")])
    assert got == [(5, None)]
    assert "month ... is not a whole number 1..12 or a month's English name: 1 (" in caplog.text


@pytest.mark.parametrize("hour", REFUSED_HOURS)
def test_an_hour_no_person_writes_skips_its_row_with_the_reason(tmp_path, caplog, hour):
    with caplog.at_level(logging.WARNING):
        got = when_columns(tmp_path, "hour", [("", "", hour), ("", "", "5")])
    assert got == [(None, 5.0)]
    assert "hour ... is not a whole number 0..23: 1 (" in caplog.text


# 2. a date without its year ----------------------------------------------------------------------


def test_a_date_without_its_year_is_read_in_the_files_day_order(tmp_path):
    """'5/6' in a file whose dates put the day first is 5 June; dateutil read it month first (May)
    whatever the file's order, and '13/6' (13 June) was an unreadable row."""
    values = [("01/05/2022", "", ""), ("25/12/2022", "", ""), ("5/6", "", ""), ("13/6 14:30", "", "")]
    assert when_columns(tmp_path, "yearless", values) == [(5, None), (12, None), (6, None), (6, 14.5)]


def test_a_yearless_date_against_the_day_order_skips_its_row_with_the_reason(tmp_path, caplog):
    """'6/13' where data.dayfirst says the day comes first is no date: skipped, not read as June."""
    text = "lat,lon,audio,image,gsd,datetime\n" + "".join(
        f"45.5,{5.5 + i},audio/{i}.wav,images/{i}.png,10,{d}\n" for i, d in enumerate(["5/6", "6/13"])
    )
    with caplog.at_level(logging.WARNING):
        kept = rows(folder(tmp_path / "told", text), dayfirst=True)
    assert [(r.month, r.hour) for r in kept] == [(6, None)]
    assert "datetime ... is no date read day first, as data.dayfirst says: 1 (" in caplog.text


def test_a_yearless_date_tells_the_files_day_order_as_a_dated_one_does(tmp_path, caplog):
    """A file whose only dates are '5/6' and '13/6' writes the day first (13 is no month); one of
    '5/6' alone cannot tell, and is refused as '01/05/2022' alone is."""
    assert when_columns(tmp_path, "told", [("5/6", "", ""), ("13/6", "", "")]) == [(6, None), (6, None)]
    with pytest.raises(DataError, match="could be 5 June or 6 May"):
        when_columns(tmp_path, "untold", [("5/6", "", ""), ("7/8", "", "")])


# 3. numbers ----------------------------------------------------------------------------------------


def kept_places(tmp_path, lat: str, gsd: str = "10") -> list[tuple[float, float, float | None]]:
    text = f"lat,lon,audio,image,gsd\n{lat},5.5,audio/0.wav,images/0.png,{gsd}\n45.5,6.5,audio/1.wav,images/1.png,10\n"
    return [(r.lat, r.lon, r.gsd) for r in rows(folder(tmp_path / "numbers", text))]


@pytest.mark.parametrize("lat", ["1_0", "\u0664\u0665", "\uff14\uff15", "4_5.5"])
def test_a_coordinate_no_person_writes_skips_its_row_with_the_reason(tmp_path, caplog, lat):
    """float() reads '1_0' as 10 (a typo) and Arabic-Indic or full-width digits as 45: the row was
    kept at a place nobody wrote. It is skipped as a value that is no number."""
    with caplog.at_level(logging.WARNING):
        assert kept_places(tmp_path, lat) == [(45.5, 6.5, 10.0)]
    assert "lat ... is not a number: 1 (" in caplog.text


@pytest.mark.parametrize(
    ("lat", "gsd", "expected"),
    [(" 45.5 ", "10", 45.5), ("+45.5", "10", 45.5), ("4.55E1", "1e-1", 45.5), (".5", "10.", 0.5), ("-45", "10", -45.0)],
)
def test_numbers_as_exports_write_them_are_read(tmp_path, lat, gsd, expected):
    places = kept_places(tmp_path, lat, gsd)
    assert places[0][0] == pytest.approx(expected) and places[0][2] == pytest.approx(float(gsd))


# 4. an offset no clock keeps -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["2022-06-30T06:30:00+25:00", "06:30-24:00", "2022-06-30 06:30 GMT+99"])
def test_an_offset_of_a_day_or_more_is_an_unreadable_time_not_pythons_words(text):
    """dateutil reads '+25:00' and datetime refused the offset when asked for it: the csv row was
    skipped as 'offset must be a timedelta strictly between -timedelta(hours=24) and ...', and a
    GeoSound or SoundingEarth sample, whose unreadable date is unknown, was lost as unreadable."""
    assert parse_when(text) == When(None, None)


def test_a_row_with_an_offset_of_a_day_or_more_is_skipped_as_an_unreadable_datetime(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert when_columns(tmp_path, "offset", [("2022-06-30T06:30:00+25:00", "", ""), ("", "5", "")]) == [(5, None)]
    assert "unreadable datetime ...: 1 (" in caplog.text

"""What the csv reader still read loosely (docs/own-data.md): a `month` or `hour` column read as a
float ('1e1' was October, while 'sept.' was refused), and a date without its year ('5/6') read
month first in a file whose dates put the day first."""

from __future__ import annotations

import logging

import pytest

from model.data import DataError
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

"""What the readers still read wrong or not at all (docs/own-data.md): a month or hour known
without the full date ("May, dawn") had no column; a time given in a named zone
("2021-05-01 12:00 Europe/Paris", "...+02:00[Europe/Paris]") was an unreadable row; the corpus's
text files were read and written in the machine's own encoding; and the csv reader and the
released datasets' readers each checked places with their own sentences."""

from __future__ import annotations

import io
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corpus.clips import _credits
from model.data import BadSample, DataError, _optional
from model.readers.csv_folder import CsvFolderConfig, parse_row
from model.readers.psm_datasets import _place
from runtime.metadata import encode_metadata
from tests.test_local_time import KOLKATA, NEW_YORK, PARIS, at, geosound_times
from tests.test_own_data_audit import folder, rows

REPO = Path(__file__).resolve().parent.parent


def when_columns(tmp_path, name: str, values: list[tuple[str, str, str]], place=PARIS) -> list[tuple]:
    """(month, hour) of each kept row of a CSV whose rows give (datetime, month, hour)."""
    lat, lon = place
    text = "lat,lon,audio,image,gsd,datetime,month,hour\n" + "".join(
        f"{lat},{lon},audio/{i}.wav,images/{i}.png,10,{d},{m},{h}\n" for i, (d, m, h) in enumerate(values)
    )
    return [(r.month, r.hour) for r in rows(folder(tmp_path / name, text, n=max(4, len(values))))]


# 1. month and hour columns ---------------------------------------------------------------------


def test_a_month_and_an_hour_known_without_a_date_have_their_columns(tmp_path):
    """Field notes say 'May, dawn': a `month` or `hour` column stopped the read ("has column(s)
    'month' but no 'datetime'"), so such rows trained with neither. Now each is read where the
    datetime does not give it: a month alone (its name too), an hour alone, a date with the hour
    beside it, a time with the month beside it, and pandas' '5.0' for a whole number."""
    got = when_columns(
        tmp_path,
        "notes",
        [
            ("", "5", "5"),
            ("", "May", ""),
            ("", "", "21"),
            ("2022-05-01", "", "6"),
            ("06:30", "5", ""),
            ("", "12.0", "0.0"),
            ("", "", ""),
        ],
    )
    assert got == [(5, 5.0), (5, None), (None, 21.0), (5, 6.0), (5, 6.5), (12, 0.0), (None, None)]


def test_the_month_column_narrows_a_time_at_an_offset_without_a_date(tmp_path):
    """'12:30Z' in Paris is 13:30 or 14:30 by the season; with the month known (June) it is 14:30."""
    assert when_columns(tmp_path, "june", [("12:30Z", "6", ""), ("12:30Z", "", "")]) == [(6, 14.5)]


def test_a_month_known_and_an_hour_unknown_reach_the_model_so(tmp_path):
    """The model's metadata marks each field present or not (runtime.metadata): a row with a month
    and no hour trains its month, and its hour as unknown rather than midnight."""
    text = "lat,lon,audio,image,gsd,month\n45.5,5.5,audio/0.wav,images/0.png,10,5\n"
    (kept,) = rows(folder(tmp_path / "month", text))
    encoded = encode_metadata(1, hour=_optional([kept.hour]), month=_optional([kept.month]))
    assert (kept.month, kept.hour) == (5, None)
    assert encoded["month"].any() and not encoded["hour"].any()


def test_a_month_or_hour_out_of_range_or_against_the_datetime_is_skipped_saying_so(tmp_path, caplog):
    """An hour of 24 or a month of 13 would have wrapped round the model's circle, and a month
    beside a datetime of another month would have trained one of them without a word. A UTC
    stamp's month or hour may be given as written or at the place: both name the same time."""
    values = [
        ("", "13", ""),
        ("", "0", ""),
        ("", "", "24"),
        ("", "", "6.5"),
        ("", "", "dawn"),
        ("2022-05-01T06:30", "6", ""),
        ("2022-05-01T06:30", "", "7"),
        ("2022-05-01T06:30", "5", "6"),
        ("2022-06-30T23:30:00Z", "6", "23"),
        ("2022-06-30T23:30:00Z", "7", "1"),
    ]
    with caplog.at_level(logging.WARNING):
        got = when_columns(tmp_path, "bad", values)
    assert got == [(5, 6.5), (7, 1.5), (7, 1.5)]
    assert "month ... is not a whole number 1..12 or a month's English name: 2 (" in caplog.text
    assert "hour ... is not a whole number 0..23: 3 (" in caplog.text
    assert "month ... contradicts the datetime ... ...: 1 (" in caplog.text
    assert "hour ... contradicts the datetime ... ...: 1 (" in caplog.text


# 2. zone names ---------------------------------------------------------------------------------


def test_a_time_in_a_named_zone_is_read_at_the_places_clock(tmp_path):
    """'2021-05-01 12:00 Europe/Paris' (and RFC 9557's '...+02:00[Europe/Paris]', as Java and
    Temporal write it) was an unreadable row; now the zone gives the instant, read at the place's
    clock as a time at an offset is."""
    written = [
        "2022-07-01 12:00 Europe/Paris",
        "2022-07-01T12:00 [Europe/London]",
        "2022-07-01T12:00+01:00[Europe/London]",
        "2022-01-15 06:00 America/New_York",
        "2022-07-01 12:00 Etc/GMT+2",  # the tz database's POSIX sign: UTC-2
        "2022-07-01 12:00 [UTC]",
        "2022-07-01 13:00 america/new_york",  # as typed: the tz database's spelling is found
    ]
    got = at(tmp_path, "paris", PARIS, written)
    assert got == [(7, 12.0), (7, 13.0), (7, 13.0), (1, 12.0), (7, 16.0), (7, 14.0), (7, 19.0)]
    assert at(tmp_path, "new-york", NEW_YORK, ["2022-07-01 12:00 Europe/Paris"]) == [(7, 6.0)]


def test_a_time_in_a_named_zone_without_a_date(tmp_path, caplog):
    """Without a date the zone's offset that day is unknown, but not always the difference between
    its clock and the place's: none for the place's own zone or Berlin's in Paris, an hour for
    London's, 5:30 from UTC in Kolkata, 6 hours from New York's in July. Where the difference
    changes over the year (or the month given), the row is skipped with the reason."""
    zoned = ["12:00 Europe/Paris", "12:00 Europe/Berlin", "12:00 Europe/London", "12:00 America/New_York"]
    with caplog.at_level(logging.WARNING):
        paris = at(tmp_path, "paris", PARIS, zoned)
    assert paris == [(None, 12.0), (None, 12.0), (None, 13.0)]
    assert (
        "a time in a time zone ... without a date, whose clock differs from the clock at the place ... "
        "by 5 h or 6 h over the year: its hour there depends on the day; write the date, or the place's clock: 1 ("
    ) in caplog.text
    assert when_columns(tmp_path, "july", [("12:00 America/New_York", "7", "")]) == [(7, 18.0)]
    assert at(tmp_path, "kolkata", KOLKATA, ["12:00 Asia/Kolkata", "06:30 Etc/UTC"]) == [(None, 12.0)] * 2


def test_an_unknown_zone_name_or_one_its_offset_contradicts_is_skipped_saying_so(tmp_path, caplog):
    written = [
        "2022-07-01 12:00 Europe/Pariss",
        "2022-07-01T12:00+01:00[Europe/Paris]",
        "2022-07-01 12:00 Europe/Paris",
        "N/A",  # no zone: an unreadable datetime, as before
    ]
    with caplog.at_level(logging.WARNING):
        assert at(tmp_path, "paris", PARIS, written) == [(7, 12.0)]
    assert "unreadable datetime ...: 1 (" in caplog.text
    assert "the tz database knows no time zone ... ...: 1 (" in caplog.text
    assert "the UTC offset it gives ... is not the one ... kept then ...: 1 (" in caplog.text


def test_the_released_datasets_read_zone_names_too(tmp_path):
    """The same dates in GeoSound's metadata; an unknown zone leaves the time unknown, as other
    unreadable dates do there."""
    records = [
        ("iNat-1", "2022-06-12 07:49:00 America/New_York", NEW_YORK),
        ("iNat-2", "2022-06-12 11:49:00 [UTC]", NEW_YORK),
        ("iNat-3", "2022-06-12 07:49:00 Europe/Atlantis", NEW_YORK),
    ]
    assert geosound_times(tmp_path, records) == [(6, pytest.approx(7 + 49 / 60))] * 2 + [(None, None)]


# 3. text files in UTF-8 ------------------------------------------------------------------------


def test_a_corpus_text_file_reads_the_same_on_a_latin_1_machine(tmp_path, monkeypatch):
    """pathlib asks io.text_encoding for the encoding it was not given: a Latin-1 machine's."""
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "latin-1")
    credit = "Bruit de pluie \u2014 Zo\u00eb \u0141\u00f3d\u017a, CC BY 4.0"
    sfx = tmp_path / "openttd-opensfx"
    sfx.mkdir()
    (sfx / "catalogue.tsv").write_bytes(f"07\t{credit}\n".encode())
    assert _credits({"openttd-opensfx": sfx}) == {"openttd-opensfx/opensfx/07.wav": credit}


def test_a_corpus_text_file_reads_the_same_under_a_bare_c_locale(tmp_path):
    """A real interpreter whose locale encoding is ASCII (LC_ALL=C, neither coerced to C.UTF-8 nor
    in UTF-8 mode, as some containers and services run): the credit stopped the read there."""
    credit = "Zo\u00eb \u0141\u00f3d\u017a"
    sfx = tmp_path / "openttd-opensfx"
    sfx.mkdir()
    (sfx / "catalogue.tsv").write_bytes(f"07\t{credit}\n".encode())
    script = (
        "import locale, sys; from pathlib import Path; from corpus.clips import _credits; "
        "credits = _credits({'openttd-opensfx': Path(sys.argv[1])}); "
        "print(locale.getpreferredencoding(), ascii(credits['openttd-opensfx/opensfx/07.wav']))"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(sfx)], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(" ", 1) == ["ANSI_X3.4-1968", ascii(credit)]


# 4. one place check ----------------------------------------------------------------------------


def _csv_reason(lat: str, lon: str) -> str:
    values = {"lat": lat, "lon": lon, "audio": "a.wav", "image": "i.png", "gsd": "10"}
    with pytest.raises(ValueError) as raised:
        parse_row(values, 2, CsvFolderConfig(root="."))
    return str(raised.value)


def _released_reason(lat: float, lon: float) -> str:
    with pytest.raises(BadSample) as raised:
        _place({"latitude": lat, "longitude": lon}, "shard.tar:x")
    return raised.value.reason


@pytest.mark.parametrize("lat, lon", [(120.0, 45.0), (45.0, 200.0), (0.0, 0.0), (-91.0, -181.0)])
def test_both_readers_refuse_a_place_in_one_sentence(lat, lon):
    """The csv reader and the released datasets' readers said it in two ways ('lat/lon',
    'latitude/longitude'), and only the csv one noticed columns swapped."""
    assert _csv_reason(str(lat), str(lon)) == _released_reason(lat, lon)
    if (lat, lon) == (120.0, 45.0):
        assert _released_reason(lat, lon).endswith("outside the globe: lat and lon swapped?")


def test_a_missing_released_place_stays_unknown():
    assert _place({"latitude": None, "longitude": math.nan}, "x") == (None, None)
    assert _place({"latitude": 45.0, "longitude": ""}, "x") == (45.0, None)


def test_a_csv_of_places_all_off_the_globe_says_so(tmp_path):
    text = "lat,lon,audio,image,gsd\n120,45,audio/0.wav,images/0.png,10\n"
    with pytest.raises(DataError, match=r"latitude/longitude \.\.\. outside the globe: lat and lon swapped\?"):
        rows(folder(tmp_path / "off", text))

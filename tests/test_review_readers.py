"""An adversarial review of the readers' zone names (fdd6582, b1610a3): names a user may type that
the tz database holds as folders or not at all, and the hour a clock repeats when summer time ends."""

from __future__ import annotations

import logging

import pytest

from tests.test_local_time import NEW_YORK, PARIS, at, geosound_times


def test_a_repeated_hour_at_its_later_offset_is_the_instant_it_names(tmp_path):
    """On 31 October 2021 Paris's clocks read 02:30 twice, at +02:00 and then at +01:00; RFC 9557
    writes the second '2021-10-31T02:30+01:00[Europe/Paris]' (as Java does). It was skipped as an
    offset the zone did not keep, which it did, an hour later."""
    written = ["2021-10-31T02:30+02:00[Europe/Paris]", "2021-10-31T02:30+01:00[Europe/Paris]"]
    assert at(tmp_path, "paris", PARIS, written) == [(10, 2.5), (10, 2.5)]


def test_a_name_the_tz_database_holds_as_a_folder_or_no_file_is_a_row_skipped(tmp_path, caplog):
    """'America/Argentina' and 'Europe' are folders of zones, a name of 300 letters is no file name
    the system takes, and 'localtime' is this machine's own zone: zoneinfo raised IsADirectoryError
    or OSError (the read stopped with a traceback) or read the machine's clock."""
    written = [
        "2022-07-01 12:00 America/Argentina",
        "2022-07-01 12:00 [Europe]",
        "2022-07-01 12:00 Europe/" + "x" * 300,
        "2022-07-01 12:00 [localtime]",
        "2022-07-01 12:00 Europe/Paris",
    ]
    with caplog.at_level(logging.WARNING):
        assert at(tmp_path, "paris", PARIS, written) == [(7, 12.0)]
    assert "4 row(s) skipped, 1 kept: the tz database knows no time zone ..." in caplog.text


def test_the_released_datasets_leave_a_folder_zone_unknown(tmp_path):
    records = [
        ("iNat-1", "2022-06-12 07:49:00 America/Indiana", NEW_YORK),
        ("iNat-2", "2022-06-12 07:49:00 America/New_York", NEW_YORK),
    ]
    assert geosound_times(tmp_path, records) == [(None, None), (6, 7 + 49 / 60)]


def test_an_unknown_zone_name_is_looked_for_among_the_names_once(monkeypatch):
    """The nearest name the message offers is a search of ~600 names (2.1 ms a row, against 0.1 ms
    for a row read): a csv of a million rows whose export wrote a zone this tz database lacks spent
    half an hour on the one suggestion. It is worked out once per name."""
    from model.readers import common

    calls = []
    close = common.difflib.get_close_matches
    monkeypatch.setattr(common.difflib, "get_close_matches", lambda *a, **k: calls.append(a[0]) or close(*a, **k))
    reasons = set()
    for minute in range(50):
        with pytest.raises(common.BadZone) as refused:
            common.parse_when(f"2022-07-01 12:{minute:02d} Europe/Kiev-Town")
        reasons.add(str(refused.value))
    assert reasons == {"the tz database knows no time zone 'Europe/Kiev-Town' (did you mean 'Europe/Kiev'?)"}
    assert len(calls) <= 1


def test_rfc_9557_suffixes_the_reader_refused(tmp_path, caplog):
    """RFC 9557 writes a critical zone '[!Europe/Paris]', may add tags after the zone
    ('[u-ca=iso8601]', the calendar to show; the date is ISO 8601's all the same), and reads 'Z'
    before a zone as the UTC instant whose local offset is not said, never as a contradiction
    (section 3.1: '2022-07-01T10:00Z[Europe/Paris]' is 12:00 in Paris). Each was skipped: an
    unknown zone '!Europe/Paris' or 'u-ca=iso8601', or 'the UTC offset it gives (UTC+00:00) is not
    the one Europe/Paris kept then'. An offset that does contradict the zone is still refused."""
    written = [
        "2022-07-01T12:00+02:00[!Europe/Paris]",
        "2022-07-01T12:00+02:00[Europe/Paris][u-ca=iso8601]",
        "2022-07-01T10:00Z[Europe/Paris]",
        "2022-07-01T10:00:00z[Europe/Paris]",
        "2022-07-01T12:00+01:00[!Europe/Paris]",  # contradicted: skipped
        "2022-07-01T10:00+00:00[Europe/Paris]",  # an offset written out is one: skipped
    ]
    with caplog.at_level(logging.WARNING):
        assert at(tmp_path, "paris", PARIS, written) == [(7, 12.0)] * 4
    assert "2 row(s) skipped, 4 kept: the UTC offset it gives ... is not the one ... kept then ...: 2 (" in caplog.text

"""The hour and month a model trains on are the clock's at the place (model.data.Sample): a time
written with a UTC offset is read at the place's time zone, found by its location, daylight
saving included (model.readers.common.at_place), by the CSV reader and the GeoSound and
SoundingEarth readers alike. A time without an offset is the place's clock as written.

Before, a CSV time kept its clock when its offset was within 3 h of the place's nominal zone
(longitude / 15) and was converted to that nominal zone otherwise: a UTC stamp in Paris trained
10:00 for 12:00 (CEST), one in Galicia two hours early too, one in Kolkata half an hour late; the
released datasets' readers kept every clock as written whatever its offset."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from model.data import reader
from runtime.clock import zone_at
from tests.test_model_readers import clap_mel, image_bytes, wav_bytes, write_shard
from tests.test_own_data_audit import folder, rows

PARIS = (48.8566, 2.3522)
NEW_YORK = (40.7128, -74.006)
KOLKATA = (22.5726, 88.3639)
NEMURO = (43.33, 145.58)  # Hokkaido: Japan's clocks, though 145.58 / 15 rounds to UTC+10
SANTIAGO_DE_COMPOSTELA = (42.88, -8.54)  # Spain keeps central European time at longitude -8.5
OPEN_ATLANTIC = (30.0, -30.0)


def at(tmp_path, name: str, place: tuple[float, float], times: list[str]) -> list[tuple[int | None, float | None]]:
    """(month, hour) of each row of a CSV of recordings at `place` at `times`."""
    lat, lon = place
    table = "lat,lon,audio,image,gsd,datetime\n" + "".join(
        f"{lat},{lon},audio/{i}.wav,images/{i}.png,10,{when}\n" for i, when in enumerate(times)
    )
    return [(r.month, r.hour) for r in rows(folder(tmp_path / name, table, n=max(4, len(times))))]


def test_utc_times_in_europe_are_read_at_central_european_time_with_daylight_saving(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        paris = at(
            tmp_path,
            "paris",
            PARIS,
            ["2022-07-01T10:00:00Z", "2022-01-15T10:00:00Z", "2022-06-30T23:30:00 UTC", "2022-07-01T10:00:00+02:00"],
        )
    # CEST in July, CET in January; half past midnight on 1 July, a month later than the UTC date.
    assert paris == [(7, 12.0), (1, 11.0), (7, 1.5), (7, 10.0)]
    assert "3 row(s) give a time at a UTC offset other than their place's clock had then" in caplog.text
    assert at(tmp_path, "galicia", SANTIAGO_DE_COMPOSTELA, ["2022-07-01T10:00:00Z"]) == [(7, 12.0)]


def test_a_time_without_an_offset_is_the_places_clock_as_written(tmp_path):
    """Only an offset says which instant a time is: without one (or with a zone's name, which names
    no offset for sure: CST is in China, the US and Cuba) it is the clock at the place."""
    written = ["2022-07-01T10:00:00", "2022-07-01 10:00 CEST", "1 July 2022 10:00", "2022-07-01T10:00:00Z"]
    assert at(tmp_path, "paris", PARIS, written) == [(7, 10.0), (7, 10.0), (7, 10.0), (7, 12.0)]


def test_a_time_the_calendar_cannot_move_is_read_as_written(tmp_path):
    """Python's dates end with the year 9999 (and begin with the year 1): converting such a time
    raised OverflowError, which stopped the whole read instead of one row."""
    assert at(tmp_path, "end", PARIS, ["9999-12-31T23:30:00-05:00", "2022-07-01T10:00:00Z"]) == [(12, 23.5), (7, 12.0)]


def test_new_york_offsets_and_utc_stamps_give_the_same_clock(tmp_path):
    """-04:00 is New York's summer clock; the UTC stamp of the same instant, and JavaScript's
    'GMT-0400 (EDT)' (which dateutil reads POSIX-style as UTC+4), give that clock too."""
    summer = ["2022-07-01T10:00:00-04:00", "2022-07-01T14:00:00Z", "Fri Jul 01 2022 10:00:00 GMT-0400 (EDT)"]
    assert at(tmp_path, "summer", NEW_YORK, summer) == [(7, 10.0)] * 3
    assert at(tmp_path, "winter", NEW_YORK, ["2022-01-15T15:00:00Z", "2022-01-15 10:00 UTC-5"]) == [(1, 10.0)] * 2


def test_half_hour_zones_and_a_japanese_recorder_stamping_utc(tmp_path):
    assert at(tmp_path, "kolkata", KOLKATA, ["2022-03-01T04:00:00Z", "2022-03-01T09:30:00+05:30"]) == [(3, 9.5)] * 2
    # 23:00 UTC on 30 April is 8:00 on 1 May in all of Japan, Hokkaido's east included.
    assert at(tmp_path, "nemuro", NEMURO, ["2022-04-30T23:00:00Z"]) == [(5, 8.0)]


def test_over_the_open_sea_the_nominal_zone_of_the_longitude(tmp_path):
    """The boundary data gives the sea its nominal zones (Etc/GMT+2 here: UTC-2); a place the lookup
    has no zone for (off the globe, as a released dataset's bad coordinates may be) gets the nominal
    zone of its longitude likewise."""
    assert at(tmp_path, "sea", OPEN_ATLANTIC, ["2022-07-01T10:00:00Z"]) == [(7, 8.0)]
    assert zone_at(95.0, 20.0).utcoffset(None) == timedelta(hours=1)
    assert zone_at(0.0, 200.0).utcoffset(None) == timedelta(hours=-11)  # 200 is -160


def geosound_times(root: Path, records: list[tuple[str, str, tuple[float, float]]]) -> list[tuple]:
    """(month, hour) the GeoSound reader reads for each (sample_id, date, (lat, lon)), in order."""
    members = {}
    for n, (key, date, (lat, lon)) in enumerate(records):
        meta = {"sample_id": key, "date": date, "latitude": lat, "longitude": lon, "text": key}
        members[f"{key}.meta.json"] = json.dumps(meta).encode()
        members[f"{key}.image.jpg"] = image_bytes(1280, n, "JPEG")
        members[f"{key}.audio_mel1.pyd"] = clap_mel(n)
    for split in ("train_0", "val_0", "test_0"):
        write_shard(root / "geosound" / "with_sentinel" / f"{split}.tar", members)
    splits = reader("geosound")({"root": str(root / "geosound"), "zooms": [1]}, 32)
    read = [splits.train.get(i, frozenset({"image", "audio"})) for i in range(len(records))]
    assert [s.key for s in read] == [key for key, *_ in records]
    return [(s.month, s.hour) for s in read]


def test_geosound_and_soundingearth_read_offsets_at_the_places_clock(tmp_path):
    """The released readers kept the clock of a time as written whatever its offset: a UTC stamp
    in New York trained 11:49 for 7:49, and JavaScript's 'GMT+0900 (JST)' was read as UTC-9."""
    records = [
        ("iNat-1", "2022-06-12T11:49:00Z", NEW_YORK),
        ("iNat-2", "Sun Jun 12 2022 07:49:00 GMT+0900 (JST)", NEMURO),
        ("yfcc-3", "2022-06-12 07:49:00.0", PARIS),
    ]
    got = {key: when for (key, *_), when in zip(records, geosound_times(tmp_path, records), strict=True)}
    assert got == {
        "iNat-1": (6, pytest.approx(7 + 49 / 60)),
        "iNat-2": (6, pytest.approx(7 + 49 / 60)),
        "yfcc-3": (6, pytest.approx(7 + 49 / 60)),
    }

    se = {"long_key": "1_a", "latitude": PARIS[0], "longitude": PARIS[1], "date_recorded": "2014-05-03 05:15:00+00:00"}
    for split in ("train_0", "val", "test"):
        write_shard(
            tmp_path / "se" / f"{split}.tar",
            {
                "1_a.meta.json": json.dumps(se).encode(),
                "1_a.image.jpg": image_bytes(600, 0, "JPEG"),
                "1_a.audio_mel1.pyd": clap_mel(0),
            },
        )
    sample = reader("soundingearth")({"root": str(tmp_path / "se"), "imagery": "googleEarth", "zooms": [1]}, 32).val[0]
    assert (sample.month, sample.hour) == (5, pytest.approx(7.25))  # CEST


def test_geosound_parquet_timestamps_with_a_zone_are_read_at_the_places_clock(tmp_path):
    """A Parquet date column may be a timestamp with a time zone rather than text: its instant is
    read at the place's clock as well."""
    pa = pytest.importorskip("pyarrow", reason="pyarrow is in the train extra")
    import pyarrow.parquet as pq

    keys = ["iNat-1", "yfcc-2"]
    table = pa.table(
        {
            "sample_id": keys,
            "source": ["iNat", "yfcc"],
            "audio": [{"bytes": wav_bytes(0.5, 32000), "path": f"{k}.wav"} for k in keys],
            "sentinel_image": [{"bytes": image_bytes(1280, i, "JPEG"), "path": None} for i, _ in enumerate(keys)],
            "latitude": [KOLKATA[0], PARIS[0]],
            "longitude": [KOLKATA[1], PARIS[1]],
            "date": pa.array(
                [datetime(2022, 3, 1, 4, 0, tzinfo=UTC), datetime(2022, 12, 31, 23, 30, tzinfo=UTC)],
                pa.timestamp("s", tz="UTC"),
            ),
        }
    )
    data = tmp_path / "GeoSound" / "data"
    data.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        pq.write_table(table, data / f"{split}-00000-of-00001.parquet")
    splits = reader("geosound")({"root": str(tmp_path / "GeoSound"), "layout": "huggingface", "zooms": [1]}, 32)
    got = [(s.month, s.hour) for s in (splits.train.get(i, frozenset({"image", "audio"})) for i in range(2))]
    assert got == [(3, pytest.approx(9.5)), (1, pytest.approx(0.5))]  # IST; the new year in Paris


def test_a_time_at_an_offset_without_a_date_takes_the_places_offset_it_names(tmp_path, caplog):
    """A time with an offset but no date was converted as on 1 January: '14:30+02:00' in Paris, its
    summer clock, trained 13:30. Now an offset the place's clocks keep is its clock as written (CEST
    there, CET for '+01:00'); a place keeping one offset all year converts any other; and where the
    place keeps two, neither the one given, the hour is one of two: the row is skipped, saying so.
    A month without a day (June) narrows the place's offsets to that month's."""
    with caplog.at_level(logging.WARNING):
        paris = at(tmp_path, "paris", PARIS, ["14:30+02:00", "14:30+01:00", "2:30 PM GMT+2", "June 12:30Z", "12:30Z"])
    assert paris == [(None, 14.5), (None, 14.5), (None, 14.5), (6, 14.5)]
    assert (
        "a time at a UTC offset ... without a date, at a place whose clocks keep more than one offset over the year "
        "..., none of them that one: its hour there is one of those; write the date, or the place's clock: 1 ("
    ) in caplog.text
    assert at(tmp_path, "kolkata", KOLKATA, ["04:00Z", "09:30+05:30"]) == [(None, 9.5)] * 2
    assert at(tmp_path, "new-york", NEW_YORK, ["10:00-04:00", "10:00-05:00"]) == [(None, 10.0)] * 2


def test_released_datasets_leave_the_hour_unknown_where_an_undated_offset_does_not_tell_it(tmp_path):
    records = [("iNat-1", "14:30+02:00", PARIS), ("iNat-2", "12:30Z", PARIS)]
    got = geosound_times(tmp_path, records)
    assert got == [(None, 14.5), (None, None)]


def test_exif_and_exiftool_dates_keep_their_date(tmp_path):
    """Cameras and recorders write 'YYYY:MM:DD HH:MM:SS' (EXIF's DateTimeOriginal, exiftool's
    output, with an offset since EXIF 2.31): dateutil read '2022:07:01 10:00:00' as 10:00 of no
    date, the month dropped without a word, and a date alone as unreadable."""
    written = ["2022:07:01 10:00:00", "2022:07:01 10:00:00+02:00", "2022:01:15 10:00:00Z", "2022:07:01"]
    assert at(tmp_path, "paris", PARIS, written) == [(7, 10.0), (7, 10.0), (1, 11.0), (7, None)]


def test_a_month_named_in_another_language_is_no_month_of_the_released_datasets(tmp_path):
    """Their dates are read fuzzily (words dateutil does not know are skipped), and a month named
    in another language was skipped with it, its day read as the month: '12 juin 2022' trained in
    December, '1 mai 2022' in January. Where a skipped word leaves a month but no day, and no month
    is named in English, the month is unknown; a month dateutil names (June) or an ISO date stays."""
    members = {}
    dates = ["12 juin 2022 07:49", "1 mai 2022", "recorded June 2010 evening", "Taken 2010-06-26", "2022/06/12 7:49 AM"]
    for n, date in enumerate(dates):
        meta = {"sample_id": f"yfcc-{n}", "date": date, "latitude": PARIS[0], "longitude": PARIS[1], "text": "x"}
        members[f"yfcc-{n}.meta.json"] = json.dumps(meta).encode()
        members[f"yfcc-{n}.image.jpg"] = image_bytes(1280, n, "JPEG")
        members[f"yfcc-{n}.audio_mel1.pyd"] = clap_mel(n)
    for split in ("train_0", "val_0", "test_0"):
        write_shard(tmp_path / "geosound" / "with_sentinel" / f"{split}.tar", members)
    split = reader("geosound")({"root": str(tmp_path / "geosound"), "zooms": [1]}, 32).train
    got = [(s.month, s.hour) for s in (split.get(i, frozenset({"image", "audio"})) for i in range(len(dates)))]
    assert got == [
        (None, pytest.approx(7 + 49 / 60)),
        (None, None),
        (6, None),
        (6, None),
        (6, pytest.approx(7 + 49 / 60)),
    ]

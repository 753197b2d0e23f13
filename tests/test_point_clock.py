"""`/point?datetime=`: one moment, read as the hour and month the place's clocks show then (its
time zone by where it is, daylight saving included), answers as `/point` of that hour and month.
A map's cells keep different clocks at one instant, so the map routes refuse `datetime` saying
so (tests/test_http_review.py)."""

from __future__ import annotations

import pytest

from tests.server_support import make_client, refused

INNSBRUCK = "/point/11.4,47.27"  # Europe/Vienna: UTC+1, +2 in summer
LISBON = "/point/-9.14,38.72"  # Europe/Lisbon: UTC+0, +1 in summer
BAY_OF_BISCAY = "/point/-10.5,45.5"  # at sea: the nominal zone of its 15 degrees of longitude, UTC-1 (Etc/GMT+1)
CLOCK_KEYS = ("datetime", "local_time")


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


def answer(client, path: str, **params) -> dict:
    response = client.get(path, params={"q": "birdsong", **params})
    assert response.status_code == 200, response.text[:300]
    return response.json()


@pytest.mark.parametrize(
    "path, moment, local_time, hour, month",
    [
        (INNSBRUCK, "2024-07-01T10:00:00Z", "2024-07-01T12:00:00+02:00", 12, 7),  # summer time
        (INNSBRUCK, "2024-01-15T10:00:00Z", "2024-01-15T11:00:00+01:00", 11, 1),
        (INNSBRUCK, "2024-07-01T12:00:00+02:00", "2024-07-01T12:00:00+02:00", 12, 7),  # at an offset
        (INNSBRUCK, "2024-06-30T22:30:00Z", "2024-07-01T00:30:00+02:00", 0, 7),  # a month on, there
        (LISBON, "2024-07-01T10:00:00Z", "2024-07-01T11:00:00+01:00", 11, 7),
        (BAY_OF_BISCAY, "2024-07-01T10:00:00Z", "2024-07-01T09:00:00-01:00", 9, 7),
        (LISBON, "2024-07-01T06:30", "2024-07-01T06:30:00", 6, 7),  # no offset: the place's own clock
    ],
)
def test_a_moment_is_the_hour_and_month_of_the_places_clock(client, path, moment, local_time, hour, month):
    got = answer(client, path, datetime=moment)
    assert (got["datetime"], got["local_time"], got["hour"], got["month"]) == (moment, local_time, hour, month)
    same = answer(client, path, hour=hour, month=month)
    assert {k: v for k, v in got.items() if k not in CLOCK_KEYS} == same


def test_other_metadata_go_with_a_moment(client):
    got = answer(client, INNSBRUCK, datetime="2024-07-01T10:00:00Z", source="field", level=5)
    same = answer(client, INNSBRUCK, hour=12, month=7, source="field", level=5)
    assert {k: v for k, v in got.items() if k not in CLOCK_KEYS} == same and got["source"] == "field"


@pytest.mark.parametrize(
    "params, said",
    [
        ({"datetime": "2024-07-01T10:00:00Z", "hour": 6}, "give datetime, or hour and month, not both"),
        ({"datetime": "2024-07-01T10:00:00Z", "month": 6}, "give datetime, or hour and month, not both"),
        ({"datetime": "2024-07-01T00:00:00Z/2024-07-02T00:00:00Z"}, "one moment, not an interval"),
        ({"datetime": "../2024-07-02T00:00:00Z"}, "one moment, not an interval"),
        ({"datetime": "2024-07-01"}, "is a date alone: give its time too"),
        ({"datetime": "tomorrow at dawn"}, "as RFC 3339 writes it"),
        ({"datetime": "2024-07-01T25:00:00Z"}, "as RFC 3339 writes it"),
        ({"datetime": "2024-07-01T10:00:00Z", "hour": 6, "level": 99}, "not both"),  # with the level's
        ({"datetime": "0001-01-01T00:00:00+14:00"}, "year must be 2..9998"),  # before the calendar at UTC
        ({"datetime": "9999-12-31T23:00:00-12:00"}, "year must be 2..9998"),
    ],
)
def test_a_moment_that_is_none_is_refused_in_a_sentence(client, params, said):
    detail = refused(client.get(INNSBRUCK, params={"q": "birdsong", **params}))
    assert said in detail, detail
    if "level" in params:
        assert "level" in detail.replace("datetime", ""), "one 422 names every bad parameter"


@pytest.mark.parametrize(
    "name, value, said",
    [
        ("DateTime", "2024-07-01T10:00:00Z", "did you mean 'datetime'?"),
        ("date_time", "2024-07-01T10:00:00Z", "did you mean 'datetime'?"),
        ("time", "06:00", "give the moment as datetime=2024-06-01T06:00:00Z (RFC 3339), or the local hour"),
        ("date", "2024-07-01", "give the moment as datetime="),
        ("season", "summer", "give the month as month=1..12"),
    ],
)
def test_another_name_for_the_moment_is_refused_naming_datetime(client, name, value, said):
    detail = refused(client.get(INNSBRUCK, params={"q": "birdsong", name: value}))
    assert detail.startswith(f"{name!r} is not a parameter of this route: ") and said in detail, detail


def test_the_moment_is_in_the_openapi_document_of_point_alone(client):
    operations = client.get("/openapi.json").json()["paths"]
    taking = sorted(
        path
        for path, methods in operations.items()
        for op in methods.values()
        if any(p["name"] == "datetime" for p in op.get("parameters", []))
    )
    assert taking == ["/point/{lon},{lat}"]

"""Leftovers of the HTTP review: /point reads each profile of its cell once."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.server_support import make_client


@pytest.fixture(scope="module")
def client(bundle_path, store_path):
    return make_client(bundle_path, store_path)


@pytest.mark.parametrize(
    "params",
    [{"hour": 6}, {"month": 5}, {"hour": 6, "month": 5, "source": "field"}, {}],
)
def test_point_reads_each_profile_of_its_cell_once(client, monkeypatch, params):
    """Its score, its 24-hour and 12-month profiles and its by_source entry for the source asked
    are rows of the same runs: each (axis, metadata) run is read once per request, not once for
    the score and again for the profile (a cache hit, but work and code twice)."""
    service = client.app.state.service
    reads: Counter = Counter()
    profile = service.profile

    async def counted(level, row, meta, axis):
        reads[axis, meta.at(axis, None)] += 1
        return await profile(level, row, meta, axis)

    monkeypatch.setattr(service, "profile", counted)
    answer = client.get("/point/10.5,47.2", params={"q": "birdsong", **params})
    assert answer.status_code == 200, answer.text
    assert reads and max(reads.values()) == 1, reads
    body = answer.json()
    if "hour" in params:
        assert body["score"] == body["hours"][params["hour"]]["score"]
    if "month" in params:
        assert body["score"] == body["months"][params["month"] - 1]["score"]
    here = next(entry for entry in body["by_source"] if entry["source"] == params.get("source"))
    assert (here["score"], here["uncertainty"], here["contrast"]) == (
        body["score"],
        body["uncertainty"],
        body["contrast"],
    )

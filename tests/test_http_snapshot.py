"""benchmarks/http_snapshot.py, the before/after check of the HTTP surface: its request list
reaches every route and no request of it answers 5xx, a snapshot is deterministic, and
`--compare` reports each kind of difference."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from benchmarks import http_snapshot
from server.app import create_app
from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def route_patterns(bundle_path: Path, store_path: Path, tmp_path: Path) -> dict[str, re.Pattern]:
    """Every documented path of the app, plus the viewer's undocumented ones, as regexes."""
    app = create_app(Settings(bundle=str(bundle_path), store=str(store_path), query_db=str(tmp_path / "q.sqlite")))
    paths = [*app.openapi()["paths"], "/", "/docs", "/redoc", "/static/{path}"]
    return {path: re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$") for path in paths}


def test_the_requests_reach_every_route_and_none_answers_5xx(bundle_path, store_path, tmp_path) -> None:
    first = http_snapshot.in_process(REPO, bundle_path, store_path)
    sent = [answer["request"].split(" ", 1)[1].split("?")[0] for answer in first]
    for path, pattern in route_patterns(bundle_path, store_path, tmp_path).items():
        assert any(pattern.match(s) for s in sent), f"no request of the snapshot reaches {path}"
    assert [a for a in first if a["status"] >= 500] == []
    assert {a["status"] for a in first} >= {200, 201, 304, 400, 404, 405, 415, 422}
    # The same code answers the same list identically: what --compare reports is a change.
    assert http_snapshot.in_process(REPO, bundle_path, store_path) == first


def write(path: Path, answers: list[dict]) -> Path:
    path.write_text(json.dumps({"commit": "0" * 40, "transports": {"asgi": answers}}), encoding="utf-8")
    return path


def test_compare_reports_each_difference(tmp_path, capsys) -> None:
    answers = [
        {"name": "tile", "request": "GET /t", "status": 200, "headers": [["etag", '"a"']], "body_sha256": "x"},
        {"name": "json", "request": "GET /j", "status": 200, "headers": [], "body_sha256": "y"},
        {"name": "gone", "request": "GET /g", "status": 404, "headers": [], "body_sha256": "z"},
    ]
    for answer in answers:
        answer["body_bytes"] = 1
    before = write(tmp_path / "a.json", answers)
    assert http_snapshot.compare(before, write(tmp_path / "same.json", copy.deepcopy(answers))) == 0
    assert "all 3 answers identical" in capsys.readouterr().out

    changed = copy.deepcopy(answers)
    changed[0]["headers"] = [["etag", '"b"'], ["vary", "Host"]]
    changed[1]["status"], changed[1]["body_sha256"] = 304, "w"
    changed[2]["name"] = "new"
    assert http_snapshot.compare(before, write(tmp_path / "b.json", changed)) == 1
    out = capsys.readouterr().out
    assert "header etag: '\"a\"' -> '\"b\"'" in out
    assert "header vary: None -> 'Host'" in out
    assert "status 200 -> 304" in out and "sha256 differs" in out
    assert "GET /g: only in A" in out and "new: only in B" in out

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
from tests.server_support import png_difference

REPO = Path(__file__).resolve().parent.parent


def route_patterns(bundle_path: Path, store_path: Path, tmp_path: Path) -> dict[str, re.Pattern]:
    """Every documented path of the app, plus the viewer's undocumented ones, as regexes."""
    app = create_app(Settings(bundle=str(bundle_path), store=str(store_path), query_db=str(tmp_path / "q.sqlite")))
    paths = [*app.openapi()["paths"], "/", "/docs", "/redoc", "/static/{path}"]
    return {path: re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$") for path in paths}


def differences(first: list[dict], again: list[dict], bodies: tuple[Path, Path]) -> str:
    """The answers two runs gave differently (each with what differs), and how a PNG differs."""
    lines = []
    for i, (a, b) in enumerate(zip(first, again, strict=True)):
        if a != b:
            line = f"{a['request']}: {', '.join(k for k in a if a[k] != b.get(k))}"
            body_a, body_b = (next(folder.glob(f"{i + 1:03d}-*")).read_bytes() for folder in bodies)
            if body_a[:4] == body_b[:4] == b"\x89PNG":
                line += f" ({png_difference(body_b, body_a)})"
            lines.append(line)
    return "\n".join(lines)


def test_the_requests_reach_every_route_and_none_answers_5xx(bundle_path, store_path, tmp_path) -> None:
    bodies = (tmp_path / "first", tmp_path / "again")
    first = http_snapshot.in_process(REPO, bundle_path, store_path, bodies[0])
    sent = [answer["request"].split(" ", 1)[1].split("?")[0] for answer in first]
    for path, pattern in route_patterns(bundle_path, store_path, tmp_path).items():
        assert any(pattern.match(s) for s in sent), f"no request of the snapshot reaches {path}"
    assert [a for a in first if a["status"] >= 500] == []
    assert {a["status"] for a in first} >= {200, 201, 304, 400, 404, 405, 415, 422}
    # The same code answers the same list identically: what --compare reports is a change.
    again = http_snapshot.in_process(REPO, bundle_path, store_path, bodies[1])
    assert again == first, differences(first, again, bodies)


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

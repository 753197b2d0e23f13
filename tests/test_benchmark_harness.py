"""benchmarks/run.py's report: the generated table replaces only its own block of BENCHMARKS.md,
and every measured figure becomes a row with its baseline and ratio. Its loads: wrk's scripts
ask what they claim, a server answering errors fails the measure, the bare baselines answer the
recorded bytes. benchmarks/request_cpu.py: every kind of request answered through the whole app."""

import argparse
import asyncio
import functools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from benchmarks.request_cpu import KINDS, measure
from benchmarks.run import (
    HOUR_MONTH_SCRIPT,
    KNOWN_TEXT_SCRIPT,
    NEW_QUERY_SCRIPT,
    answered,
    baseline,
    browser_entry,
    group_cpu_s,
    in_subprocess,
    markdown,
    measure_precompute,
    running,
    timed_gets,
    update_markdown,
    write_tiles,
)
from benchmarks.server_throughput import run_wrk, tile_paths
from server.params import parse_rescale
from server.settings import Settings
from store.reader import Store

RESULT = {
    "command": "python benchmarks/run.py",
    "commit": "abc1234",
    "date": "2026-12-01 16:00 UTC",
    "machine": "x86_64, 2 cores",
    "python": "3.11.7",
    "workers": 2,
    "wrk": {"threads": 2, "connections": 32, "duration_s": 4, "rounds": 3},
    "measures": {
        "warm": {
            "load_before": 2.0,
            "load_after": 2.5,
            "soundscape": {"tiles_per_s": 600.0},
            "bare_asgi": {"tiles_per_s": 1000.0},
            "bare_fastapi": {"tiles_per_s": 300.0},
            "ratio_to_bare_asgi": 0.6,
            "ratio_to_bare_fastapi": 2.0,
        },
        "hour_tile": {
            "load_before": 2.5,
            "load_after": 2.5,
            "level": 7,
            "cold_tile_hour_ms": 20.0,
            "cold_tile_default_ms": 2.0,
            "ratio": 10.0,
        },
    },
}


def test_the_table_has_a_row_per_measure_with_its_baseline():
    text = markdown(RESULT)
    assert "| warm tiles/s (cache hits, 341 tiles of zooms 0-4) | 600 | bare ASGI app, same bytes: 1000" in text
    assert "**0.6** of bare ASGI" in text and "**10.0x** the default tile" in text
    assert "warm 2.0-2.5, hour_tile 2.5-2.5" in text and "Commit abc1234, 2026-12-01 16:00 UTC" in text


def test_the_block_is_appended_once_then_replaced_in_place(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Other section\n\nkept\n", encoding="utf-8")
    update_markdown(doc, "first\n")
    update_markdown(doc, "second\n")
    text = doc.read_text(encoding="utf-8")
    assert text.count("## Performance harness") == 1 and "first" not in text and "second" in text
    assert text.startswith("# Benchmarks\n\n## Other section\n\nkept\n")
    doc.write_text(text + "\n## After\n\nalso kept\n", encoding="utf-8")
    update_markdown(doc, "third\n")
    assert doc.read_text(encoding="utf-8").endswith(
        "third\n<!-- performance-harness:end -->\n\n## After\n\nalso kept\n"
    )


def test_the_hour_rows_show_the_cpu_ratio_and_an_hour_seen_before():
    hour = {
        **RESULT["measures"]["hour_tile"],
        "cold_tile_hour_ms": 8.0,
        "ratio": 4.0,
        "cpu_ratio": 3.5,
        "cold_tile_hour_seen_ms": 2.2,
        "ratio_hour_seen": 1.1,
    }
    text = markdown({**RESULT, "measures": {"hour_tile": hour}})
    assert "**4.0x** the default tile (target <= 3x); CPU time 3.5x" in text
    assert "| the same, a new query at an hour seen before (its fused cells cached) | 2.2 ms |" in text
    assert "**1.1x** the default tile |" in text
    assert "hour seen before" not in markdown(RESULT)  # results of the older harness have no such row


def test_the_viewport_row_shows_curl_and_the_browser_beside_their_cached_floors():
    viewport = {"load_before": 1.0, "load_after": 1.0, "p50_ms": 60.0, "max_ms": 80.0, "runs": 5, "cached_p50_ms": 15.0}
    with_browser = {**viewport, "browser": {"p50_ms": 115.0, "cached_p50_ms": 90.0}}
    text = markdown({**RESULT, "measures": {"viewport": with_browser}})
    assert "| p50 60.0 ms (max 80.0 ms over 5 new queries); headless Chromium p50 115.0 ms |" in text
    assert "| the same viewport cached: p50 15.0 ms; headless Chromium p50 90.0 ms |" in text
    spent = {
        "browser_cpu_ms": 120.0,
        "server_cpu_ms": 80.0,
        "cached_browser_cpu_ms": 100.0,
        "cached_server_cpu_ms": 5.0,
    }
    text = markdown({**RESULT, "measures": {"viewport": {**viewport, "browser": {**with_browser["browser"], **spent}}}})
    assert "headless Chromium p50 115.0 ms (CPU per viewport: browser 120.0 ms, server 80.0 ms) |" in text
    assert "headless Chromium p50 90.0 ms (CPU per viewport: browser 100.0 ms, server 5.0 ms) |" in text
    without = markdown({**RESULT, "measures": {"viewport": {**viewport, "browser": "not run: no chromium"}}})
    assert "Chromium" not in without and "| the same viewport cached: p50 15.0 ms |" in without
    assert "@2x" not in without, "a result of before the high-DPI viewport has no row of it"
    at_2x = markdown(
        {**RESULT, "measures": {"viewport": {**viewport, "at_2x": {"p50_ms": 90.0, "cached_p50_ms": 30.0}}}}
    )
    assert "| p50 90.0 ms (curl) | the same viewport cached: p50 30.0 ms |" in at_2x


def test_a_process_group_cpu_counts_its_processes_and_no_other():
    """The browser's and the server's CPU per viewport: a busy child in its own group is counted
    there, and not in a group that does not exist."""
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE, start_new_session=True)
    try:
        deadline = 0
        while group_cpu_s({child.pid}) < 0.25 and deadline < 200:
            subprocess.run(["sleep", "0.05"])
            deadline += 1
        assert 0.25 <= group_cpu_s({child.pid}) < 5
        assert group_cpu_s({2**22 + 1}) == 0  # beyond the kernel's pid range: no such group
    finally:
        child.communicate(b"\n", timeout=10)


def test_browser_figures_leave_out_the_first_viewport_and_take_medians():
    def load(s, browser, server):
        return {"s": s, "browser_cpu_s": browser, "server_cpu_s": server}

    fresh = [load(0.5, 0.3, 0.2), load(0.10, 0.12, 0.08), load(0.12, 0.14, 0.07), load(0.14, 0.10, 0.09)]
    cached = [load(0.2, 0.2, 0.0), load(0.08, 0.11, 0.004), load(0.09, 0.10, 0.006)]
    entry = browser_entry(fresh + cached, len(fresh))
    assert entry == {
        "p50_ms": 120.0,
        "cached_p50_ms": 85.0,
        "browser_cpu_ms": 120.0,
        "server_cpu_ms": 80.0,
        "cached_browser_cpu_ms": 105.0,
        "cached_server_cpu_ms": 5.0,
    }


def test_the_precompute_row_shows_both_trees_and_their_ratios():
    precompute = {
        "load_before": 1.0,
        "load_after": 1.5,
        "baseline_commit": "3484b32",
        "repeats": 3,
        "current_s": 52.4,
        "baseline_s": 113.6,
        "current_cpu_s": 87.1,
        "baseline_cpu_s": 159.1,
        "ratio": 0.461,
        "cpu_ratio": 0.547,
        "same_bundle": False,
    }
    text = markdown({**RESULT, "measures": {"precompute": precompute}})
    assert (
        "| precompute of the demo world (levels 0..7, fusions at 0..6), wall (CPU) | 52.4 s (87.1 s); median of 3 "
        "| the code of 3484b32: 113.6 s (159.1 s); each tree its own export's bundle "
        "| **0.461** of the baseline (target <= 0.5); CPU 0.547 |"
    ) in text
    one_bundle = markdown({**RESULT, "measures": {"precompute": {**precompute, "same_bundle": True}}})
    assert "; one bundle for both trees |" in one_bundle
    assert "2 cores, Python 3.11.7, no GPU." in text
    assert "Python 3.11.7, GPU: onnxruntime's CUDA provider." in markdown(
        {**RESULT, "gpu": "onnxruntime's CUDA provider"}
    )


def test_a_precompute_measure_that_cannot_run_says_why(tmp_path: Path):
    """A bundle outside a demo data dir (no imagery beside it): the row carries
    precompute_throughput.py's own sentence, in seconds rather than after minutes of runs."""
    (tmp_path / "bundle").mkdir()
    args = argparse.Namespace(
        bundle=tmp_path / "bundle", precompute_repeats=1, precompute_baseline="HEAD", precompute_baseline_data_dir=None
    )
    result: dict = {}
    measure_precompute(args, result)
    entry = result["measures"]["precompute"]
    assert "soundscape demo --build-only" in entry["not_run"] and "ratio" not in entry
    args.precompute_baseline = "no-such-revision-0"
    measure_precompute(args, result)
    assert "is no commit of this repository" in result["measures"]["precompute"]["not_run"]
    assert "| precompute of the demo world (levels 0..7, fusions at 0..6), wall (CPU) | not run: " in markdown(
        {**RESULT, "measures": {"precompute": entry}}
    )


def test_the_cold_rows_show_the_int8_server_beside_fp32_when_it_ran():
    cold = {
        "load_before": 2.0,
        "load_after": 3.0,
        "soundscape": {"tiles_per_s": 200.0},
        "titiler": {"tiles_per_s": 50.0},
        "ratio_to_titiler": 4.0,
    }
    text = markdown({**RESULT, "measures": {"cold": cold}})
    assert "| cold tiles/s (every request a new text query) | 200 | TiTiler, same GeoTIFF: 50 | **4.0x**" in text
    assert "int8" not in text  # a bundle without an int8 text graph: one server
    int8 = {**cold, "soundscape_int8": {"tiles_per_s": 320.0}, "int8_ratio_to_titiler": 6.4}
    text = markdown({**RESULT, "measures": {"cold": int8}})
    assert "| the same, int8 text graph (`serve --precision int8`) | 320 | TiTiler, same GeoTIFF: 50 | **6.4x**" in text
    known = {**int8, "soundscape_known_text": {"tiles_per_s": 600.0}, "known_text_ratio_to_titiler": 12.0}
    text = markdown({**RESULT, "measures": {"cold": known}})
    assert "a new `rescale=` each (no text graph, no colour scale) | 600 | TiTiler, same GeoTIFF: 50 |" in text
    assert "| **12.0x** TiTiler: the ceiling for a new text's tile |" in text


def test_request_cpu_measures_every_kind_of_request_through_the_app(bundle_path, store_path):
    settings = Settings(bundle=str(bundle_path), store=str(store_path), precision="int8")
    result = asyncio.run(measure(settings, rounds=1, n=3))  # a request that is not 200 exits
    assert list(result) == ["floor", *KINDS, "text embedding alone"]
    assert all(ms > 0 for ms in result.values())


def test_the_search_rows_show_http_and_in_process():
    search = {
        "load_before": 1.0,
        "load_after": 1.0,
        "level": 7,
        "without_metadata_p50_ms": 6.0,
        "with_hour_month_first_ms": 60.0,
        "with_hour_month_repeat_p50_ms": 13.0,
        "with_new_hour_month_p50_ms": 57.0,
        "with_new_hour_month_requests": 15,
        "with_new_hour_month_exact_p50_ms": 380.0,
    }
    text = markdown({**RESULT, "measures": {"search": search}})
    assert "| `/search` with a new hour and month each request | p50 57.0 ms over 15 requests |" in text
    assert "in process" not in text  # a result from before the in-process measure and the client's name
    text = markdown({**RESULT, "measures": {"search": {**search, "client": "curl, a new connection per request"}}})
    assert "| p50 57.0 ms over 15 requests (curl, a new connection per request) |" in text
    in_process = {"searches": 15, "p50_ms": 48.04, "cpu_ms": 80.0, "exact_p50_ms": 300.0, "exact_cpu_ms": 499.96}
    text = markdown({**RESULT, "measures": {"search": {**search, "in_process": in_process}}})
    assert (
        "| the same, in process (the service's search, no HTTP) | p50 48.0 ms over 15 searches (CPU 80.0 ms) "
        "| `exact=True`: p50 300.0 ms (CPU 500.0 ms) |" in text
    )


def test_the_in_process_search_times_both_searches_in_a_clean_process(bundle_path, store_path):
    paths = argparse.Namespace(bundle=bundle_path, store=store_path)
    result = in_subprocess("search_in_process", paths, 3)
    assert result["level"] == max(Store(store_path).levels) and result["searches"] == 3
    assert all(result[key] > 0 for key in ("p50_ms", "exact_p50_ms", "cpu_ms", "exact_cpu_ms"))


def test_timed_gets_times_each_request_by_curl_and_fails_on_an_http_error(tmp_path: Path):
    """The search rows' client: one sample per URL, in seconds, from a real loopback server."""
    (tmp_path / "answer.json").write_text('{"ok": true}', encoding="utf-8")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        samples = timed_gets(base, ["/answer.json", "/answer.json?again=1"])
        assert len(samples) == 2 and all(0 < s < 5 for s in samples)
        with pytest.raises(subprocess.CalledProcessError):
            timed_gets(base, ["/missing.json"])
    finally:
        server.shutdown()


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with a tiny 200 (or 404 under /missing) and records its path."""

    protocol_version = "HTTP/1.1"  # keep-alive, as wrk's connections expect
    wbufsize, disable_nagle_algorithm = 4096, True  # one write per answer, no delayed-ACK wait
    paths: list[str] = []
    delay_s = 0.0

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        self.paths.append(self.path)
        status = 404 if self.path.startswith("/missing") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@contextmanager
def recording_server(delay_s: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """(base URL, the paths asked so far) of a loopback server on a free port, answering each
    request after `delay_s` (as slow as a tile server's fused tiles)."""
    paths: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (Recorder,), {"paths": paths, "delay_s": delay_s}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()


COLD_URLS = [f"/tiles/{z}/{x}/{y}.png?layer=heatmap" for z, x, y in tile_paths(4)]


def test_the_known_text_load_asks_a_tile_never_drawn_with_every_request():
    """Each request of the cold load's known-text script names a tile the server has not drawn:
    a new rescale= after the server's own rounding (the cache key), for q=birdsong, on the tiles
    given, across both of wrk's threads."""
    with recording_server() as (base, paths):
        run = run_wrk(base, COLD_URLS, 1, 4, KNOWN_TEXT_SCRIPT, {"SALT": "00ff3a7c"})
    assert answered("recorder", run) is run and len(paths) > 100
    keys = set()
    for path in paths:
        url = urlsplit(path)
        query = parse_qs(url.query)
        assert f"{url.path}?layer=heatmap" in COLD_URLS and query["q"] == ["birdsong"]
        lo, hi = parse_rescale(query["rescale"][0])  # the server takes it (a 422 raises)
        assert 0.5 <= hi - lo < 1 + 1e-9
        keys.add((url.path, lo, hi))
    assert len(keys) == len(paths)


def test_the_new_query_load_asks_a_text_never_seen_with_every_request():
    with recording_server() as (base, paths):
        run_wrk(base, COLD_URLS, 1, 4, NEW_QUERY_SCRIPT, {"SALT": "5eed"})
    texts = [parse_qs(urlsplit(path).query)["q"][0] for path in paths]
    assert len(texts) > 100 and len(set(texts)) == len(texts)


def test_the_hour_month_load_fuses_a_new_window_with_every_request_of_every_round():
    """Three rounds, as the harness runs them: every request a zoom-3 tile of a known text under a
    (tile, hour, month) not asked before in any round, with a fixed rescale= (no scale fusion)."""
    zoom3 = [f"/tiles/3/{x}/{y}.png?layer=heatmap" for x in range(8) for y in range(8)]
    seen = []
    for round_ in range(3):
        with recording_server(delay_s=0.005) as (base, paths):
            run_wrk(base, zoom3, 1, 2, HOUR_MONTH_SCRIPT, {"ROUND": str(round_)})
        seen += paths
    keys = set()
    for path in seen:
        url = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        assert f"{url.path}?layer=heatmap" in zoom3 and (query["q"], query["rescale"]) == ("birdsong", "0,1")
        assert 0 <= int(query["hour"]) <= 23 and 1 <= int(query["month"]) <= 12
        keys.add((url.path, query["hour"], query["month"]))
    assert len(seen) > 100 and len(keys) == len(seen)


def test_the_hour_row_from_outside_shows_the_cost_ratio():
    hour = {
        "load_before": 1.0,
        "load_after": 1.5,
        "hour_month": {"tiles_per_s": 180.0},
        "default": {"tiles_per_s": 960.0},
        "ratio": 5.3,
    }
    text = markdown({**RESULT, "measures": {"hour_http": hour}})
    assert "a new `hour=` and `month=` each (no stored fusions), over HTTP | 180 | default metadata" in text
    assert "a new `rescale=` each: 960 | **5.3x** the default tile's cost (target <= 3x) |" in text


def test_a_server_answering_errors_fails_the_measure():
    with recording_server() as (base, _):
        run = run_wrk(base, ["/missing/tile.png"], 1, 2)
    assert run["non_2xx"] > 0
    with pytest.raises(RuntimeError, match=r"bare_fastapi answered \d+ requests with an error status"):
        answered("bare_fastapi", run)


@pytest.mark.parametrize("name", ["bare_asgi", "bare_fastapi"])
def test_the_bare_baselines_answer_each_recorded_url_with_its_bytes(tmp_path: Path, name: str):
    """As run.py starts them (uvicorn, the server's options) on the tiles write_tiles recorded."""
    urls = ["/tiles/0/0/0.png?q=birdsong&hour=6", "/tiles/1/1/0.png?q=birdsong&hour=6"]
    answers = {
        url: httpx.Response(200, content=f"png {i}".encode(), headers={"content-type": "image/png"})
        for i, url in enumerate(urls)
    }
    write_tiles(answers, tmp_path)
    with running(baseline(name, 1), urls[0], {"BASELINE_TILES": str(tmp_path)}) as (base, _):
        for url, answer in answers.items():
            got = httpx.get(base + url)
            assert (got.status_code, got.content, got.headers["content-type"]) == (200, answer.content, "image/png")


def test_results_are_strict_json(tmp_path: Path) -> None:
    """A figure that does not exist (an AUC over no positives) is written as null, never NaN,
    which strict JSON readers refuse; every committed result parses strictly."""
    import json

    from benchmarks.provenance import dumps, emit

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    result = {"auc": float("nan"), "spread": [float("inf"), 0.5], "runs": ({"x": -float("inf")},), "n": 3}
    emit(result, tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8"), parse_constant=refuse) == {
        "auc": None,
        "spread": [None, 0.5],
        "runs": [{"x": None}],
        "n": 3,
    }
    assert json.loads(dumps({"a": float("nan")}, indent=None, default=str)) == {"a": None}
    committed = sorted((Path(__file__).parent.parent / "benchmarks" / "results").rglob("*.json"))
    assert committed
    for path in committed:
        json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)

"""The query registry's SQLite file as the server's workers share it: one record per id however
many workers register it at once, a file it can only read refused at start, a damaged file a
503 rather than a 500, and every record in the .sqlite file itself once the server stopped."""

import os
import sqlite3
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from server.registry import RegistryError, RegistryUnavailable, SqliteRecords
from tests.server_support import make_client


def test_workers_registering_the_same_query_at_once_store_it_once(tmp_path):
    """Each worker checked for the id and then inserted it under a lock of its own process: the
    second insert failed (UNIQUE constraint) and its client got a 503 for a stored query."""
    workers = [SqliteRecords(tmp_path / "q.sqlite", 1000) for _ in range(2)]
    failures: list[Exception] = []
    for n in range(20):

        def register(records: SqliteRecords, ready: threading.Barrier, qid: str) -> None:
            ready.wait()
            try:
                records.put(qid, b"record")
            except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                failures.append(exc)

        ready = threading.Barrier(8)
        threads = [threading.Thread(target=register, args=(w, ready, f"{n:016x}")) for w in workers * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    with sqlite3.connect(tmp_path / "q.sqlite") as db:
        assert db.execute("SELECT count(*), count(DISTINCT id) FROM queries").fetchone() == (20, 20)


def test_the_cap_holds_across_workers(tmp_path):
    workers = [SqliteRecords(tmp_path / "q.sqlite", 5) for _ in range(2)]
    stored = 0
    for n in range(12):
        try:
            workers[n % 2].put(f"{n:016x}", b"record")
            stored += 1
        except RegistryError as exc:
            assert exc.status == 507
    assert stored == 5


@contextmanager
def read_only(path: Path):
    """`path` as SQLite opens a file it may not write: for root (whom permissions do not stop)
    an immutable file."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        path.chmod(0o644)
        return
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_registry_file_it_cannot_write_is_refused_at_start(tmp_path):
    """SQLite opens such a file read-only: the server started, said it was ready, and answered
    every registration 503 "try again" for ever."""
    db = tmp_path / "q.sqlite"
    SqliteRecords(db, 10).close()
    with read_only(db), pytest.raises(RegistryUnavailable, match="attempt to write a readonly database"):
        SqliteRecords(db, 10)


def damage(db: Path) -> None:
    """Every page of the SQLite file but the first (the header) overwritten with noise."""
    with open(db, "r+b") as raw:
        raw.seek(4096)
        raw.write(os.urandom(db.stat().st_size - 4096))


def test_a_damaged_registry_file_is_a_503_naming_it(bundle_path, store_path, tmp_path):
    db = tmp_path / "q.sqlite"
    with make_client(bundle_path, store_path, query_db=str(db)) as one:
        ids = [one.post("/queries", json={"text": f"rain number {n}"}).json()["id"] for n in range(30)]
    with make_client(bundle_path, store_path, query_db=str(db)) as two:
        damage(db)
        r = two.get(f"/queries/{ids[-1]}")
        assert r.status_code == 503, r.text
        assert "the query registry could not be read" in r.json()["detail"] and r.headers["Retry-After"] == "5"


def registry_gauges(client) -> tuple[float, float]:
    """(soundscape_registered_queries, soundscape_registered_queries_max) as /metrics reads them."""
    rows = dict(line.split() for line in client.get("/metrics").text.splitlines() if line.startswith("soundscape_reg"))
    return float(rows["soundscape_registered_queries"]), float(rows["soundscape_registered_queries_max"])


def test_metrics_show_the_registry_filling_to_its_cap(bundle_path, store_path, tmp_path):
    """An operator sees the count reach the cap before registrations answer 507; a file that
    cannot be read gives no count (NaN), not the last one, and the scrape still answers."""
    db = tmp_path / "q.sqlite"
    with make_client(bundle_path, store_path, query_db=str(db), max_queries=2) as client:
        assert registry_gauges(client) == (0, 2)
        assert client.post("/queries", json={"text": "rain"}).status_code == 201
        assert client.post("/queries", json={"text": "rain"}).status_code == 201  # the same query: one record
        assert registry_gauges(client) == (1, 2)
        assert client.post("/queries", json={"text": "birdsong"}).status_code == 201
        assert client.post("/queries", json={"text": "thunder"}).status_code == 507
        assert registry_gauges(client) == (2, 2)
    with make_client(bundle_path, store_path, query_db=str(db), max_queries=2) as client:
        assert registry_gauges(client) == (2, 2)  # the file's records, counted by a new server
    with make_client(bundle_path, store_path, query_db=str(db), max_queries=2) as client:
        damage(db)
        count, cap = registry_gauges(client)
        assert count != count and cap == 2  # NaN


def test_a_stopped_server_leaves_every_record_in_the_sqlite_file(bundle_path, store_path, tmp_path):
    """A copy of the .sqlite file alone (an operator's backup) held none of the last records:
    they were in the write-ahead log beside it."""
    db = tmp_path / "q.sqlite"
    with make_client(bundle_path, store_path, query_db=str(db)) as client:
        ids = {client.post("/queries", json={"text": f"rain number {n}"}).json()["id"] for n in range(3)}
    copy = tmp_path / "backup" / "q.sqlite"
    copy.parent.mkdir()
    copy.write_bytes(db.read_bytes())
    with sqlite3.connect(copy) as backup:
        assert {qid for (qid,) in backup.execute("SELECT id FROM queries")} == ids

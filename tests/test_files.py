"""runtime/files.py: the one home of atomic writes, locks and checksums."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np
import pytest

from runtime.files import (
    atomic_write,
    canonical_json,
    file_sha256,
    json_sha256,
    lock_file,
    path_lock,
    replace_dir,
    unlock_file,
)


def test_atomic_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old", encoding="utf-8")
    atomic_write(path, "new é")
    assert path.read_text(encoding="utf-8") == "new é"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "cells.npy", lambda tmp: np.save(tmp, np.arange(3)))  # numpy keeps the suffix
    assert np.load(tmp_path / "cells.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "cells.npy"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old", encoding="utf-8")

    def broken(tmp):
        tmp.write_text("half", encoding="utf-8")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text(encoding="utf-8") == "old" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old", encoding="utf-8")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "new.txt").write_text("new", encoding="utf-8")
    replace_dir(tmp_path / "work", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_checksums(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 5000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert json_sha256({"b": 1, "a": 2}) == json_sha256({"a": 2, "b": 1}) != json_sha256({"a": 2, "b": 2})
    assert len(json_sha256({}, 32)) == 32


def test_path_lock_leaves_no_lock_file(tmp_path):
    """`precompute merge --out S` (and a Ray shard task) left `.S.lock` beside the store for good."""
    with path_lock(tmp_path / "store"):
        assert (tmp_path / ".store.lock").is_file()
    with pytest.raises(RuntimeError), path_lock(tmp_path / "store"):
        raise RuntimeError("the merge failed")
    assert list(tmp_path.iterdir()) == []


def test_a_waiter_locks_the_file_at_the_path_not_the_one_its_holder_removed(tmp_path):
    """A holder removes the lock file before it lets go; a locker that was waiting on the removed
    file must lock the one now at the path, or it and the next locker (who makes a new file) would
    both hold the lock."""
    path = tmp_path / ".store.lock"
    holder = lock_file(path)
    got = []
    waiter = threading.Thread(target=lambda: got.append(lock_file(path)))
    waiter.start()
    time.sleep(0.3)  # the waiter has opened the file and waits in flock
    assert waiter.is_alive() and not got
    unlock_file(path, holder)
    waiter.join(10)
    (handle,) = got
    assert os.path.samestat(os.stat(path), os.fstat(handle.fileno()))
    with pytest.raises(BlockingIOError):
        lock_file(path, wait=False)
    unlock_file(path, handle)
    assert not path.exists()
    unlock_file(path, lock_file(path, wait=False))  # free again

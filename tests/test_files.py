"""runtime/files.py: the one home of atomic writes and checksums."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from runtime.files import atomic_write, canonical_json, file_sha256, json_sha256, replace_dir


def test_atomic_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    atomic_write(path, "new é")
    assert path.read_text(encoding="utf-8") == "new é"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "cells.npy", lambda tmp: np.save(tmp, np.arange(3)))  # numpy keeps the suffix
    assert np.load(tmp_path / "cells.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "cells.npy"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_replace_dir_swaps_a_finished_folder_in(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "new.txt").write_text("new")
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

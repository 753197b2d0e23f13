"""A damaged store is refused when it is opened, with one sentence naming the file: by the
reader (StoreError), by `soundscape store verify` and `soundscape serve` (exit 2, no traceback),
never served as random or all-NaN tiles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from store.format import StoreError
from store.reader import Store
from store.verify import verify_store
from tests.server_support import REPO, soundscape_here


@pytest.fixture(scope="module")
def fusion_store(bundle_path, imagery_path, tmp_path_factory) -> Path:
    """A small store with hourly and monthly fusions at level 3."""
    from precompute.run import run
    from runtime.bundle import Bundle
    from runtime.imagery import Imagery
    from tests.conftest import FIXTURE_BBOX

    out = tmp_path_factory.mktemp("fusion-store") / "store"
    run(Imagery(imagery_path), Bundle(bundle_path), [3, 4], FIXTURE_BBOX, out, fusion_levels=(3,), progress=False)
    return out


def damaged(source: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(source, copy)
    damage(copy)
    return copy


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, drop: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:-drop])


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(store: Path) -> None:
        manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
        change(manifest)
        (store / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    return damage


def widen(path: Path) -> None:
    """A valid header declaring rows of 3 values instead of 2 (the data then reads shifted)."""
    data = path.read_bytes()
    n = np.load(path).shape[0]
    path.write_bytes(data.replace(f"'shape': ({n}, 2)".encode(), f"'shape': ({n}, 3)".encode(), 1))


def nan_rows(path: Path) -> None:
    """Every S of the level NaN (header kept): the all-NaN tiles a flipped exponent byte gives."""
    data = bytearray(path.read_bytes())
    offset = len(data) - np.load(path).nbytes
    data[offset:] = np.full((len(data) - offset) // 4, np.nan, np.float32).tobytes()
    path.write_bytes(bytes(data))


CASES = {
    "flipped byte in mu": (lambda s: flip(s / "levels/05/mu.npy", -7), "levels/05/mu.npy", "checksum"),
    "flipped byte in a header": (lambda s: flip(s / "levels/04/s.npy", 20), "levels/04/s.npy", ".npy header"),
    "header declares another shape": (lambda s: widen(s / "levels/06/lonlat.npy"), "levels/06/lonlat.npy", ", 3), not"),
    "truncated codes": (lambda s: truncate(s / "levels/06/codes.npy"), "levels/06/codes.npy", "truncated"),
    "truncated index": (lambda s: truncate(s / "levels/05/index.faiss"), "levels/05/index.faiss", "truncated"),
    "missing index": (lambda s: (s / "levels/04/index.faiss").unlink(), "levels/04/index.faiss", "missing"),
    "all-NaN S": (lambda s: nan_rows(s / "levels/06/s.npy"), "levels/06/s.npy", ""),
    "manifest without id": (edit_manifest(lambda m: m.pop("id")), "manifest.json", "'id'"),
    "manifest without bounds": (edit_manifest(lambda m: m.pop("bounds")), "manifest.json", "'bounds'"),
    "level without count": (edit_manifest(lambda m: m["levels"]["5"].pop("count")), "manifest.json", "count"),
    "manifest a list": (lambda s: (s / "manifest.json").write_text("[]", encoding="utf-8"), "manifest.json", "object"),
    "bounds not numbers": (edit_manifest(lambda m: m.update(bounds="abcd")), "manifest.json", "4 finite numbers"),
    "S range with a NaN": (
        edit_manifest(lambda m: m.update(uncertainty_range=[0.1, float("nan")])),
        "manifest.json",
        "2 finite numbers",
    ),
    "bounds past a float": (
        edit_manifest(lambda m: m["bounds"].__setitem__(0, 10**400)),
        "manifest.json",
        "4 finite numbers",
    ),
    "count disagrees": (edit_manifest(lambda m: m["levels"]["5"].update(count=3)), "levels/05/", "not"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_damaged_store_is_refused_naming_the_file(store_path, tmp_path, name):
    damage, file, words = CASES[name]
    store = damaged(store_path, tmp_path, damage)
    with pytest.raises(StoreError) as refused:
        Store(store)
    message = str(refused.value)
    assert str(store / file) in message and words in message and "\n" not in message


def test_files_past_the_hash_budget_are_still_checked_for_size_and_values(store_path, tmp_path):
    """A store too large to hash when opened: sizes, headers and a sample of values are checked."""
    flipped = damaged(store_path, tmp_path / "a", lambda s: flip(s / "levels/05/mu.npy", -7))
    Store(flipped, check_bytes=0)  # a flipped mantissa byte is found only by its checksum ...
    with pytest.raises(StoreError, match="checksum"):
        verify_store(Store(flipped))  # ... which `store verify` always checks
    for damage, file in (
        (lambda s: nan_rows(s / "levels/06/s.npy"), "levels/06/s.npy"),
        (lambda s: truncate(s / "levels/04/sat.npy"), "levels/04/sat.npy"),
    ):
        broken = damaged(store_path, tmp_path / file.replace("/", "-"), damage)
        with pytest.raises(StoreError, match=str(broken / file)):
            Store(broken, check_bytes=0)


def test_a_store_without_checksums_still_opens(store_path, tmp_path):
    def drop_checksums(manifest: dict) -> None:
        for meta in manifest["levels"].values():
            meta.pop("files")

    store = damaged(store_path, tmp_path, edit_manifest(drop_checksums))
    assert sorted(Store(store).levels) == sorted(Store(store_path).levels)
    broken = damaged(store, tmp_path / "b", lambda s: truncate(s / "levels/05/index.faiss"))
    with pytest.raises(StoreError, match=r"index\.faiss"):
        Store(broken)


@pytest.mark.parametrize(
    "damage, file",
    [
        (lambda s: truncate(s / "levels/03/fusions/hour-07.mu.npy"), "levels/03/fusions/hour-07.mu.npy"),
        (lambda s: (s / "levels/03/fusions/month-12.s.npy").unlink(), "levels/03/fusions/month-12.s.npy"),
    ],
)
def test_damaged_fusion_files_are_refused(fusion_store, tmp_path, damage, file):
    assert Store(fusion_store).levels[3].fusion_kinds == ["hour", "month"]
    store = damaged(fusion_store, tmp_path, damage)
    with pytest.raises(StoreError, match=str(store / file)):
        Store(store, check_bytes=0)


def soundscape(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_verify_and_serve_exit_2_with_one_sentence(store_path, bundle_path, tmp_path, monkeypatch, capfd):
    """The process's exit status once (verify of a whole store, of a damaged one), then each
    command on each damage in this process."""
    assert soundscape("store", "verify", str(store_path)).returncode == 0
    damage, file, _ = CASES["truncated index"]
    once = damaged(store_path, tmp_path / "once", damage)
    done = soundscape("store", "verify", str(once))
    assert done.returncode == 2 and str(once / file) in done.stderr, done.stderr
    for name in ("manifest without id", "truncated index", "flipped byte in mu"):
        damage, file, _ = CASES[name]
        store = damaged(store_path, tmp_path / name.replace(" ", "-"), damage)
        for args in (
            ["store", "verify", str(store)],
            ["store", "info", str(store)],
            ["serve", "--bundle", str(bundle_path), "--store", str(store), "--port", "9"],
        ):
            done = soundscape_here(monkeypatch, capfd, args)
            assert done.returncode == 2, (args, done.stderr)
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
            assert str(store / file) in done.stderr

"""The `soundscape` command against hostile input: paths that hold something else, damaged files,
values out of range and writers that collide. Each case exits 2 with one sentence and leaves
what was already stored as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from tests.test_cli import _fails

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("trained_parts", [False, True])
def test_export_never_replaces_what_is_not_a_bundle(capsys, tmp_path, trained_parts) -> None:
    """`export --out` naming a store (or any folder of other files) once replaced it with a bundle."""
    store = tmp_path / "store"
    (store / "levels").mkdir(parents=True)
    (store / "manifest.json").write_text('{"format_version": 3}')
    argv = ["export", "--config", str(ROOT / "configs/tiny.yaml"), "--out", str(store)]
    line = _fails(capsys, [*argv, *(["--trained-parts"] if trained_parts else [])])
    assert f"--out {store} holds something other than" in line and "choose another --out" in line
    assert sorted(p.name for p in store.iterdir()) == ["levels", "manifest.json"]
    assert (store / "manifest.json").read_text() == '{"format_version": 3}'


def test_export_out_that_is_a_file_is_one_sentence(capsys, tmp_path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    line = _fails(capsys, ["export", "--config", str(ROOT / "configs/tiny.yaml"), "--out", str(target)])
    assert line == f"soundscape export: --out {target} is a file, not a folder; choose another --out"
    assert target.read_text() == "keep me"


def test_export_metrics_that_are_not_json_is_one_sentence(capsys, tmp_path) -> None:
    metrics = tmp_path / "test.json"
    metrics.write_text("R@10% 0.5\n")
    argv = ["export", "--config", str(ROOT / "configs/tiny.yaml"), "--metrics", str(metrics)]
    line = _fails(capsys, [*argv, "--out", str(tmp_path / "bundle")])
    assert f"--metrics {metrics} is not a JSON file" in line
    assert not (tmp_path / "bundle").exists()


def test_a_second_writer_of_one_store_stops_at_once(capsys, tmp_path) -> None:
    """Two precomputes (or synths) of one --out interleaved their rows into one damaged store, which
    the first then finished with exit 0; now the second stops, and the first's work is untouched."""
    from store.writer import PartialStore

    out = tmp_path / "store"
    first = PartialStore(out, {"run": "first"}, 8, discard_other=False)
    try:
        line = _fails(capsys, ["store", "synth", "--out", str(out), "--level", "3", "--cells", "10"])
        assert line == (
            f"soundscape store: another process is writing the store {out}; wait for it to finish "
            "(a rerun then resumes or refuses the finished store), or choose another --out"
        )
        assert first.dir.is_dir() and json.loads(first.progress.read_text())["key"] == {"run": "first"}
    finally:
        first.discard()
        first.close()
    assert main(["store", "synth", "--out", str(out), "--level", "3", "--cells", "10"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "a lock file or work folder left behind"


def test_an_out_below_a_file_is_one_sentence(capsys, tmp_path) -> None:
    (tmp_path / "afile").write_text("keep me")
    out = tmp_path / "afile" / "store"
    line = _fails(capsys, ["store", "synth", "--out", str(out), "--level", "3", "--cells", "10"])
    assert (
        line
        == f"soundscape store: {out.parent} is a file, not a folder, so {out} cannot be written; choose another --out"
    )
    assert (tmp_path / "afile").read_text() == "keep me"

"""The `soundscape` command against hostile input: paths that hold something else, damaged files,
values out of range and writers that collide. Each case exits 2 with one sentence and leaves
what was already stored as it was."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import precompute_args
from tests.test_cli import _fails

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("trained_parts", [False, True])
def test_export_never_replaces_what_is_not_a_bundle(capsys, tmp_path, trained_parts) -> None:
    """`export --out` naming a store (or any folder of other files) once replaced it with a bundle."""
    store = tmp_path / "store"
    (store / "levels").mkdir(parents=True)
    (store / "manifest.json").write_text('{"format_version": 3}', encoding="utf-8")
    argv = ["export", "--config", str(ROOT / "configs/tiny.yaml"), "--out", str(store)]
    line = _fails(capsys, [*argv, *(["--trained-parts"] if trained_parts else [])])
    assert f"--out {store} holds something other than" in line and "choose another --out" in line
    assert sorted(p.name for p in store.iterdir()) == ["levels", "manifest.json"]
    assert (store / "manifest.json").read_text(encoding="utf-8") == '{"format_version": 3}'


def test_export_out_that_is_a_file_is_one_sentence(capsys, tmp_path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me", encoding="utf-8")
    line = _fails(capsys, ["export", "--config", str(ROOT / "configs/tiny.yaml"), "--out", str(target)])
    assert line == f"soundscape export: --out {target} is a file, not a folder; choose another --out"
    assert target.read_text(encoding="utf-8") == "keep me"


def test_export_metrics_that_are_not_json_is_one_sentence(capsys, tmp_path) -> None:
    metrics = tmp_path / "test.json"
    metrics.write_text("R@10% 0.5\n", encoding="utf-8")
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
        assert first.dir.is_dir() and json.loads(first.progress.read_text(encoding="utf-8"))["key"] == {"run": "first"}
    finally:
        first.discard()
        first.close()
    assert main(["store", "synth", "--out", str(out), "--level", "3", "--cells", "10"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "a lock file or work folder left behind"


def test_an_out_below_a_file_is_one_sentence(capsys, tmp_path) -> None:
    (tmp_path / "afile").write_text("keep me", encoding="utf-8")
    out = tmp_path / "afile" / "store"
    line = _fails(capsys, ["store", "synth", "--out", str(out), "--level", "3", "--cells", "10"])
    assert (
        line
        == f"soundscape store: {out.parent} is a file, not a folder, so {out} cannot be written; choose another --out"
    )
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize(
    "argv, out, folder",
    [
        (["evaluate", "--checkpoint", "best.pt", "--out"], "afile/x.json", "afile"),
        (["corpus", "build", "--imagery", "{tmp}/img.tif", "--out"], "afile", "afile"),
        (["demo", "--build-only", "--data-dir"], "afile/x", "afile/x"),
        (["train", "--config", str(ROOT / "configs/tiny.yaml"), "--out"], "afile/x", "afile/x"),
    ],
    ids=["evaluate", "corpus build", "demo", "train"],
)
def test_a_folder_that_a_file_is_in_the_way_of_is_one_sentence(capsys, tmp_path, argv, out, folder) -> None:
    """Each said "[Errno 17] File exists: 'afile'"; corpus build first built a 19 MB GeoTIFF."""
    afile = tmp_path / "afile"
    afile.write_text("keep me", encoding="utf-8")
    line = _fails(capsys, [*(a.format(tmp=tmp_path) for a in argv), str(tmp_path / out)])
    option = argv[-1]
    assert line == (
        f"soundscape {argv[0]}: cannot create the folder {tmp_path / folder} ({option}): {afile} is a file; "
        f"choose another {option}"
    )
    assert afile.read_text(encoding="utf-8") == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_precompute_names_the_missing_options_once(capsys, tmp_path) -> None:
    """The sentence began "soundscape precompute: soundscape precompute needs"."""
    line = _fails(capsys, ["precompute", "--imagery", str(tmp_path / "x.tif"), "--levels", "3"])
    assert line == "soundscape precompute: missing --bundle, --out: an embedding run needs all three (see --help)"


def _synth_store(path: Path) -> Path:
    assert main(["store", "synth", "--out", str(path), "--level", "3", "--cells", "10"]) == 0
    return path


def _lie(store: Path, change) -> None:
    """Rewrite the store's manifest with `change` applied and the id recomputed (a manifest that
    lies consistently: only its types and values can tell)."""
    from store.format import content_id

    manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
    change(manifest)
    manifest["id"] = content_id(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda m: m["levels"]["3"].update(fusions="month"), "level '3' has 'fusions' that is not a list"),
        (lambda m: m["levels"]["3"].update(fusions=["hourly"]), None),  # a kind of a newer version: left unread
        (lambda m: m["levels"]["3"].update(s_range=[1.0]), "level '3' has an 's_range' that is not 2 finite numbers"),
        (lambda m: m["levels"]["3"].update(index=None), "level '3' has an 'index' without its 'kind'"),
        (lambda m: m["levels"]["3"].update(files={"mu.npy": 5}), "level '3' has 'files' that are not names"),
        (lambda m: m["levels"]["3"].update(skipped="none"), "level '3' has a 'skipped' that is not a count"),
        (lambda m: m.update(attribution="NASA"), "'attribution' is not an object"),
        (lambda m: m.update(plan=[3]), "'plan' is not an object"),
        (lambda m: m.update(run="today"), "'run' is not an object"),
        (lambda m: m.update(shard=[2, 2]), "'shard' is not [i, n] with 0 <= i < n"),
        (lambda m: m.update(bundle_id=7), "'id' and 'bundle_id' are not texts"),
    ],
)
@pytest.mark.parametrize("command", ["verify", "info"])
def test_a_manifest_with_ill_typed_keys_is_one_sentence(capsys, tmp_path, command, change, says) -> None:
    """Such manifests were KeyError, TypeError or ValueError tracebacks in `store verify` and
    `store info` (and, for s_range and attribution, in anything that opened the store)."""
    store = _synth_store(tmp_path / "store")
    capsys.readouterr()
    _lie(store, change)
    if says is None:
        assert main(["store", command, str(store)]) == 0
        return
    line = _fails(capsys, ["store", command, str(store)])
    assert line.startswith(f"soundscape store: {store / 'manifest.json'}: ")
    assert says in line and line.endswith("the store is damaged; rebuild it")


def test_store_info_describes_a_level_without_index_facts(capsys, tmp_path) -> None:
    store = _synth_store(tmp_path / "store")
    _lie(store, lambda m: m["levels"]["3"].pop("index"))
    capsys.readouterr()
    assert main(["store", "info", str(store)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("no index recorded / -")
    _lie(store, lambda m: m["levels"]["3"].update(index={"kind": "ivf-flat-ip", "nprobe": 2}))
    assert main(["store", "info", str(store)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("ivf-flat-ip (nprobe 2) / -")


@pytest.fixture(scope="module")
def shards(imagery_path, bundle_path, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("shards")
    paths = [root / f"shard{i}" for i in range(2)]
    for i, path in enumerate(paths):
        argv = precompute_args(imagery_path, bundle_path, "4", path, "--shard", f"{i}/2", "--batch-size", "16")
        assert main([*argv, "--quiet"]) == 0
    return paths


def _damage_copy(shard: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / shard.name
    shutil.copytree(shard, copy)
    damage(copy / "levels" / "04")
    return copy


def _flip_last_byte(level: Path) -> None:
    data = bytearray((level / "mu.npy").read_bytes())
    data[-1] ^= 0x01  # a float16's high mantissa bit: still a finite number, only its checksum tells
    (level / "mu.npy").write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, says",
    [
        (_flip_last_byte, "mu.npy does not match its checksum"),
        (lambda level: os.truncate(level / "sat.npy", (level / "sat.npy").stat().st_size - 10), "truncated?"),
        (lambda level: (level / "lonlat.npy").unlink(), "lonlat.npy is missing"),
    ],
)
def test_merge_refuses_a_damaged_shard(capsys, tmp_path, shards, damage, says) -> None:
    """A shard whose bytes changed was merged into a store that `store verify` then passed (its
    checksums were computed afresh over the damage); a truncated one was a ValueError traceback."""
    damaged = _damage_copy(shards[1], tmp_path, damage)
    capsys.readouterr()
    line = _fails(capsys, ["precompute", "merge", str(shards[0]), str(damaged), "--out", str(tmp_path / "merged")])
    assert line.startswith(f"soundscape precompute: shard {damaged} is damaged (") and says in line
    assert line.endswith("run its precompute --shard again")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(
    "section, key, value, says",
    [
        ("train", "steps", -5, "`train.steps` should be greater than or equal to 1, not -5"),  # trained nothing, exit 0
        (
            "train",
            "batch_size",
            0,
            "`train.batch_size` should be greater than or equal to 1, not 0",
        ),  # ZeroDivisionError
        ("train", "lr", float("nan"), "`train.lr` should be a finite number, not nan"),  # torch's ValueError
        ("train", "lr", -1.0, "`train.lr` should be greater than 0, not -1.0"),
        ("train", "log_every", 0, "`train.log_every` should be greater than or equal to 1, not 0"),
        ("train", "checkpoint_every", 0, "`train.checkpoint_every` should be greater than or equal to 1, not 0"),
        ("train", "betas", [0.9, 1.5], "`train.betas.1` should be less than 1, not 1.5"),
        ("model", "embed_dim", 0, "`model.embed_dim` should be greater than or equal to 1, not 0"),  # exit 0
    ],
)
def test_train_refuses_numbers_a_key_cannot_mean(capsys, tmp_path, section, key, value, says) -> None:
    import yaml

    config = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text(encoding="utf-8"))
    config[section][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    line = _fails(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress"])
    assert line == f"soundscape train: {says}"
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_zero_patch(capsys, tmp_path) -> None:
    """model.image.patch 0 was a ZeroDivisionError traceback once the model was built."""
    import yaml

    config = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text(encoding="utf-8"))
    config["model"]["image"]["patch"] = 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    line = _fails(capsys, ["export", "--config", str(path), "--out", str(tmp_path / "bundle")])
    assert line == "soundscape export: `model.image.patch` should be greater than or equal to 1, not 0"


def _refused(capsys, argv: list[str]) -> str:
    """Run the command, expect argparse's refusal of an argument (exit code 2); its sentence."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "option, says",
    [
        (["--batch-size", "0"], "argument --batch-size: must be an integer of at least 1, not '0'"),  # was the default
        (["--readers", "0"], "argument --readers: must be an integer of at least 1, not '0'"),  # likewise
        (["--max-upsample", "nan"], "argument --max-upsample: must be a number above 0, not 'nan'"),
        (["--max-upsample", "-1"], "argument --max-upsample: must be a number above 0, not '-1'"),
        (
            ["--index-flat-max", "-5"],
            "argument --index-flat-max: must be an integer of at least 0 (0: every level gets an IVF index), not '-5'",
        ),
        (["--ray-workers", "0"], "argument --ray-workers: must be an integer of at least 1, not '0'"),
    ],
)
def test_precompute_refuses_numbers_an_option_cannot_mean(capsys, tmp_path, option, says) -> None:
    argv = ["precompute", "--imagery", str(tmp_path / "x.tif"), "--bundle", str(tmp_path / "b"), "--levels", "3"]
    assert _refused(capsys, [*argv, "--out", str(tmp_path / "store"), *option]).endswith(says)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text", ["\u0663", "1_0", "0x10", "9" * 5000, "", "1.0"])
def test_an_integer_option_takes_ascii_digits_only(capsys, tmp_path, text) -> None:
    """int() read '\u0663' (Arabic-Indic three) as 3, so `serve --port \u0663` served on port 3, and
    '1_0' as 10; 5000 digits was argparse's 'invalid parse value' without the option's range."""
    argv = ["precompute", "--imagery", str(tmp_path / "x.tif"), "--bundle", str(tmp_path / "b"), "--levels", "3"]
    line = _refused(capsys, [*argv, "--out", str(tmp_path / "store"), "--readers", text])
    assert line.endswith(f"argument --readers: must be an integer of at least 1, not {text!r}")


@pytest.mark.parametrize("text", ["\u0661.\u0665", "1_0.5", "0x1p3", "1e400"])
def test_a_number_option_takes_ascii_digits_only(capsys, tmp_path, text) -> None:
    """float() read '\u0661.\u0665' as 1.5 and '1_0.5' as 10.5."""
    argv = ["precompute", "--imagery", str(tmp_path / "x.tif"), "--bundle", str(tmp_path / "b"), "--levels", "3"]
    line = _refused(capsys, [*argv, "--out", str(tmp_path / "store"), "--max-upsample", text])
    assert line.endswith(f"argument --max-upsample: must be a number above 0, not {text!r}")


def test_integer_and_number_options_take_what_people_type(capsys, tmp_path) -> None:
    from runtime.arguments import integer_in, number_above

    assert [integer_in(1)(t) for t in ("7", " 7 ", "+7", "007")] == [7, 7, 7, 7]
    assert [number_above(0)(t) for t in ("2", "2.5", ".5", "5.", "1e3", " 2 ")] == [2, 2.5, 0.5, 5, 1000, 2]


def test_synth_refuses_a_negative_index_threshold(capsys, tmp_path) -> None:
    argv = ["store", "synth", "--out", str(tmp_path / "s"), "--level", "3", "--cells", "10", "--index-flat-max", "-1"]
    assert _refused(capsys, argv).endswith(
        "argument --index-flat-max: must be an integer of at least 0 (0: every level gets an IVF index), not '-1'"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "place, says",
    [
        (["--lat", "1000", "--lon", "0"], "argument --lat: must be a latitude from -90 to 90, not '1000'"),
        (["--lat", "nan", "--lon", "0"], "argument --lat: must be a latitude from -90 to 90, not 'nan'"),
        (["--lat", "1_0", "--lon", "0"], "argument --lat: must be a latitude from -90 to 90, not '1_0'"),
        (["--lat", "10", "--lon=-inf"], "argument --lon: must be a longitude from -180 to 180, not '-inf'"),
        (["--lat", "10", "--lon", "0", "--month", "13"], "argument --month: must be an integer from 1 to 12, not '13'"),
        (
            ["--lat", "10", "--lon", "0", "--hour", "-1"],
            "argument --hour: must be a local hour of 0 or more and below 24 (17.5 is 17:30), not '-1'",
        ),
        (
            ["--lat", "10", "--lon", "0", "--hour", "24"],  # explained as 0 h; every tile route takes 0..23
            "argument --hour: must be a local hour of 0 or more and below 24 (17.5 is 17:30), not '24'",
        ),
    ],
)
def test_corpus_explain_refuses_a_place_or_time_off_the_calendar(capsys, tmp_path, place, says) -> None:
    """lat 1000, month 13 and hour -1 were explained (exit 0) as if they were places and times;
    lat nan was a ValueError traceback from the coast tree; lat 1_0 was read as 10."""
    with pytest.raises(SystemExit) as stopped:
        main(["corpus", "explain", *place, "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    "content", [b"PK\x03\x04" + bytes(996), b"", b"hello"], ids=["cut short", "empty", "another file"]
)
def test_corpus_explain_names_a_damaged_places_file(capsys, tmp_path, content) -> None:
    """A places.npz cut short was a BadZipFile traceback, an empty one EOFError; a build (the
    way the sentence offers) derives it again instead of failing on it too."""
    from corpus.build import held_sources

    places = tmp_path / "places.npz"
    places.write_bytes(content)
    line = _fails(capsys, ["corpus", "explain", "--lat", "45", "--lon", "10", "--out", str(tmp_path)])
    assert line == (
        f"soundscape corpus: {places} cannot be read as the place rasters (cut short, or another file): "
        f"`soundscape corpus build --out {tmp_path}` derives it again"
    )
    assert places.read_bytes() == content and held_sources(places) is None


def test_corpus_build_refuses_a_duration_that_is_no_number_of_seconds(capsys, tmp_path) -> None:
    """--duration nan passed the check (nan <= 0 is false) and died with a traceback after the clip bank was built."""
    with pytest.raises(SystemExit) as stopped:
        main(["corpus", "build", "--out", str(tmp_path / "corpus"), "--duration", "nan"])
    assert stopped.value.code == 2
    assert "argument --duration: must be a number of seconds above 0, not 'nan'" in capsys.readouterr().err
    assert not (tmp_path / "corpus").exists()


def test_a_config_path_through_a_file_or_at_a_folder_is_one_sentence(capsys, tmp_path) -> None:
    """NotADirectoryError and IsADirectoryError were tracebacks (exit 1)."""
    (tmp_path / "afile").write_text("keep me", encoding="utf-8")
    line = _fails(capsys, ["train", "--config", str(tmp_path / "afile" / "c.yaml"), "--out", str(tmp_path / "run")])
    assert line == f"soundscape train: {tmp_path / 'afile' / 'c.yaml'}: part of this path is a file, not a folder"
    line = _fails(capsys, ["train", "--config", str(tmp_path), "--out", str(tmp_path / "run")])
    assert line == f"soundscape train: {tmp_path} is a folder, not a file"


@pytest.mark.parametrize(
    "argv", [["train"], ["evaluate", "--checkpoint", "best.pt"], ["export"]], ids=["train", "evaluate", "export"]
)
def test_a_config_that_is_not_text_is_one_sentence(capsys, tmp_path, argv) -> None:
    """A binary file as --config was a UnicodeDecodeError traceback (exit 1) in each command."""
    config = tmp_path / "bin.yaml"
    config.write_bytes(b"\xff\xfe\x00garbage")
    line = _fails(capsys, [*argv, "--config", str(config), "--out", str(tmp_path / "out")])
    says = f"config file {config} is not a UTF-8 YAML file (a config is text: model:, train:, data:)"
    assert line == f"soundscape {argv[0]}: {says}"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_stdout_is_one_sentence(tmp_path) -> None:
    store = _synth_store(tmp_path / "store")
    code = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"
    with open("/dev/full", "w", encoding="utf-8") as full:
        done = subprocess.run(
            [sys.executable, "-c", code, "store", "info", str(store)],
            cwd=ROOT,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr == "soundscape store: cannot write its output: No space left on device\n"


# Options that have no default to state: one of them must be given (the command says so).
NEEDED = {"--imagery", "--bundle", "--out", "--checkpoint", "--weights", "--config"}


def _every_option(parser=None, name: str = "soundscape"):
    """(command, action) for every option of the CLI and its subcommands."""
    import argparse

    from cli.main import build_parser

    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _every_option(subparser, f"{name} {sub}")
        elif action.option_strings:
            yield name, action


def test_no_option_reads_its_number_with_a_bare_int_or_float() -> None:
    """int() and float() take '1_0' as 10, other scripts' digits and 'nan': `store synth --level
    1_0` wrote a store of level 10 and `corpus explain --lat 1_0` explained latitude 10. Every
    number goes through runtime.arguments, which reads ASCII digits and checks the range."""
    bare = [f"{name} {action.option_strings[-1]}" for name, action in _every_option() if action.type in (int, float)]
    assert not bare


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["store", "synth", "--out", "S", "--level", "1_0", "--cells", "3"],
            "argument --level: must be an integer from 0 to 24, not '1_0'",
        ),
        (
            ["store", "synth", "--out", "S", "--level", "3", "--cells", "0"],
            "argument --cells: must be an integer of at least 1, not '0'",
        ),
        (["precompute", "--nodata", "1_0"], "argument --nodata: must be a number (or nan, inf, -inf), not '1_0'"),
    ],
)
def test_a_number_with_an_underscore_is_refused_by_argparse(capsys, argv, says) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_nodata_takes_the_special_float_values() -> None:
    from runtime.arguments import pixel_value

    assert math.isnan(pixel_value("NaN")) and pixel_value("-inf") == -math.inf and pixel_value(" -9999 ") == -9999


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "precompute", "store", "corpus", "pack"])
def test_every_option_says_its_default(command) -> None:
    """--help of train --stop-after, evaluate --config/--max-samples/--cache-dir, export --metrics,
    precompute --region/--shard/--fusion-budget/--nodata/--licence and store synth --seed said
    what the option does but not what happens without it."""
    silent = [
        f"{name} {action.option_strings[-1]}"
        for name, action in _every_option()
        if name.split()[1:2] == [command]
        and not action.required
        and action.nargs != 0
        and action.option_strings[-1] not in NEEDED
        and "default" not in (action.help or "")
        and "as for precompute" not in (action.help or "")
    ]
    assert not silent, f"options whose --help does not say their default: {silent}"


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["train", "--config", str(ROOT / "configs/tiny.yaml"), "--stop-after", "-1"],
            "argument --stop-after: must be an integer of at least 1, not '-1'",
        ),
        (
            ["evaluate", "--checkpoint", "x.pt", "--max-samples", "0"],
            "argument --max-samples: must be an integer of at least 1, not '0'",
        ),
        (
            ["evaluate", "--checkpoint", "x.pt", "--batch-size", "0"],
            "argument --batch-size: must be an integer of at least 1, not '0'",
        ),
        (
            ["evaluate", "--checkpoint", "x.pt", "--workers", "-1"],
            "argument --workers: must be an integer of at least 0, not '-1'",
        ),
    ],
)
def test_train_and_evaluate_refuse_counts_below_their_floor(capsys, tmp_path, argv, says) -> None:
    """`train --stop-after -1` ran 0 steps and exited 0."""
    assert _refused(capsys, [*argv, "--out", str(tmp_path / "out")]).endswith(says)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, says",
    [
        (["--image-size", "100000"], "argument --image-size: must be an integer from 8 to 1024, not '100000'"),
        (["--image-size", "4"], "argument --image-size: must be an integer from 8 to 1024, not '4'"),
        (["--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295, not '-1'"),
        (["--seed", "4294967296"], "argument --seed: must be an integer from 0 to 4294967295, not '4294967296'"),
        (["--samples", str(10**20)], f"argument --samples: must be an integer from 1 to 1000000, not '{10**20}'"),
        (["--samples", "0"], "argument --samples: must be an integer from 1 to 1000000, not '0'"),
        (["--max-town-layers", "0"], "argument --max-town-layers: must be an integer of at least 1, not '0'"),
        (["--levels", "4-99999999999"], "argument --levels: levels must look like 0-6 or 2,4,5, not '4-99999999999'"),
        (["--levels", "4-13"], "argument --levels: levels must lie in 0..12, got '4-13'"),
        (
            ["--strata", "town=1"],
            "argument --strata: unknown stratum ['town']; choose from ['land', 'coast', 'sea', 'lit']",
        ),
        (["--strata", "land=-1"], 'argument --strata: each share must be a number >= 0 or "area"'),
        (["--strata", "land=nan"], 'argument --strata: each share must be a number >= 0 or "area"'),
        (["--strata", "land=half"], "argument --strata: land: a share is a number or \"area\", not 'half'"),
        (["--strata", "land=0,sea=0"], "argument --strata: the shares must not all be 0"),
        (
            ["--strata", "sea=1,land=area"],
            'argument --strata: the numbered shares must sum to less than 1 to leave the "area" strata some',
        ),
        (
            ["--strata", "land=1,land=2"],
            "argument --strata: expected NAME=SHARE pairs, each stratum once (e.g. land=0.5,lit=area), "
            "not 'land=1,land=2'",
        ),
    ],
)
def test_corpus_build_refuses_sizes_before_any_work(capsys, tmp_path, option, says) -> None:
    """--image-size 100000 passed (only >= 8 was checked) and started acquiring the assets, bound
    for 30 GB of memory a cell image; --seed -1 would have failed in numpy after the clip bank;
    --samples 10**20 started extracting 1.4 GB of assets before failing for want of memory."""
    assert _refused(capsys, ["corpus", "build", "--out", str(tmp_path / "corpus"), *option]).endswith(says)
    assert not (tmp_path / "corpus").exists()

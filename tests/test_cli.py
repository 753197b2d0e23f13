"""The `soundscape` command's contract for mistakes: exit code 2 and one sentence on stderr, nothing
printed before it, and no argparse trap for values that start with a minus."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cli.main import COMMANDS, build_parser, join_negative_values, main
from tests.conftest import precompute_args

ROOT = Path(__file__).resolve().parent.parent


def _fails(capsys, argv: list[str]) -> str:
    """Run the command, expect exit code 2 and one line on stderr (and nothing on stdout); that line."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "", f"printed before failing: {out!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_bundle_given_as_store_is_named(capsys, bundle_path) -> None:
    line = _fails(capsys, ["serve", "--bundle", str(bundle_path), "--store", str(bundle_path)])
    assert f"{bundle_path} is a model bundle, not an embedding store" in line
    assert "format" not in line and "rebuild" not in line


def test_bundle_given_to_store_info_is_named(capsys, bundle_path) -> None:
    assert "is a model bundle, not an embedding store" in _fails(capsys, ["store", "info", str(bundle_path)])


def test_a_precision_the_bundle_lacks_is_named(capsys, bundle_path, store_path) -> None:
    line = _fails(capsys, ["serve", "--bundle", str(bundle_path), "--store", str(store_path), "--precision", "fp16"])
    assert f"bundle {bundle_path} has no fp16 graphs: choose one of fp32, int8" in line


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("files", [], "files must be an object of file names and their sha256"),  # AttributeError
        ("files", None, "files must be an object of file names and their sha256"),  # TypeError
        ("files", {"fuse.onnx": 5}, "files must be an object of file names and their sha256"),
        ("precisions", "fp32", "precisions must be a list of names (fp32, fp16, int8) that holds fp32"),  # none offered
        ("precisions", [], "precisions must be a list of names (fp32, fp16, int8) that holds fp32"),
        ("precisions", None, "precisions must be a list of names (fp32, fp16, int8) that holds fp32"),
    ],
)
def test_a_bundle_manifest_with_ill_typed_keys_is_one_sentence(
    capsys, tmp_path, bundle_path, store_path, key, value, says
):
    """`files` as [] or null were AttributeError and TypeError tracebacks; `precisions` as a string
    refused fp32 offering no precision at all ("choose one of  (...")."""
    from runtime.bundle import content_id

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_path, copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest[key] = value
    manifest["id"] = content_id(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    line = _fails(capsys, ["serve", "--bundle", str(copy), "--store", str(store_path)])
    assert (
        line
        == f"soundscape serve: bundle manifest {copy / 'manifest.json'} is damaged: {says}; export the bundle again"
    )


def test_a_bundle_or_store_that_is_not_there_is_named(capsys, tmp_path, store_path) -> None:
    """Both said the path 'has no manifest.json', as if it were a folder of something else."""
    line = _fails(capsys, ["serve", "--bundle", str(tmp_path / "nowhere"), "--store", str(store_path)])
    assert line == f"soundscape serve: {tmp_path / 'nowhere'} is not a model bundle: it does not exist"
    line = _fails(capsys, ["store", "info", str(tmp_path / "nowhere")])
    assert line == f"soundscape store: {tmp_path / 'nowhere'} is not an embedding store: it does not exist"


def test_store_given_as_bundle_is_named(capsys, store_path) -> None:
    line = _fails(capsys, ["serve", "--bundle", str(store_path), "--store", str(store_path)])
    assert f"{store_path} is an embedding store, not a model bundle" in line


@pytest.mark.parametrize("levels, hint", [("9-3", "write 3-9"), ("2,7-5", "write 5-7")])
def test_reversed_levels_say_so(capsys, tmp_path, imagery_path, bundle_path, levels, hint) -> None:
    line = _fails(
        capsys,
        precompute_args(imagery_path, bundle_path, levels, tmp_path / "store"),
    )
    assert "run from high to low" in line and hint in line
    assert "0..24" not in line
    assert not (tmp_path / "store").exists()


def test_levels_out_of_range_still_name_the_range(capsys, tmp_path, imagery_path, bundle_path) -> None:
    line = _fails(
        capsys,
        precompute_args(imagery_path, bundle_path, "3-30", tmp_path / "store"),
    )
    assert "must lie in 0..24" in line


def test_port_in_use_is_one_sentence_before_the_banner(capsys, bundle_path, store_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = _fails(capsys, ["serve", "--bundle", str(bundle_path), "--store", str(store_path), "--port", str(port)])
    assert line == (
        f"soundscape serve: port {port} on 127.0.0.1 is already in use: stop what listens there or pass another --port"
    )


def test_unusable_host_is_one_sentence(capsys, bundle_path, store_path) -> None:
    line = _fails(capsys, ["serve", "--bundle", str(bundle_path), "--store", str(store_path), "--host", "192.0.2.1"])
    assert "cannot listen on 192.0.2.1:8000" in line and "check --host and --port" in line


@pytest.mark.parametrize("argv", [["--bbox", "-10,30,40,60"], ["--bbox=-10,30,40,60"], ["--bbox", "-10.5,30,40,60"]])
def test_bbox_may_start_with_a_minus(argv) -> None:
    args = build_parser().parse_args(join_negative_values(["precompute", *argv, "--levels", "3"]))
    assert args.bbox.startswith("-10") and args.bbox.endswith(",30,40,60")
    assert args.levels == "3"


def test_negative_values_are_joined_only_to_options() -> None:
    assert join_negative_values(["precompute", "--nodata", "-9999", "--overwrite", "--", "-5"]) == [
        "precompute",
        "--nodata=-9999",
        "--overwrite",
        "--",
        "-5",
    ]
    assert join_negative_values(["-v", "serve", "--port", "8000"]) == ["-v", "serve", "--port", "8000"]


def test_precompute_dry_run_takes_a_negative_bbox(capsys, imagery_path, bundle_path, tmp_path) -> None:
    """End to end: the bbox starting with a minus reaches the plan (west of Greenwich, in the fixture)."""
    assert (
        main(
            precompute_args(
                imagery_path, bundle_path, "4", tmp_path / "store", "--bbox", "-10,35,5,50", "--dry-run", "--quiet"
            )
        )
        == 0
    )
    from precompute.run import make_plan
    from runtime.imagery import Imagery

    cells = len(make_plan(Imagery(imagery_path), [4], (-10.0, 35.0, 5.0, 50.0)).level(4))
    assert cells > 0
    out = capsys.readouterr().out
    assert f"{4:>5} {cells:>12,}" in out.splitlines(), out
    assert not (tmp_path / "store").exists()


@pytest.mark.slow  # the demo loads the packaged towers (~20 s) before it first writes
def test_unwritable_data_folder_is_one_sentence() -> None:
    """A container's bind mount owned by another user: `soundscape demo` on a folder it cannot write
    (as root, without the capability that overrides permission bits, so they apply)."""
    data = Path(tempfile.mkdtemp(prefix="unwritable-"))
    try:
        data.chmod(0o555)
        unprivileged = ["setpriv", "--bounding-set", "-dac_override"] if os.geteuid() == 0 else []
        code = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"
        result = subprocess.run(
            [*unprivileged, sys.executable, "-c", code, "demo", "--data-dir", str(data), "--build-only"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        data.chmod(0o755)
        shutil.rmtree(data)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"soundscape demo: permission denied on {data}"), result.stderr


def test_demo_checks_the_port_before_building(capsys, tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = _fails(capsys, ["demo", "--data-dir", str(tmp_path / "demo"), "--port", str(port)])
    assert line.startswith(f"soundscape demo: port {port} on 127.0.0.1 is already in use")
    assert not (tmp_path / "demo").exists(), "built before finding the port taken"


def test_a_bug_keeps_its_traceback(tmp_path) -> None:
    """A bare ValueError is a bug, not a user's mistake: exit code 1 with the traceback, not exit 2."""
    code = (
        "import sys\n"
        "import precompute.commands\n"
        "def broken(path):\n"
        "    raise ValueError('a bug in the code')\n"
        "precompute.commands.Store = broken\n"
        "from cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "store", "info", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and "ValueError: a bug in the code" in result.stderr


def test_a_user_error_from_any_layer_is_one_sentence(capsys, tmp_path) -> None:
    """A store path that is no store: store/ raises StoreError, a UserError, so exit 2 and one line."""
    line = _fails(capsys, ["store", "info", str(tmp_path)])
    assert line.startswith("soundscape store: ") and "is not an embedding store" in line


@pytest.mark.parametrize(
    "option, says, parts",
    [
        ("radio=a radio broadcast", "source description(s) of radio: the model's sources are demo", False),
        ("radio=a radio broadcast", "source description(s) of radio: the model's sources are demo", True),
        ("demo", "--source-description takes NAME=TEXT", False),
        ("=no name", "--source-description takes NAME=TEXT", False),
    ],
)
def test_export_refuses_a_source_description_it_cannot_record(capsys, tmp_path, option, says, parts) -> None:
    argv = ["export", "--config", str(ROOT / "configs/tiny.yaml"), "--source-description", option]
    argv += ["--trained-parts"] if parts else []
    line = _fails(capsys, [*argv, "--out", str(tmp_path / "bundle")])
    assert says in line
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    "options, says",
    [
        (["--example", ""], "--example '': text must not be empty (e.g. birdsong)"),
        (["--example", "bird\x07song"], "--example 'bird\\x07song': text holds a control character (U+0007)"),
        (["--example", "\u00bf?"], "--example '\u00bf?' holds no word the text model knows"),
        (["--example", "x" * 501], "text must be at most 500 characters"),
        (
            ["--source-description", "demo=a", "--source-description", "demo=b"],
            "--source-description gives 'demo' twice: give each source one description",
        ),
    ],
)
@pytest.mark.parametrize("parts", [False, True])
def test_export_refuses_an_example_the_server_would_refuse(capsys, tmp_path, options, says, parts) -> None:
    """`--example ''` was recorded and offered by serve's banner as a link that answered 422; of
    two descriptions of one source the last was kept silently."""
    argv = ["export", "--config", str(ROOT / "configs/tiny.yaml"), *options, *(["--trained-parts"] if parts else [])]
    line = _fails(capsys, [*argv, "--out", str(tmp_path / "bundle")])
    assert says in line
    assert not (tmp_path / "bundle").exists()


def test_a_random_weights_export_records_its_config_and_is_scored_as_it_says(tmp_path, bundle_path) -> None:
    """`export --config` records the config as a checkpoint's export does (docs/bundle.md), so an
    InfoNCE config's bundle is scored by cosine, not CSD as a PCME++ model's (the session's
    bundle) is. One export: each takes about 20 s."""
    import yaml

    from runtime.scoring import COSINE, CSD, scoring_kind

    config = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text(encoding="utf-8"))
    config["train"]["loss"] = {"kind": "infonce"}
    path = tmp_path / "infonce.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["export", "--config", str(path), "--out", str(tmp_path / "infonce")]) == 0
    manifest = json.loads((tmp_path / "infonce" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["training"]["config"]["model"]["embed_dim"] == 32
    assert manifest["training"]["config_path"] == str(path)
    assert manifest["training"]["config"]["train"]["loss"]["kind"] == "infonce"
    assert scoring_kind(manifest) == COSINE
    assert scoring_kind(json.loads((bundle_path / "manifest.json").read_text(encoding="utf-8"))) == CSD


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _command_lines(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """Each command of `parser` and its line in the help."""
    return {choice.dest: choice.help for choice in _commands(parser)._choices_actions}


def test_the_help_lists_every_command_as_its_module_defines_it():
    """`soundscape --help` lists the commands from cli.main.COMMANDS without importing their
    modules: each line is the one the module's own parser gives, in the same order."""
    assert _command_lines(build_parser("")) == _command_lines(build_parser())
    for command in COMMANDS:  # run (or asked about), a command's module adds it in full
        assert _command_lines(build_parser(command)) == _command_lines(build_parser())
        assert len(_commands(build_parser(command)).choices[command]._actions) > 1, (
            f"{command}: its options or subcommands, not a name alone"
        )


def test_help_and_a_command_import_only_what_they_need():
    """The help imports no command's module (it took 1.1 s to import them all), and a command its
    own alone."""
    modules = sorted({module for module, _ in COMMANDS.values()})
    probe = (
        "import sys; from cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {modules!r} if m in sys.modules])"
    )
    for argv, imported in ((["--help"], []), (["corpus", "--help"], ["corpus.commands"])):
        out = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == repr(imported), out.stdout[-500:]

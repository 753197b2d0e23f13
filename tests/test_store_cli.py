"""`soundscape precompute` and `soundscape store`: each command's --help says what it does and
what each argument takes, and a bad argument is one sentence and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from cli.main import build_parser

COMMANDS = [("precompute",), ("precompute", "merge"), ("store", "info"), ("store", "verify"), ("store", "synth")]


def _parser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_each_command_says_what_it_does_and_what_each_argument_takes(path):
    parser = _parser(path)
    assert parser.description, f"soundscape {' '.join(path)} --help has no description"
    vague = [
        a.dest
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        and (not a.help or a.help.startswith("as for"))
    ]
    assert not vague, f"soundscape {' '.join(path)} --help leaves {vague} unexplained"


@pytest.mark.parametrize(
    "argv, said",
    [
        (["store", "synth", "--level", "5", "--cells", "10", "--seed", "-1"], "--seed"),
        (["store", "synth", "--level", "5", "--cells", "10", "--seed", "99999999999999999999"], "--seed"),
        (["store", "synth", "--level", "5", "--cells", "ten"], "--cells"),
        (["store", "synth", "--level", "five", "--cells", "10"], "--level"),
    ],
)
def test_a_bad_synth_argument_is_one_sentence(argv, said, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *argv, "--out", str(tmp_path / "s")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert said in done.stderr.strip().splitlines()[-1], done.stderr  # the usage, then one sentence
    assert not (tmp_path / "s").exists()


def test_export_refuses_a_seed_torch_cannot_take(tmp_path):
    """`export --config C --seed 99999999999999999999` was a traceback from torch.manual_seed."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "export",
            "--config",
            "configs/demo.yaml",
            "--seed",
            "99999999999999999999",
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "argument --seed: must be an integer from 0 to" in done.stderr, done.stderr
    assert not (tmp_path / "b").exists()

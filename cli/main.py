"""Entry point of the `soundscape` console command."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from cli import demo
from cli.errors import run_reporting_errors
from corpus import commands as corpus_commands
from model import commands as model_commands
from precompute import commands as precompute_commands
from server import commands as server_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundscape",
        description="Soundscape tiles: soundscape heatmap and uncertainty map tiles from a model "
        "bundle (ONNX) and an embedding store.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_command(sub)
    model_commands.add_commands(sub)
    precompute_commands.add_commands(sub)
    server_commands.add_commands(sub)
    corpus_commands.add_commands(sub)
    return parser


_NEGATIVE = re.compile(r"-\.?\d")  # "-10,30,40,60", "-.5": a value, never one of our options


def join_negative_values(argv: list[str]) -> list[str]:
    """`--bbox -10,30,40,60` as `--bbox=-10,30,40,60`: argparse takes a value starting with a minus
    for an option unless it is a single plain number, and no option of ours starts with a digit."""
    out: list[str] = []
    for arg in argv:
        if out and _NEGATIVE.match(arg) and out[-1].startswith("--") and out[-1] != "--" and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_reporting_errors(args.command, lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())

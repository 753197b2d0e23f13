"""Entry point of the `soundscape` console command."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from cli.errors import run_reporting_errors

# Every command: the module that defines it (its `add_commands(sub)`) and its line in
# `soundscape --help`. Only the module of the command run is imported: importing all of them
# (torch-free, but numpy, scipy, rasterio, FastAPI, onnxruntime) took 1.1 s of every start.
COMMANDS = {
    "demo": ("cli.demo", "build the demo world if missing, then serve it"),
    "train": ("model.commands", "train a PSM model from a config (model:, train:, data: sections)"),
    "evaluate": ("model.commands", "retrieval metrics of a checkpoint (R@10%%, median rank) as JSON"),
    "export": ("model.commands", "write a model bundle (4 ONNX graphs + manifest) from a checkpoint or a config"),
    "precompute": ("precompute.commands", "embed imagery cells into a store for a bundle (and merge shard stores)"),
    "store": ("precompute.commands", "describe or verify an embedding store"),
    "serve": ("server.commands", "serve heatmap and uncertainty tiles"),
    "pack": (
        "server.commands",
        "write a map's tiles into one MBTiles or PMTiles file, or its values into a GeoTIFF, for offline use",
    ),
    "corpus": ("corpus.commands", "build the demo world's training corpus from public assets"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `command`, the commands of its module in full and the
    others by name and help line alone (argparse reads a command's arguments only when it runs)."""
    parser = argparse.ArgumentParser(
        prog="soundscape",
        description="Soundscape tiles: soundscape heatmap and uncertainty map tiles from a model "
        "bundle (ONNX) and an embedding store.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if command is None else COMMANDS.get(command, ("",))[0]  # "": no module in full
    loaded: set[str] = set()
    for name, (module, line) in COMMANDS.items():
        if wanted is not None and module != wanted:
            sub.add_parser(name, help=line)
        elif module not in loaded:
            importlib.import_module(module).add_commands(sub)
            loaded.add(module)
    return parser


def chosen_command(argv: list[str]) -> str:
    """The command `argv` runs (its first word that names one), or "" when none does (help, or a
    mistyped command, which the parser refuses with the list)."""
    return next((arg for arg in argv if arg in COMMANDS), "")


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
    words = join_negative_values(sys.argv[1:] if argv is None else argv)
    args = build_parser(chosen_command(words)).parse_args(words)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_reporting_errors(args.command, lambda: args.handler(args), resumes=getattr(args, "resumes", False))


if __name__ == "__main__":
    sys.exit(main())

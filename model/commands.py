"""`soundscape train`, `evaluate` and `export`. torch is imported only when a command runs, so
listing commands (and serving) needs no torch."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from model.config import ConfigError
from runtime.arguments import integer_in, seed_argument
from runtime.contract import GRAPH_FILES, MANIFEST_FILE, RECORD_FILE
from runtime.errors import UsageError
from runtime.files import file_sha256, make_folder

if TYPE_CHECKING:  # model.stopping loads torch (model.distributed): the CLI starts without it
    from model.stopping import Interrupted

log = logging.getLogger(__name__)


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping of a config: PyYAML kept the last silently, so a pasted
    `steps: 3` above `steps: 40` trained 40 steps."""


class ConfigLoader(yaml.SafeLoader):
    """YAML as configs are written: `lr: 3e-3` is a float, as YAML 1.2 and the docs read it (YAML
    1.1, PyYAML's, wants a dot, `3.0e-3`, and took 3e-3 for the text '3e-3', which a float key
    refused); a key given twice in one mapping is refused (DuplicateKey)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)


def _refuse_duplicate_keys(node: yaml.Node, where: str, seen: set[int]) -> None:
    """DuplicateKey naming the first key of `node` (or of a mapping under it) given twice, with its
    dotted path and both lines; `<<` merges are YAML's own way to override and are left alone.
    `seen` holds the nodes walked already (an alias may point back at its own mapping)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, where, seen)
    if not isinstance(node, yaml.MappingNode):
        return
    lines: dict[str, int] = {}
    for key, value in node.value:
        name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
        if name is not None and key.tag != "tag:yaml.org,2002:merge":
            path = f"{where}.{name}" if where else name
            line = key.start_mark.line + 1
            if name in lines:
                raise DuplicateKey(f"`{path}` is given twice (lines {lines[name]} and {line}); keep one")
            lines[name] = line
            _refuse_duplicate_keys(value, path, seen)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_config(path: str | Path) -> dict:
    """A YAML config file as a dict of sections; a sentence-long error when unreadable."""
    try:
        config = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=ConfigLoader)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except DuplicateKey as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not a UTF-8 YAML file (a config is text: model:, train:, data:)"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model:, train:, data:)")
    return config


def _run_config(path: str | Path):
    """The run config of a file, its data paths made absolute against the file's folder."""
    from model.data import resolve_paths
    from model.train import RunConfig

    config = load_config(path)
    if isinstance(config.get("data"), dict):
        config["data"] = resolve_paths(config["data"], Path(path).resolve().parent)
    return RunConfig.from_dict(config)


def _train(args: argparse.Namespace) -> int:
    from model.distributed import check_cpus, check_gpus, cpu_cores, exit_rank, gpus, launch, processes
    from model.train import check_run_dir

    if args.processes > 1:
        check_gpus(args.processes, gpus())
        check_cpus(args.processes, gpus(), cpu_cores())
        check_run_dir(_run_out(args), args.resume)  # once, before the ranks start
        return launch(args.processes, _rank_command(args))
    code = _train_here(args)
    if processes() > 1:  # a rank of torchrun's (or of --processes) that trained, or stopped on a signal
        exit_rank(code)
    return code


def _train_here(args: argparse.Namespace) -> int:
    """Train in this process: alone, or as one rank of a multi-process run."""
    from model.distributed import machines, main_process, processes
    from model.stopping import Interrupted, calm_after_stop
    from model.train import fit

    config = _run_config(args.config)
    out = _run_out(args)
    with calm_after_stop(announce=main_process()):
        try:
            result = fit(
                config,
                out,
                resume=args.resume,
                stop_after=args.stop_after,
                progress=not args.no_progress,
                init_from=args.init_from,
            )
        except Interrupted as stop:
            if main_process():
                print(
                    f"soundscape train: {_interrupted(stop, args.config, out, processes(), machines())}",
                    file=sys.stderr,
                )
            return stop.exit_code
    best = result.best_metrics or {}
    summary = ", ".join(f"{k} {v:.4g}" for k, v in best.items() if k != "gallery")
    print(
        f"run {out}: {result.last_step} steps{' (stopped early)' if result.stopped_early else ''}; "
        f"best validation at step {result.best_step}: {summary or 'none'}; "
        + (
            f"{result.skipped_files} unreadable sample(s) skipped ({result.skipped} substitution(s)), "
            f"listed in {out / 'skipped.tsv'}"
            if result.skipped_files
            else "no unreadable samples"
        )
    )
    return 0


def _run_out(args: argparse.Namespace) -> Path:
    """The run folder of `train`: --out, or runs/<config name>."""
    return Path(args.out or Path("runs") / Path(args.config).stem)


def _rank_command(args: argparse.Namespace) -> list[str]:
    """The command line of `soundscape train --processes N` that each of its ranks runs: the same
    options, without --processes."""
    options = {
        "--config": args.config,
        "--out": args.out,
        "--init-from": args.init_from,
        "--stop-after": args.stop_after,
    }
    flags = {"--resume": args.resume, "--no-progress": args.no_progress}
    return [
        *(["--verbose"] if args.verbose else []),
        "train",
        *[item for option, value in options.items() if value is not None for item in (option, str(value))],
        *[flag for flag, given in flags.items() if given],
    ]


def _interrupted(stop: Interrupted, config: str, out: Path, processes: int = 1, machines: int = 1) -> str:
    """The sentence a stopped run of `processes` ranks on `machines` ends with: what it saved and
    how to go on (ranks on several machines are started there by the user's own torchrun)."""
    if stop.step is None:
        return (
            f"stopped by {stop} before its first step; nothing was saved (a last.pt already in {out} is as "
            "it was): run the same command again"
        )
    if machines > 1:
        return (
            f"stopped by {stop} at step {stop.step}, saved in {out / 'last.pt'}; continue exactly by running "
            f"the same torchrun command on each of the {machines} machines with "
            f"`-m cli.main train --config {config} --out {out} --resume`"
        )
    launch = f"soundscape train --processes {processes}" if processes > 1 else "soundscape train"
    return (
        f"stopped by {stop} at step {stop.step}, saved in {out / 'last.pt'}; continue exactly with "
        f"`{launch} --config {config} --out {out} --resume`"
    )


def _evaluate(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate_checkpoint

    data = _run_config(args.config).data if args.config else None
    if args.out:  # before the evaluation, not after it
        make_folder(Path(args.out).parent, "--out")
    report = evaluate_checkpoint(
        args.checkpoint,
        data=data,
        split=args.split,
        batch_size=args.batch_size,
        workers=args.workers,
        max_samples=args.max_samples,
        oracle_caption=not args.no_oracle,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    _print_table(report["results"], sys.stdout if args.out else sys.stderr)
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.out:
        sys.stdout.write(text)
    return 0


def _print_table(results: dict, stream) -> None:
    stream.write(
        f"{'level':<10} {'condition':<28} {'I2S R@10%':>9} {'I2S med':>8} {'S2I R@10%':>9} {'S2I med':>8} {'N':>6}\n"
    )
    for level, conditions in results.items():
        rows = [(c, m) for c, m in conditions.items() if c != "oracle_caption"]
        rows += [(f"{c}+oracle_caption", m) for c, m in conditions.get("oracle_caption", {}).items()]
        for condition, m in rows:
            stream.write(
                f"{level:<10} {condition:<28} {m['I2S_R@10%']:>9.4f} {m['I2S_median_rank']:>8.1f} "
                f"{m['S2I_R@10%']:>9.4f} {m['S2I_median_rank']:>8.1f} {m['gallery']:>6}\n"
            )


def _data_hash(data: dict) -> str | None:
    """The content hash a corpus folder's manifest records (the demo corpus has one), if any."""
    try:
        return json.loads((Path(data["path"]) / "manifest.json").read_text(encoding="utf-8"))["content_hash"]
    except (KeyError, OSError, ValueError, TypeError):
        return None


def _from_checkpoint(path: str, metrics: dict):
    from model.checkpoint import model_from_checkpoint

    model, checkpoint = model_from_checkpoint(path)
    data = checkpoint["config"]["data"]
    training = {
        "checkpoint": Path(path).name,
        "checkpoint_sha256": file_sha256(path),
        "step": checkpoint["step"],
        "config": checkpoint["config"],
        "data_hash": _data_hash(data),
        "skipped": len(checkpoint["skipped"]),
        **({"init_from": checkpoint["init_from"]} if "init_from" in checkpoint else {}),
    }
    metrics["validation"] = {"step": checkpoint["best_step"], **(checkpoint["best"] or {})}
    return model, tuple(checkpoint["calibration"]), training, Path(path).resolve().parent.name


def _from_config(path: str, seed: int):
    import torch

    from model.config import ModelConfig
    from model.nn.psm import PSMModel

    torch.manual_seed(seed)
    config = load_config(path)
    model = PSMModel(ModelConfig.from_dict(config.get("model"))).eval()
    # The config itself, as a checkpoint's export records it: what the model is scored by
    # (runtime.scoring.scoring_kind: cosine for an InfoNCE loss) is read from it.
    training = {"config": config, "config_path": str(path), "weights": f"random (seed {seed})"}
    return model, (5.0, 5.0), training, Path(path).stem


def _export(args: argparse.Namespace) -> int:
    from model.export import (
        bundle_from_trained_parts,
        check_examples,
        described_sources,
        export_bundle,
        save_trained_parts,
    )

    sources = [s for s in (args.checkpoint, args.config, args.weights) if s]
    if len(sources) != 1:
        raise UsageError(
            "give one of --checkpoint (a training run), --weights (saved trained parts) "
            "or --config (seeded random weights)"
        )
    check_export_out(Path(args.out), trained_parts=args.trained_parts)
    metrics = {"test": _read_metrics(args.metrics)} if args.metrics else {}
    described = source_descriptions(args.source_description or [])
    # What every bundle written here records, from trained parts or from a model.
    bundle_options = {
        "metrics": metrics,
        "fp16": args.fp16,
        "int8": args.int8,
        "examples": args.example,
        "source_descriptions": described,
        "progress": True,
    }
    if args.weights:
        if args.trained_parts:
            raise UsageError("--weights already are trained parts; export them to a bundle without --trained-parts")
        manifest = bundle_from_trained_parts(args.weights, args.out, name=args.name, **bundle_options)
        print(f"bundle {manifest['id']} written to {args.out}")
        return 0
    if args.checkpoint:
        model, calibration, training, name = _from_checkpoint(args.checkpoint, metrics)
    else:
        model, calibration, training, name = _from_config(args.config, args.seed)
    name = args.name or name
    if args.trained_parts:
        check_examples(args.example or [], model.tokenizer())
        record = save_trained_parts(
            model,
            args.out,
            calibration=calibration,
            record={
                "name": name,
                "training": training,
                "metrics": metrics,
                **({"examples": args.example} if args.example else {}),
                **({"source_descriptions": described_sources(list(model.cfg.sources), described)} if described else {}),
            },
        )
        print(f"trained parts ({record['weights']['sha256'][:16]}) written to {args.out}")
        return 0
    manifest = export_bundle(model, args.out, calibration=calibration, training=training, name=name, **bundle_options)
    print(f"bundle {manifest['id']} written to {args.out}")
    return 0


def check_export_out(out: Path, *, trained_parts: bool) -> None:
    """Refuse an --out that export would destroy: a file, or a folder holding anything but what
    export writes (a bundle; trained parts with --trained-parts) is never replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; choose another --out")
    wanted = "trained parts" if trained_parts else "a model bundle"
    holds = (
        (out / RECORD_FILE).is_file()
        if trained_parts
        else (out / MANIFEST_FILE).is_file() and (out / GRAPH_FILES["image"]).is_file()
    )
    if not holds and any(out.iterdir()):
        raise UsageError(
            f"--out {out} holds something other than {wanted}, which export would replace; choose another --out"
        )


def _read_metrics(path: str) -> object:
    """The JSON of --metrics (what `soundscape evaluate --out` wrote); a sentence when it is none."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--metrics file {path} does not exist") from None
    except (ValueError, UnicodeDecodeError, IsADirectoryError):
        raise UsageError(f"--metrics {path} is not a JSON file (write one with soundscape evaluate --out)") from None


def source_descriptions(pairs: list[str]) -> dict[str, str]:
    """`--source-description NAME=TEXT` options as {NAME: TEXT}."""
    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise UsageError(
                f"--source-description takes NAME=TEXT (a source of the model and what it means), not {pair!r}"
            )
        if name.strip() in out:  # the last would be kept silently
            raise UsageError(f"--source-description gives {name.strip()!r} twice: give each source one description")
        out[name.strip()] = text.strip()
    return out


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a PSM model from a config (model:, train:, data: sections)",
        description="Train the model of --config on its data: section, validating R@10% every "
        "train.eval_every steps and checkpointing into --out (last.pt, best.pt, metrics.csv, "
        "config.yaml, skipped.tsv). Ctrl-C or SIGTERM stops it after the step under way with last.pt saved "
        "(exit code 130 or 143); rerun with --resume: it continues exactly. "
        "Several GPUs or processes: --processes N (or torchrun --nproc_per_node N -m cli.main train ...). "
        "Data paths in the config are relative to the config file; the data is checked against "
        "the config before the first step. See docs/training.md, and docs/own-data.md for your "
        "own recordings (samples.csv).",
    )
    p.add_argument("--config", required=True, help="YAML config (configs/tiny.yaml, configs/paper.yaml, ...)")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument(
        "--init-from",
        metavar="PATH",
        help="start this new run from trained weights: a checkpoint (best.pt, last.pt) or a trained-parts "
        "folder (weights/demo); its model: section must be theirs (vocabularies matched by name), the "
        "optimizer, schedule and step start afresh (default: a new model's weights; not with --resume)",
    )
    p.add_argument(
        "--stop-after",
        type=integer_in(1),
        help="stop this invocation after N steps (checkpointed; resume later; default: run to train.steps)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--processes",
        type=integer_in(1),
        default=1,
        help="train in N processes on this machine (DDP, one per GPU where there are GPUs, else at most one "
        "per CPU core), as torchrun --standalone --nproc_per_node N does; a signal stops them as it stops one "
        "(default 1)",
    )
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "evaluate",
        help="retrieval metrics of a checkpoint (R@10%%, median rank) as JSON",
        description="Sat->audio (I2S) and audio->sat (S2I) Recall@10% of the gallery and median rank, "
        "defined as the PSM paper (1-based ranks, ties averaged, R@10% = mean(rank <= 0.1 N), at least rank 1 "
        "when N < 10), "
        "per imagery level, with metadata and without, and with the oracle caption added "
        "(reported separately). Writes JSON to --out or stdout.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint written by soundscape train (best.pt, last.pt)")
    p.add_argument("--config", help="take the data: section from this config (default: the checkpoint's)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default test)")
    p.add_argument(
        "--max-samples",
        type=integer_in(1),
        help="evaluate the first N samples only (default: every sample of the split)",
    )
    p.add_argument("--batch-size", type=integer_in(1), default=128, help="embedding batch size (default 128)")
    p.add_argument("--workers", type=integer_in(0), default=0, help="data loader processes (default 0)")
    p.add_argument("--no-oracle", action="store_true", help="skip the oracle-caption conditions")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="frozen-tower cache to read and fill (a run's frozen-cache/): frozen towers run once per split "
        "(default: none, they run on every evaluation)",
    )
    p.add_argument("--out", help="JSON file to write (default: stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser(
        "export",
        help="write a model bundle (4 ONNX graphs + manifest) from a checkpoint or a config",
        description="Export a trained model (--checkpoint), saved trained parts (--weights) or a config's "
        "model with seeded random weights (--config) to a bundle directory: image, fuse, text and audio graphs "
        "with a dynamic batch axis, the tokenizer, and a manifest with the calibration (a, b), the training "
        "record and the metrics. Needs the train extra.",
    )
    p.add_argument("--checkpoint", help="checkpoint written by soundscape train")
    p.add_argument("--weights", help="folder of trained parts written with --trained-parts (weights/demo)")
    p.add_argument("--config", help="YAML config with a model: section (random weights)")
    p.add_argument("--seed", type=seed_argument(), default=0, help="seed of the random weights (default 0)")
    p.add_argument(
        "--metrics", help="JSON from soundscape evaluate to record as the test metrics (default: none recorded)"
    )
    p.add_argument("--fp16", action="store_true", help="also write float16 graphs (fp16/) for GPUs")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 text graph (int8/) for CPUs: new text queries at 0.4-0.6 of the "
        "cost (soundscape serve --precision int8)",
    )
    p.add_argument(
        "--example",
        action="append",
        metavar="TEXT",
        help="a text query this model maps well, recorded in the manifest and shown by serve "
        "(repeat for several; default none)",
    )
    p.add_argument(
        "--source-description",
        action="append",
        metavar="NAME=TEXT",
        help="what the source NAME (one of the model's `sources`) means, recorded in the manifest and "
        "shown by GET /metadata (repeat for several; default none)",
    )
    p.add_argument("--name", help="bundle name in the manifest (default: the run or config name)")
    p.add_argument(
        "--trained-parts",
        action="store_true",
        help="write only the trained tensors (safetensors) and a record.json instead of a bundle: "
        "what a repository commits when the frozen towers come from packages",
    )
    p.add_argument(
        "--out",
        required=True,
        help="bundle (or --trained-parts) directory to write; an existing bundle (or trained parts) "
        "there is replaced, anything else is refused",
    )
    p.set_defaults(handler=_export)

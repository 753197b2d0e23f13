"""`soundscape export`: a config (and optionally trained weights) to a model bundle. torch is
imported only when the command runs, so listing commands needs no torch."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from model.bundle import BundleError

USER_ERRORS: tuple[type[Exception], ...] = (BundleError,)


def load_config(path: str | Path) -> dict:
    """A YAML config file as a dict of sections; a sentence-long error when unreadable."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections (model:, train:)")
    return config


def _export(args: argparse.Namespace) -> int:
    import torch

    from model.export import export_bundle
    from model.nn.config import ModelConfig, from_section
    from model.nn.psm import PSMModel

    config = load_config(args.config)
    cfg = from_section(ModelConfig, config.get("model"), "model")
    torch.manual_seed(args.seed)
    model = PSMModel(cfg)
    calibration = (5.0, 5.0)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        calibration = tuple(state["calibration"])
    manifest = export_bundle(model, args.out, calibration=calibration,
                             training={"checkpoint": str(args.checkpoint) if args.checkpoint else None,
                                       "config": str(args.config)})
    print(f"bundle {manifest['id']} written to {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model bundle (4 ONNX graphs + manifest) from a config",
                       description="Export the model of --config (with weights from --checkpoint, or "
                                   "seeded random weights) to a bundle directory. Needs the train extra.")
    p.add_argument("--config", required=True, help="YAML config with a model: section")
    p.add_argument("--checkpoint", help="checkpoint written by training (default: random weights)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--out", required=True, help="bundle directory to write (replaced if present)")
    p.set_defaults(handler=_export)

"""Trained weights on disk: the training checkpoint file (`last.pt`, `best.pt`, written by
model.train), its format, and reading it back as a model for evaluation and export; and a folder
of trained parts (`trained.safetensors` and `record.json`, written by `export --trained-parts`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.config import ModelConfig
from model.nn.psm import PSMModel
from model.nn.weights import CheckpointError
from runtime.contract import RECORD_FILE
from runtime.files import file_sha256

CHECKPOINT_FORMAT = 1


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint file (written by `fit`); a sentence-long error for anything else.
    Read as data only (torch's weights_only): a pickle that would run code on loading is refused
    without running it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001  (torch.load raises many types for a file that is not a checkpoint)
        raise CheckpointError(f"{path} is not a training checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT}")
    problem = _shape_problem(state)
    if problem:
        raise CheckpointError(f"{path} is not a training checkpoint this version reads: {problem}")
    return state


# What `fit` writes into every checkpoint (model.train.Run.checkpoint), by type; `skip_count`,
# `init_from` and `validation_due` are written only by some runs.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "model": dict,
    "loss": dict,
    "optimizer": dict,
    "schedule": dict,
    "scaler": dict,
    "step": int,
    "best": (dict, type(None)),
    "best_step": (int, type(None)),
    "evals_since_best": int,
    "skipped": list,
    "calibration": (list, tuple),
}


def _shape_problem(state: dict) -> str | None:
    """What a dict of format 1 lacks, or holds of another type, that every reader of it takes for
    granted (they stopped with a KeyError or TypeError); None for a checkpoint as `fit` writes it."""
    for key, kind in FIELDS.items():
        if key not in state:
            return f"it lacks {key!r}"
        if not isinstance(state[key], kind):
            return f"its {key!r} is a {type(state[key]).__name__}"
    for section in ("model", "train", "data"):
        if not isinstance(state["config"].get(section), dict):
            return f"it lacks 'config.{section}'"
    weights = [v for v in state["model"].values() if not isinstance(v, torch.Tensor)]
    if weights:
        return f"its 'model' holds a {type(weights[0]).__name__} among the weights"
    if len(state["calibration"]) != 2 or not all(isinstance(v, int | float) for v in state["calibration"]):
        return "its 'calibration' is not two numbers"
    return None


def not_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(weights: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights a diverged run left (NaN or inf): their scores rank every true match first,
    and their graphs answer NaN."""
    bad = not_finite(weights)
    if bad:
        names = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise CheckpointError(
            f"{source} holds weights that are not finite (NaN or inf in {names}): the run diverged before it "
            "was saved; use a checkpoint saved before that, or train again with a lower train.lr"
        )


def model_from_checkpoint(path: str | Path) -> tuple[PSMModel, dict]:
    """The trained model of a checkpoint (built from the config it records) and the checkpoint;
    weights that are not finite are refused."""
    checkpoint = load_checkpoint(path)
    check_finite({**checkpoint["model"], "calibration": torch.tensor(checkpoint["calibration"])}, str(path))
    model = PSMModel(ModelConfig.from_dict(checkpoint["config"]["model"]), pretrained=False)
    model.load_trainable_state_dict(checkpoint["model"], str(path))
    return model.eval(), checkpoint


def read_trained_parts(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The trained tensors of a trained-parts folder and its record (model config, calibration,
    training, the weights' sha256); a file that is not the recorded one is refused."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        weights = folder / record["weights"]["file"]
        expected = record["weights"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise FileNotFoundError(f"{folder} holds no readable {RECORD_FILE} of trained weights") from None
    if not weights.is_file() or file_sha256(weights) != expected:
        raise CheckpointError(f"{weights} is missing or is not the file {folder / RECORD_FILE} records")
    return load_file(str(weights)), record

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
    """A training checkpoint file (written by `fit`); a sentence-long error for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001  (torch.load raises many types for a file that is not a checkpoint)
        raise CheckpointError(f"{path} is not a training checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT}")
    return state


def model_from_checkpoint(path: str | Path) -> tuple[PSMModel, dict]:
    """The trained model of a checkpoint (built from the config it records) and the checkpoint."""
    checkpoint = load_checkpoint(path)
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

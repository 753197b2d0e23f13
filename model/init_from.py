"""`soundscape train --init-from PATH`: a new run that starts from trained weights instead of a
new model's (fine-tuning), those of a checkpoint of another run (`best.pt`, `last.pt`) or of a
folder of trained parts (`weights/demo`, written by `export --trained-parts`).

Only what the model learned is taken: its trained tensors and, where both runs train PCME++, its
calibration (a, b); the optimizer, schedule, step and run directory are new, and the rest of the
config (data, lr, steps, ...) is this run's. The model section must be the source's but for the
keys that shape no trained tensor (FREE_KEYS) and the vocabularies, matched by name: a source or
caption source both know keeps its trained embedding, a new one starts as in a new model. A tower
the source kept frozen (so did not store) comes from its package here as there, trained or not; a
tower the source trained cannot be frozen here, since a frozen tower's weights are its package's.
The run's checkpoints record where the weights came from (`init_from`: path, sha256, step), and so
do the bundles and trained parts exported from them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, read_trained_parts
from model.config import ConfigError, ModelConfig
from model.nn.losses import PCMEPlusPlusLoss
from model.nn.psm import TOWERS, PSMModel
from model.nn.weights import CheckpointError, describe, state_mismatches
from runtime.files import file_sha256

log = logging.getLogger(__name__)

# Model keys a run may set otherwise than its source: they only start a new model (the log-variance
# bias, a SatMAE checkpoint), drop activations in training, say where a tower's package weights
# are, or whether a tower trains.
FREE_KEYS = frozenset(
    {
        "logvar_bias",
        "image.dropout",
        "image.checkpoint",
        "fusion.dropout",
        "text.dropout",
        "text.path",
        "text.trainable",
        "audio.checkpoint",
        "audio.path",
        "audio.trainable",
        "sources",
        "caption_sources",
    }
)
# The vocabularies and the embedding whose rows follow their names.
VOCABULARIES = {"sources": "fusion.source.weight", "caption_sources": "fusion.caption_source.weight"}
SHOWN = 8  # differing keys a refusal names


@dataclass(frozen=True)
class Initial:
    """Trained weights a run starts from: `path` as given, the trained tensors, the source's model
    section, its PCME++ calibration (None where it trained with another loss) and `origin`, what
    the run's checkpoints record."""

    path: str
    state: dict[str, torch.Tensor]
    model: dict
    calibration: tuple[float, float] | None
    origin: dict


def read_initial(path: str | Path) -> Initial:
    """The weights of a checkpoint file or a trained-parts folder; one sentence for anything else."""
    path = Path(path)
    if path.is_dir():
        return _from_trained_parts(path)
    if not path.exists():
        raise FileNotFoundError(f"--init-from {path} does not exist")
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    origin = {
        "path": str(path.resolve()),
        "kind": "checkpoint",
        "sha256": file_sha256(path),
        "step": checkpoint["step"],
    }
    return Initial(
        str(path),
        checkpoint["model"],
        config["model"],
        _pcmepp(config, checkpoint["calibration"]),
        _chained(origin, checkpoint.get("init_from")),
    )


def _from_trained_parts(folder: Path) -> Initial:
    state, record = read_trained_parts(folder)
    training = record.get("training") or {}
    origin = {
        "path": str(folder.resolve()),
        "kind": "trained parts",
        "name": record.get("name"),
        "sha256": record["weights"]["sha256"],
        "step": training.get("step"),
    }
    calibration = (record["calibration"]["a"], record["calibration"]["b"])
    return Initial(
        str(folder),
        state,
        record["model_config"],
        _pcmepp(training.get("config") or {}, calibration),
        _chained(origin, training.get("init_from")),
    )


def _pcmepp(config: dict, calibration) -> tuple[float, float] | None:
    """The source's (a, b) where its config trained PCME++ (InfoNCE's are a function of its tau)."""
    kind = ((config.get("train") or {}).get("loss") or {}).get("kind")
    return (float(calibration[0]), float(calibration[1])) if kind == "pcmepp" else None


def _chained(origin: dict, before: dict | None) -> dict:
    """`origin`, with where the source's own weights came from when it was fine-tuned too."""
    return {**origin, "init_from": before} if before else origin


def check_model(initial: Initial, model: ModelConfig) -> None:
    """A ConfigError naming every key of the model section that differs from the source's but
    may not (FREE_KEYS may)."""
    try:
        source = _flat(ModelConfig.from_dict(initial.model))
    except ConfigError as exc:
        raise ConfigError(
            f"--init-from {initial.path} records a model section this version cannot read: {exc}"
        ) from None
    here = _flat(model)
    differ = sorted(k for k in source.keys() | here.keys() if k not in FREE_KEYS and source.get(k) != here.get(k))
    if differ:
        named = ", ".join(f"model.{k} {source.get(k, '-')!r} there, {here.get(k, '-')!r} here" for k in differ[:SHOWN])
        more = f" (+{len(differ) - SHOWN} more)" if len(differ) > SHOWN else ""
        raise ConfigError(
            f"--init-from {initial.path} has another model than this config: {named}{more}; its weights need "
            "its model section (only dropouts, logvar_bias, image.checkpoint, the towers' path, checkpoint and "
            "trainable, and the vocabularies may differ)"
        )


def _flat(cfg: ModelConfig) -> dict[str, object]:
    """Every key of a model section by its dotted name, the log-mel front end's with its defaults."""
    dump = cfg.model_dump()
    if "features" in dump["audio"]:
        dump["audio"]["features"] = cfg.audio_spec.to_json()
    flat: dict[str, object] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(dump, "")
    return flat


def load_initial(model: PSMModel, initial: Initial) -> None:
    """Load the source's trained tensors into `model` (its config checked by `check_model`); a
    tensor that still does not fit is a CheckpointError naming it."""
    stored = {key.split(".", 1)[0] for key in initial.state}
    for tower in model.frozen_towers():
        if tower in stored:
            raise ConfigError(
                f"--init-from {initial.path} trained its {tower} tower, which this config freezes "
                f"(model.{tower}.trainable: false): a frozen tower's weights are its package's, so the "
                f"trained ones would be lost; set model.{tower}.trainable: true"
            )
    state = _vocabularies(initial, model)
    from_packages = tuple(f"{tower}." for tower in TOWERS if tower not in stored)
    own = model.state_dict()
    wanted = {k: v for k, v in own.items() if not k.startswith(from_packages)}
    problems = state_mismatches(wanted, state)
    if any(problems.values()):
        raise CheckpointError(f"--init-from {initial.path} does not fit this model ({describe(problems)})")
    model.load_state_dict({**own, **state})
    log.info("started from the weights of %s (sha256 %s)", initial.path, initial.origin["sha256"][:16])


def _vocabularies(initial: Initial, model: PSMModel) -> dict[str, torch.Tensor]:
    """The source's tensors with each vocabulary's embedding rows in this model's order of names:
    a name both know keeps its trained row, a new name the new model's, a name only the source
    knows is left out (said in a warning)."""
    state = dict(initial.state)
    own = model.state_dict()
    for field, key in VOCABULARIES.items():
        before, now = initial.model[field], getattr(model.cfg, field)
        if before == now or key not in state or state[key].shape[1:] != own[key].shape[1:]:
            continue  # the same names, or a shape load_initial reports
        rows = own[key].clone()
        for i, name in enumerate(now):
            if name in before:
                rows[i] = state[key][before.index(name)]
        state[key] = rows
        log.warning(
            "model.%s %s, where %s has %s: trained embedding kept for %s, new for %s, left out for %s",
            field,
            now,
            initial.path,
            before,
            *(", ".join(names) or "none" for names in _matched(before, now)),
        )
    return state


def _matched(before: list[str], now: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The names both vocabularies hold, those only `now` holds, those only `before` held."""
    return [n for n in now if n in before], [n for n in now if n not in before], [n for n in before if n not in now]


def load_calibration(loss: torch.nn.Module, initial: Initial) -> None:
    """Start PCME++'s (a, b) at the source's (where both train PCME++), the scale its embeddings
    were trained with, instead of loss.init_scale and init_shift."""
    if initial.calibration is None or not isinstance(loss, PCMEPlusPlusLoss):
        return
    with torch.no_grad():
        loss.scale.fill_(initial.calibration[0])
        loss.shift.fill_(initial.calibration[1])

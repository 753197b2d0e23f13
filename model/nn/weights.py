"""Loading weights strictly: a state dict that does not fit the module fails with the
mismatched keys listed, never silently (PSM loads SatMAE with strict=False and drops what does
not fit without a word)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from runtime.errors import UserError

log = logging.getLogger(__name__)

# SatMAE / MAE checkpoint entries that PSM's global-pool ViT leaves out by design: the class
# token, the learned position table (GSDPE replaces it), the final norm (replaced by fc_norm),
# the classifier head and the whole MAE decoder.
SATMAE_IGNORED = re.compile(r"^(cls_token|pos_embed|mask_token|norm\.|head\.|decoder_)")
# Parameters of the image encoder that no SatMAE checkpoint has: PSM's new fc_norm and projector.
NEW_IN_PSM = ("fc_norm.", "projector.")


class CheckpointError(UserError, ValueError):
    """Weights that do not fit the model; the message lists the keys that do not match."""


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def mismatches(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Keys missing from `state`, unexpected in it, and present with another shape."""
    return state_mismatches(module.state_dict(), state)


def state_mismatches(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Keys of `own` missing from `state`, keys of `state` unexpected in `own`, and keys of both
    with another shape."""
    return {
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
        "shape": [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(state))
            if own[k].shape != state[k].shape
        ],
    }


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that names every mismatched key when the architectures differ."""
    problems = mismatches(module, state)
    if any(problems.values()):
        raise CheckpointError(f"{source} does not fit this model architecture ({describe(problems)})")
    module.load_state_dict(state)


def describe(problems: dict[str, list[str]]) -> str:
    """The mismatches of `mismatches` in words: `missing: a, b; shape: c (2, 3) vs (4, 3)`."""
    return "; ".join(f"{what}: {_listing(keys)}" for what, keys in problems.items() if keys)


def unwrap_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint file's object ({"model": ...}, {"state_dict": ...}),
    without DDP's "module." prefixes."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError("the checkpoint holds no state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_satmae(backbone: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a SatMAE (timm ViT / MAE) checkpoint into `backbone`, whose keys follow timm's.

    Every backbone tensor must be found with its shape; entries PSM ignores by design are
    reported as ignored; anything else in the file is an error. Returns the report."""
    state = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=False))
    own = backbone.state_dict()
    ignored = sorted(k for k in state if k not in own and SATMAE_IGNORED.match(k))
    wanted = {k: v for k, v in state.items() if k not in ignored}
    problems = mismatches(backbone, wanted)
    new = [k for k in problems["missing"] if k.startswith(NEW_IN_PSM)]
    problems["missing"] = [k for k in problems["missing"] if k not in new]
    if any(problems.values()):
        raise CheckpointError(f"SatMAE checkpoint {path} does not fit the image encoder ({describe(problems)})")
    backbone.load_state_dict({**own, **wanted})
    report = {"loaded": sorted(wanted), "ignored": ignored, "new": new}
    log.info(
        "SatMAE checkpoint %s: %d tensors loaded, %d ignored by design (%s), %d new (%s)",
        path,
        len(report["loaded"]),
        len(ignored),
        _listing(ignored, 4),
        len(new),
        _listing(new, 4),
    )
    return report

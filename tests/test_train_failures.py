"""Training, evaluation and export when something has gone wrong: a loss that diverges to NaN, a
checkpoint whose weights are NaN, one that lacks what a checkpoint holds, and a pickle that is no
checkpoint at all. Each is one sentence and exit code 2, never a run that ends well with a best.pt
of NaNs, metrics that look perfect or a bundle that answers NaN."""

import math
import pathlib

import numpy as np
import pytest
import torch
import yaml

import model.export
from cli.main import main as soundscape
from model.checkpoint import load_checkpoint
from model.evaluate import Gaussians, SplitEmbeddings, metrics
from model.train import fit
from runtime.errors import UserError
from tests.test_model_train import config, run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_sentence(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("WARNING")]
    assert len(lines) == 1, err
    return lines[0]


def finite(path: pathlib.Path) -> bool:
    return all(torch.isfinite(v).all() for v in load_checkpoint(path)["model"].values() if v.is_floating_point())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> pathlib.Path:
    """last.pt of a 2-step run."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    fit(run_config(config(train__steps=2, train__eval_every=2, train__checkpoint_every=2)), out, progress=False)
    return out / "last.pt"


def edited(checkpoint: pathlib.Path, tmp_path: pathlib.Path, edit) -> pathlib.Path:
    state = torch.load(checkpoint, weights_only=True)
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return path


def test_a_loss_that_becomes_nan_stops_the_run_in_a_sentence(tmp_path, capsys):
    """lr 1e30: the first step blows the weights up, the second's loss is NaN. The run went on to
    its end and kept a best.pt of NaN weights whose validation metrics were perfect (R@10% 1.0,
    NaN scores ranked first), exit code 0."""
    path = tmp_path / "diverge.yaml"
    path.write_text(yaml.safe_dump(config(train__lr=1e30, train__checkpoint_every=1)), encoding="utf-8")
    run = tmp_path / "run"
    assert soundscape(["train", "--config", str(path), "--out", str(run), "--no-progress"]) == 2
    err = one_sentence(capsys)
    assert "loss is nan at step 2" in err and "train.lr" in err and "1e+30" in err, err
    assert not (run / "best.pt").exists()
    assert load_checkpoint(run / "last.pt")["step"] == 1  # the last finite step's, as written then
    assert not (run / ".lock").exists()


def test_a_checkpoint_with_nan_weights_is_refused_by_evaluate_and_export(checkpoint, tmp_path, capsys):
    def poison(state):
        state["model"]["fusion.location.0.weight"][0, 0] = math.nan

    path = edited(checkpoint, tmp_path, poison)
    assert soundscape(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "e.json")]) == 2
    err = one_sentence(capsys)
    assert "not finite" in err and "fusion.location.0.weight" in err, err
    assert soundscape(["export", "--checkpoint", str(path), "--out", str(tmp_path / "bundle")]) == 2
    assert "not finite" in one_sentence(capsys)
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "bundle").exists()


def test_ranks_of_embeddings_that_are_not_finite_are_refused():
    """A NaN score is neither above nor equal to the true match's, so every true match ranked 0.5:
    R@10% 1.0, median rank 0.5."""
    rng = np.random.default_rng(0)
    good = Gaussians(rng.normal(size=(8, 4)), np.zeros((8, 4)))
    bad = Gaussians(good.raw.copy(), good.logvar.copy())
    bad.raw[3, 1] = np.nan
    levels = np.array([None] * 8, dtype=object)
    assert metrics(SplitEmbeddings({"metadata": good}, good, None, levels), True)["all"]["metadata"]["gallery"] == 8
    with pytest.raises(UserError, match=r"1 of 8 .* not finite"):
        metrics(SplitEmbeddings({"metadata": good}, bad, None, levels), True)


def test_an_export_whose_graph_answers_nan_fails(checkpoint, tmp_path, monkeypatch, capsys):
    """NaN > tolerance is false: a graph whose outputs were NaN passed its parity check."""
    monkeypatch.setattr(model.export, "_parity", lambda *args, **kwargs: math.nan)
    with pytest.raises(RuntimeError, match="differs from torch by nan"):
        soundscape(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bundle")])
    assert not (tmp_path / "bundle").exists() and not list(tmp_path.glob(".bundle.*"))


BROKEN = {
    "lacks calibration": (lambda s: s.pop("calibration"), "lacks 'calibration'"),
    "config a string": (lambda s: s.update(config="x"), "'config' is a str"),
    "config lacks model": (lambda s: s["config"].pop("model"), "lacks 'config.model'"),
    "step a string": (lambda s: s.update(step="2"), "'step' is a str"),
    "weights not tensors": (lambda s: s["model"].update({"text.embed.weight": [1.0]}), "'model' holds a list"),
}


@pytest.mark.parametrize(("edit", "said"), BROKEN.values(), ids=BROKEN.keys())
def test_a_checkpoint_that_lacks_what_one_holds_is_one_sentence(checkpoint, tmp_path, capsys, edit, said):
    """Each was a KeyError or TypeError traceback (exit code 1)."""
    path = edited(checkpoint, tmp_path, edit)
    assert soundscape(["export", "--checkpoint", str(path), "--out", str(tmp_path / "bundle")]) == 2
    err = one_sentence(capsys)
    assert "is not a training checkpoint this version reads" in err and said in err, err


class Planted:
    """Unpickled, it creates a file: what a pickle posing as a checkpoint can run."""

    def __init__(self, path: pathlib.Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": Planted(marker)}, path)
    assert soundscape(["export", "--checkpoint", str(path), "--out", str(tmp_path / "bundle")]) == 2
    assert "is not a training checkpoint" in one_sentence(capsys)
    assert not marker.exists()

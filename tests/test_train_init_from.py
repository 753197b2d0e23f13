"""`soundscape train --init-from`: a new run (other data, lr, seed, steps) that starts from the
weights of a checkpoint or a trained-parts folder, with a fresh optimizer at step 0; a model
section that does not fit is one sentence naming the keys; the run and what is exported from it
record where its weights came from."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cli.main import main as soundscape
from model.checkpoint import load_checkpoint
from model.train import Run, fit
from runtime.files import file_sha256
from tests.test_model_train import config, run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Another run than the source's: other data, seed, learning rate and length.
NEW = {
    "train__lr": 1e-4,
    "train__seed": 7,
    "train__steps": 3,
    "train__eval_every": 0,
    "data__seed": 3,
    "data__samples": {"train": 48, "val": 16, "test": 16},
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny run's best.pt and the trained parts exported from it."""
    folder = tmp_path_factory.mktemp("source")
    fit(run_config(config(train__steps=4, train__eval_every=2)), folder / "run", progress=False)
    best = folder / "run" / "best.pt"
    args = ["export", "--checkpoint", str(best), "--trained-parts", "--out", str(folder / "parts")]
    assert soundscape(args) == 0
    return best, folder / "parts"


def started(tmp_path, init_from, **changes) -> Run:
    """The run --init-from would train, at step 0 (its lock released)."""
    (tmp_path / "run").mkdir(parents=True)
    run = Run(
        run_config(config(**{**NEW, **changes})), tmp_path / "run", resume=False, progress=False, init_from=init_from
    )
    run.lock.close()
    return run


def assert_starts_from(run: Run, state: dict, calibration) -> None:
    own = run.model.trainable_state_dict()
    assert own.keys() == state.keys() and all(torch.equal(own[k], state[k]) for k in own)
    assert run.opt.loss_fn.calibration() == pytest.approx(tuple(calibration), abs=0)
    assert run.step == 0 and run.best is None and not run.opt.optimizer.state
    assert run.opt.schedule.last_epoch == 0


def test_a_new_run_starts_from_a_checkpoints_weights(source, tmp_path):
    best, _ = source
    checkpoint = load_checkpoint(best)
    run = started(tmp_path, best)
    assert_starts_from(run, checkpoint["model"], checkpoint["calibration"])
    assert run.init_from == {
        "path": str(best.resolve()),
        "kind": "checkpoint",
        "sha256": file_sha256(best),
        "step": checkpoint["step"],
    }


def test_a_new_run_starts_from_trained_parts(source, tmp_path):
    from safetensors.torch import load_file

    _, parts = source
    record = json.loads((parts / "record.json").read_text(encoding="utf-8"))
    run = started(tmp_path, parts)
    assert_starts_from(
        run, load_file(parts / "trained.safetensors"), (record["calibration"]["a"], record["calibration"]["b"])
    )
    assert run.init_from["kind"] == "trained parts" and run.init_from["sha256"] == record["weights"]["sha256"]


def test_the_run_and_its_exports_record_where_its_weights_came_from(source, tmp_path):
    best, _ = source
    path, run = tmp_path / "new.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config(**NEW)), encoding="utf-8")
    assert (
        soundscape(["train", "--config", str(path), "--out", str(run), "--init-from", str(best), "--no-progress"]) == 0
    )
    origin = load_checkpoint(run / "last.pt")["init_from"]
    assert origin["sha256"] == file_sha256(best) and origin["path"] == str(best.resolve())
    assert file_sha256(best) in (run / "config.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert (
        soundscape(["export", "--checkpoint", str(run / "last.pt"), "--trained-parts", "--out", str(tmp_path / "p")])
        == 0
    )
    record = json.loads((tmp_path / "p" / "record.json").read_text(encoding="utf-8"))
    assert record["training"]["init_from"] == origin
    # a run started from those parts names them, and what they started from
    again = started(tmp_path / "again", tmp_path / "p")
    assert again.init_from["init_from"] == origin
    # and a resumed run keeps recording it
    assert soundscape(["train", "--config", str(path), "--out", str(run), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(run / "last.pt")["init_from"] == origin


def test_another_architecture_is_one_sentence_naming_the_keys(source, tmp_path, capsys):
    best, parts = source
    path, run = tmp_path / "other.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config(**NEW, model__embed_dim=32, model__fusion__depth=2)), encoding="utf-8")
    for init_from in (best, parts):
        assert soundscape(["train", "--config", str(path), "--out", str(run), "--init-from", str(init_from)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert "model.embed_dim 16 there, 32 here" in err and "model.fusion.depth 1 there, 2 here" in err, err
        assert not (run / "last.pt").exists()


def test_init_from_and_resume_together_are_refused(source, tmp_path, capsys):
    best, _ = source
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(config(**NEW)), encoding="utf-8")
    args = ["train", "--config", str(path), "--out", str(tmp_path / "run"), "--init-from", str(best), "--resume"]
    assert soundscape(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--init-from" in err and "--resume" in err and len(err.splitlines()) == 1, err
    assert soundscape(["train", "--config", str(path), "--out", str(tmp_path / "r"), "--init-from", "nowhere.pt"]) == 2
    assert "nowhere.pt does not exist" in capsys.readouterr().err


def test_vocabularies_are_matched_by_name(source, tmp_path):
    """The user's own sources: a name the source knew keeps its trained embedding, a new one starts fresh."""
    best, _ = source
    trained = load_checkpoint(best)["model"]
    run = started(tmp_path, best, model__sources=["field", "demo"])
    own = run.model.trainable_state_dict()
    rows = own["fusion.source.weight"]
    assert rows.shape[0] == 2 and torch.equal(rows[1], trained["fusion.source.weight"][0])
    assert not torch.equal(rows[0], trained["fusion.source.weight"][0])
    assert all(torch.equal(own[k], trained[k]) for k in own if k != "fusion.source.weight")


def minilm_parts(folder, trainable: bool):
    """Trained parts of the tiny model with a MiniLM text tower (trained or frozen), and the model."""
    from model.config import ModelConfig
    from model.export import save_trained_parts
    from model.nn.psm import PSMModel

    model_section = config(model__text={"kind": "minilm", "trainable": trainable, "max_length": 12})["model"]
    model = PSMModel(ModelConfig.from_dict(model_section))
    save_trained_parts(model, folder, calibration=(5.0, 5.0), record={"name": "minilm", "training": {}, "metrics": {}})
    return model


def test_a_tower_the_source_trained_cannot_be_frozen_here(tmp_path, capsys):
    """Its trained weights would be lost: a frozen tower's come from its package in every checkpoint."""
    minilm_parts(tmp_path / "parts", trainable=True)
    path = tmp_path / "frozen.yaml"
    path.write_text(
        yaml.safe_dump(config(**NEW, model__text={"kind": "minilm", "trainable": False, "max_length": 12})),
        encoding="utf-8",
    )
    args = ["train", "--config", str(path), "--out", str(tmp_path / "run"), "--init-from", str(tmp_path / "parts")]
    assert soundscape(args) == 2
    err = capsys.readouterr().err.strip()
    assert "trained its text tower" in err and "model.text.trainable: true" in err and len(err.splitlines()) == 1, err


def test_a_tower_the_source_kept_frozen_starts_from_its_package_when_trained_here(tmp_path):
    source = minilm_parts(tmp_path / "parts", trainable=False)
    run = started(tmp_path, tmp_path / "parts", model__text={"kind": "minilm", "trainable": True, "max_length": 12})
    assert run.model.frozen_towers() == []
    own, package = run.model.text.state_dict(), source.text.state_dict()
    assert all(torch.equal(own[k], package[k]) for k in package)
    trained, mine = source.trainable_state_dict(), run.model.state_dict()
    assert all(torch.equal(mine[k], trained[k]) for k in trained)


ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "own-data.md"


def fine_tuning_lines() -> list[str]:
    """The shell lines of the fenced block after docs/own-data.md's fine-tuning marker."""
    block = re.search(r"<!-- fine-tuning[^>]*-->\s*```sh\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, f"{DOC} has no fine-tuning block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_fine_tuning_config_fits_the_demo_weights():
    from model.config import ModelConfig
    from model.init_from import check_model, read_initial

    section = yaml.safe_load((ROOT / "configs" / "finetune-demo.yaml").read_text(encoding="utf-8"))["model"]
    check_model(read_initial(ROOT / "weights" / "demo"), ModelConfig.from_dict(section))  # raises when not


@pytest.mark.slow
def test_the_documented_fine_tuning_of_the_demo_model_runs(tmp_path, monkeypatch, aisfx_installed):
    for name in ("tests", "configs", "weights"):  # the page's lines run from the repository root
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    lines = fine_tuning_lines()
    assert [line.split()[0] for line in lines] == ["python", "cp", "soundscape"]
    for line in lines:
        argv = shlex.split(line)
        if argv[0] == "python":
            subprocess.run([sys.executable, *argv[1:]], check=True, timeout=300)
        elif argv[0] == "cp":
            shutil.copy(argv[1], argv[2])
        else:
            assert soundscape(argv[1:]) == 0, line
    record = json.loads((ROOT / "weights" / "demo" / "record.json").read_text(encoding="utf-8"))
    origin = load_checkpoint(tmp_path / "example" / "finetuned" / "best.pt")["init_from"]
    assert origin["kind"] == "trained parts" and origin["sha256"] == record["weights"]["sha256"]

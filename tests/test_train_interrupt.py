"""`soundscape train` stopped by SIGINT (Ctrl-C) or SIGTERM (`docker stop`, `kill`): it finishes
the step under way, saves last.pt as a periodic checkpoint would, says how to resume and exits 130
or 143; `--resume` then ends as a run that never stopped. A second signal cannot cut the checkpoint
short, and a signal while the frozen towers are cached leaves no partial cache file."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cli.main import main as soundscape
from model.checkpoint import load_checkpoint
from model.stopping import Interrupted, StopSignals, calm_after_stop
from model.train import Optimisation, RunConfig, fit
from tests.test_interrupts import ctrl_c_held_down
from tests.test_model_towers import FROZEN
from tests.test_model_train import config, run_config, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread", "handlers_restored")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def handlers_restored():
    """SIGINT's and SIGTERM's handlers as before the test: a command run in process whose run
    stopped on a signal leaves calm_after_stop's handler, as its process would until it exits."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(f)]


def wait_for_rows(run: Path, n: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until metrics.csv holds n steps (the run is in its training loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (run / "metrics.csv").is_file() and len(rows(run)) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"no {n} steps in {run} (exit code {process.poll()})")


def test_ctrl_c_saves_the_step_reached_and_resume_ends_as_an_uninterrupted_run(tmp_path):
    cfg = config(train__steps=60, train__eval_every=20, train__checkpoint_every=1000)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "cli.main", "train", "--config", str(path), "--out", str(run), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(run, 3, process)
        process.send_signal(signal.SIGINT)
        ctrl_c_held_down(process)  # through the step, its checkpoint, the sentence and the exit
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err[-3000:]
    reached = int(rows(run)[-1]["step"])
    assert 3 <= reached < 60
    assert load_checkpoint(run / "last.pt")["step"] == reached
    assert f"stopped by SIGINT at step {reached}" in err and "--resume" in err and "Traceback" not in err, err
    assert not list(run.glob(".*.tmp.pt"))
    resumed = fit(run_config(cfg), run, resume=True, progress=False)
    whole = fit(run_config(cfg), tmp_path / "whole", progress=False)
    assert resumed.last_step == whole.last_step == 60
    a, b = weights(tmp_path / "whole"), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = (load_checkpoint(d / "last.pt") for d in (tmp_path / "whole", run))
    assert ca["calibration"] == cb["calibration"] and ca["best"] == cb["best"] and ca["best_step"] == cb["best_step"]
    assert rows(tmp_path / "whole") == rows(run) and len(rows(run)) == 60


def signal_at_step(monkeypatch, step: int, signum: int) -> None:
    """Send this process `signum` during training step `step` (0-based), as a terminal or docker would."""
    original = Optimisation.step

    def step_and_signal(self, batch, at):
        if at == step:
            os.kill(os.getpid(), signum)
        return original(self, batch, at)

    monkeypatch.setattr(Optimisation, "step", step_and_signal)


def test_sigterm_saves_the_checkpoint_and_exits_143_even_when_signalled_again_while_saving(
    monkeypatch, tmp_path, capfd
):
    path, run = tmp_path / "tiny.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(config(train__checkpoint_every=1000)), encoding="utf-8")
    signal_at_step(monkeypatch, 3, signal.SIGTERM)
    save = torch.save

    def save_signalled_again(obj, f, *args, **kwargs):
        if ".last." in str(f):  # `docker stop` twice: the second arrives while last.pt is written
            os.kill(os.getpid(), signal.SIGTERM)
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_signalled_again)
    code = soundscape(["train", "--config", str(path), "--out", str(run), "--no-progress"])
    err = capfd.readouterr().err
    assert code == 143, err
    assert load_checkpoint(run / "last.pt")["step"] == 4  # the step under way (3, 0-based) finished
    last = err.strip().splitlines()[-1]
    assert last.startswith("soundscape train: stopped by SIGTERM at step 4") and f"--out {run} --resume" in last
    assert "SIGTERM again: already stopping" in err and "Traceback" not in err
    monkeypatch.undo()
    assert soundscape(["train", "--config", str(path), "--out", str(run), "--no-progress", "--resume"]) == 0
    assert load_checkpoint(run / "last.pt")["step"] == 6


def test_a_signal_on_the_last_step_ends_the_run_as_it_would_have(monkeypatch, tmp_path):
    """The last step of this invocation (stop_after), with no validation due: a run's last step
    validates, and a signal abandons that (tests/test_training_leftovers.py)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal_at_step(monkeypatch, 4, signal.SIGINT)
    result = fit(run_config(config()), tmp_path / "run", progress=False, stop_after=5)
    assert result.last_step == 5 and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 5
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers before the run are back


def test_a_signal_while_caching_frozen_towers_leaves_no_partial_cache(monkeypatch, tmp_path):
    run = tmp_path / "run"
    savez = np.savez

    def savez_interrupted(file, **arrays):
        Path(file).write_bytes(b"PK half of a cache file")
        os.kill(os.getpid(), signal.SIGTERM)
        return savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez_interrupted)
    with pytest.raises(Interrupted) as stopped:
        fit(RunConfig.from_dict(FROZEN), run, progress=False)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step is None
    assert not (run / "frozen-cache").exists() or not any((run / "frozen-cache").iterdir())
    assert not (run / "last.pt").exists()
    monkeypatch.undo()
    assert fit(RunConfig.from_dict(FROZEN), run, progress=False).last_step == 2  # the lock was released
    assert [p.name.split("-")[:2] for p in sorted((run / "frozen-cache").iterdir())] == [
        ["train", "text"],
        ["val", "text"],
    ]


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step(tmp_path):
    """`docker stop` signals torchrun, which passes SIGTERM on to both ranks; they stop after one
    step, rank 0 saves it, and the resumed two-process run ends as an uninterrupted one."""
    cfg = config(train__steps=40, train__eval_every=20, train__checkpoint_every=1000)
    path, run, whole = tmp_path / "ddp.yaml", tmp_path / "run", tmp_path / "whole"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")

    def torchrun(out: Path, *more: str) -> list[str]:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        return [*launch, "-m", "cli.main", "train", "--config", str(path), "--out", str(out), "--no-progress", *more]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        torchrun(run), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_rows(run, 3, process)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    reached = int(rows(run)[-1]["step"])
    assert 3 <= reached < 40 and load_checkpoint(run / "last.pt")["step"] == reached, err[-3000:]
    assert err.count(f"stopped by SIGTERM at step {reached}") == 1, err[-3000:]  # said once, by rank 0
    for cmd in (torchrun(run, "--resume"), torchrun(whole)):
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert load_checkpoint(run / "last.pt")["step"] == 40
    a, b = weights(whole), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows(whole) == rows(run)


def test_a_signal_after_the_run_stopped_does_not_cut_the_resume_sentence_short(capfd):
    """A second Ctrl-C soon after the first, once a short step had saved its checkpoint and the run
    had restored the handlers, raised KeyboardInterrupt while the command printed how to resume
    (seen as a rare failure of the Ctrl-C test above): now it is told the run is stopping already."""
    with calm_after_stop():
        with StopSignals() as signals:
            signals.defer()
            os.kill(os.getpid(), signal.SIGINT)  # the first: noted, the run goes on to its checkpoint
        assert signals.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # the second, after the run's handlers are gone
        time.sleep(0.01)  # Python runs a handler between bytecodes: give it some
        print("stopped by SIGINT at step 3", file=sys.stderr)
    assert capfd.readouterr().err.endswith("SIGINT again: already stopping\nstopped by SIGINT at step 3\n")
    # A third, after the command returned, while the process exits: the same, not a traceback
    # from torch's finalizers (seen as a rare failure of the Ctrl-C test above).
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert capfd.readouterr().err == "\nsoundscape train: SIGINT again: already stopping\n"


def test_before_a_run_stops_a_signal_acts_as_it_did(capfd):
    # Python's own SIGINT handler, whatever an earlier test of this process left (Ray's driver
    # installs its own): the one that raises KeyboardInterrupt.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), calm_after_stop():
            with StopSignals():
                pass  # a run that ended without a signal
            signal.raise_signal(signal.SIGINT)  # to this thread: its handler runs before the next line
            time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_the_resume_sentence_names_the_launch_that_ran(monkeypatch):
    """Ranks on one machine resume with `--processes N`; ranks across machines were started by
    the user's torchrun on each, which `--processes` (one machine) would not start again."""
    from model.commands import _interrupted
    from model.distributed import machines

    stop = Interrupted(signal.SIGTERM, step=7)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert machines() == 1
    assert "`soundscape train --processes 8 --config c.yaml --out runs/c --resume`" in _interrupted(
        stop, "c.yaml", Path("runs/c"), 8, machines()
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    sentence = _interrupted(stop, "c.yaml", Path("runs/c"), 8, machines())
    assert "--processes" not in sentence and "each of the 2 machines" in sentence
    assert "`-m cli.main train --config c.yaml --out runs/c --resume`" in sentence

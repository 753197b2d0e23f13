"""Training leftovers, second pass: `--processes N` on a machine with fewer GPUs is refused at
start."""

import pytest
import torch
import yaml

from cli.main import main as soundscape
from model.distributed import check_gpus
from runtime.errors import UsageError
from tests.test_model_train import config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_more_processes_than_gpus_is_refused_naming_both():
    with pytest.raises(UsageError, match=r"this machine has 2 GPUs.*--processes 2"):
        check_gpus(3, gpus=2)
    check_gpus(2, gpus=2)
    check_gpus(8, gpus=0)  # no CUDA: gloo processes on the CPUs, as many as asked


def test_soundscape_train_processes_on_too_few_gpus_exits_2_before_launching(monkeypatch, tmp_path, capsys):
    import model.distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(model.distributed, "launch", lambda *a: pytest.fail("launched"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config()))
    assert soundscape(["train", "--processes", "2", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 1 GPU" in err and "--processes 1" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()

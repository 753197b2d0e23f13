"""DDP on a torch without `DistributedDataParallel._set_params_and_buffers_to_ignore_for_model`, the
private call model.distributed.ddp uses to leave the parameters no loss reads out of the gradient
sync: a release that drops or renames it stopped every multi-process run with an AttributeError
from inside Optimisation. Removing the attribute here simulates such a release."""

import logging
import sys

import pytest
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.distributed import Dist, ddp
from model.train import fit
from tests.test_model_train import ddp_config, run_config, run_ranks, weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRIVATE = "_set_params_and_buffers_to_ignore_for_model"

# Each rank of the two-process run removes the attribute before running `soundscape train`.
WITHOUT_PRIVATE = f"""
import runpy, sys
from torch.nn.parallel import DistributedDataParallel
delattr(DistributedDataParallel, {PRIVATE!r})
sys.argv[0] = "cli.main"
runpy.run_module("cli.main", run_name="__main__", alter_sys=True)
"""


class TwoHeads(nn.Module):
    """A model one of whose heads no loss reads, as a side in no weighted pair."""

    def __init__(self):
        super().__init__()
        self.read, self.unread = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.read(x), self.unread(x)


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo group: DDP's reducer runs as it does with more ranks."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def two_steps(model: nn.Module) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the second step is where DDP complains of a reduction left unfinished
        read, _ = model(torch.randn(4, 3))
        opt.zero_grad()
        read.sum().backward()
        opt.step()


def test_the_unread_parameters_are_left_out_of_the_sync(one_rank_group, caplog):
    module = TwoHeads()
    with caplog.at_level(logging.WARNING):
        wrapped = ddp(module, ["unread.weight", "unread.bias"], torch.device("cpu"), Dist(0, 2, 0))
    assert not wrapped.find_unused_parameters and not caplog.text
    assert wrapped.parameters_to_ignore == {"unread.weight", "unread.bias"}
    two_steps(wrapped)
    assert module.unread.weight.grad is None


def test_without_the_private_call_ddp_finds_the_unused_parameters_and_says_so(one_rank_group, monkeypatch, caplog):
    monkeypatch.delattr(DistributedDataParallel, PRIVATE)
    module = TwoHeads()
    with caplog.at_level(logging.WARNING):
        wrapped = ddp(module, ["unread.weight", "unread.bias"], torch.device("cpu"), Dist(0, 2, 0))
    assert wrapped.find_unused_parameters
    assert len(caplog.records) == 1 and "find_unused_parameters" in caplog.text, caplog.text
    two_steps(wrapped)
    assert module.unread.weight.grad is None
    caplog.clear()
    ddp(TwoHeads(), [], torch.device("cpu"), Dist(1, 2, 1))  # another rank: no second line from it
    assert not caplog.records


UNREAD = {
    "sat-audio only": {"weights": {"sat_audio": 0.5, "sat_text": 0.0, "audio_text": 0.0}},  # the text side
    "infonce": {"kind": "infonce"},  # every log-variance head
}


@pytest.mark.slow
@pytest.mark.parametrize("loss", UNREAD.values(), ids=UNREAD.keys())
def test_two_processes_without_the_private_call_train_as_one_process(tmp_path, loss):
    """Parameters that no loss reads: those of a side in no weighted pair, or the log-variance
    heads under InfoNCE."""
    cfg = ddp_config(train__batch_size=8, train__loss=loss)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    script = tmp_path / "without_private.py"
    script.write_text(WITHOUT_PRIVATE, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    stderr = run_ranks([*cmd, "train", "--config", str(path)], tmp_path / "two")
    assert stderr.count("instead (each step searches") == 1, stderr[-3000:]
    fit(run_config(cfg), tmp_path / "one", progress=False)
    two, one = weights(tmp_path / "two"), weights(tmp_path / "one")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6, msg=key)

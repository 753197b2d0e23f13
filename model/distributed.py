"""Multi-process training under `torchrun` or `soundscape train --processes N` (`launch`): process
group set-up from its environment, and the embedding gather the loss needs.

Every rank gathers all ranks' embeddings and computes the same loss over the global batch (the
B x B match matrix needs every pair, not just the local ones). The gathered tensor's gradient is
then complete on each rank for its own slice; DDP averages parameter gradients over the ranks,
so the slice's gradient is scaled by the world size and the result equals one process training
on the global batch."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn

from runtime.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def main_process() -> bool:
    """Whether this process is rank 0 of its torchrun (or runs alone), before or without joining the group."""
    return int(os.environ.get("RANK", "0")) == 0


def processes() -> int:
    """How many ranks this process's torchrun (or `launch`) runs, before or without joining the group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def machines() -> int:
    """How many machines the ranks span: torchrun sets LOCAL_WORLD_SIZE to the ranks of one."""
    return max(1, processes() // int(os.environ.get("LOCAL_WORLD_SIZE", str(processes()))))


def gpus() -> int:
    """The GPUs ranks would run on: none where CUDA is not available (gloo on the CPUs)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(ranks: int, gpus: int, option: str = "--processes") -> None:
    """Refuse more ranks than GPUs on a machine with CUDA, one GPU each (NCCL): started anyway (as
    torchrun does), each rank past the last GPU failed on its device with CUDA's 'invalid device
    ordinal' traceback, after the others had started. No GPUs: gloo on the CPUs, any number."""
    if gpus and ranks > gpus:
        raise UsageError(
            f"{option} {ranks} runs one process per GPU and this machine has {gpus} GPU{'s' if gpus > 1 else ''}; "
            f"pass {option} {gpus} (or fewer), or train on the CPUs with CUDA_VISIBLE_DEVICES= set"
        )


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_cpus(ranks: int, gpus: int, cores: int) -> None:
    """Refuse more CPU ranks than cores for `--processes` on a machine without GPUs: 99 gloo
    processes on 2 cores started 99 model copies and printed nothing for minutes. (torchrun's
    own --nproc_per_node is the user's to choose.)"""
    if not gpus and ranks > cores:
        raise UsageError(
            f"--processes {ranks} runs one process per CPU core on a machine without GPUs, and this machine "
            f"has {cores} core{'s' if cores > 1 else ''}; pass --processes {cores} (or fewer)"
        )


def init_distributed() -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), NCCL on GPUs
    and gloo on CPUs; a plain single process when not under torchrun."""
    world = processes()
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", str(world))), gpus(), "--nproc_per_node")
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return Dist(rank, world, local)


def launch(ranks: int, worker: list[str]) -> int:
    """Run `python -m cli.main *worker` as `ranks` processes on this machine, as `torchrun
    --standalone --nproc_per_node` does, and its exit code. torchrun run as a command answers a
    SIGINT or SIGTERM with a traceback of its own and exit code 1, after the ranks have stopped
    cleanly and said how to resume; here it ends with the code one process would (130, 143), and a
    rank's failure with that rank's code (a config error: 2, said by the rank). torchrun's own log
    lines (its OMP_NUM_THREADS banner, the signal received, each failed rank) are left out: a rank
    killed by a signal (out of memory: SIGKILL) is said here in one sentence."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # each sets its own level as it is made
        if name.startswith(("torch.distributed.run", "torch.distributed.elastic")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", "--nproc_per_node", str(ranks), "-m", "cli.main", *worker]))
    except SignalException as stop:
        return 128 + stop.sigval
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        if failure.exitcode > 0:
            return failure.exitcode
        killed = signal.Signals(-failure.exitcode)
        print(f"soundscape train: rank {rank} was killed by {killed.name}", file=sys.stderr)
        return 128 + killed
    return 0


def device_for(d: Dist) -> torch.device:
    return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.world, ctx.rows = rank, world, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows] * ctx.world


def gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """All ranks' rows of x, rank order, with gradients flowing back to this rank's rows."""
    return _Gather.apply(x) if d.active else x


def ddp(module: nn.Module, unread: list[str], device: torch.device, d: Dist) -> nn.parallel.DistributedDataParallel:
    """`module` under DDP, with the parameters named `unread` (those no loss reads) left out of its
    gradient sync. That takes a private call of torch's; a release without it gets DDP's public
    search for unused parameters each step instead (slower, the same gradients), said once by rank
    0, rather than an AttributeError that stopped every rank."""
    ignore = getattr(nn.parallel.DistributedDataParallel, _IGNORE, None)
    if ignore is not None:
        ignore(module, unread)
    elif d.is_main:
        log.warning(
            "torch %s has no DistributedDataParallel.%s, which leaves the parameters no loss reads out of "
            "the gradient sync: DDP runs with find_unused_parameters=True instead (each step searches the "
            "graph for them; slower, the same gradients)",
            torch.__version__,
            _IGNORE,
        )
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[d.local_rank] if device.type == "cuda" else None,
        find_unused_parameters=ignore is None,
    )


_IGNORE = "_set_params_and_buffers_to_ignore_for_model"


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's decision (e.g. stop early), the same on every rank."""
    if not d.active:
        return flag
    t = _scalar(int(flag), d)
    dist.broadcast(t, 0)
    return bool(t.item())


def max_over_ranks(value: int, d: Dist) -> int:
    """The largest of every rank's `value` (e.g. a signal one of them received), the same on every rank."""
    if not d.active:
        return value
    t = _scalar(value, d)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_ranks(flags: list[bool], d: Dist) -> list[bool]:
    """Each flag true where it is true on every rank, the same on every rank."""
    if not d.active:
        return flags
    t = torch.tensor([int(f) for f in flags], device=_collective_device(d))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [bool(v) for v in t.tolist()]


def average_gradients(params: Sequence[torch.Tensor], d: Dist) -> None:
    """What DDP's sync does, for a step it did not sync: every gradient the mean of the ranks'.
    A parameter without one (on every rank alike: they embedded the same sides) keeps none."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= d.world


def _collective_device(d: Dist) -> torch.device | str:
    """Where the process group's backend takes tensors (NCCL: the GPU)."""
    return device_for(d) if dist.get_backend() == "nccl" else "cpu"


def _scalar(value: int, d: Dist) -> torch.Tensor:
    """A one-number tensor where the process group's backend takes it (NCCL: the GPU)."""
    return torch.tensor([value], device=_collective_device(d))


def exit_rank(code: int) -> NoReturn:
    """End a rank of a multi-process run with `code`, its output flushed, without the interpreter's
    teardown: a rank of a two-process gloo run that had trained, saved and destroyed its process
    group (shutdown) still aborted now and then as it exited ('terminate called without an active
    exception', exit code 134; once in a CI run of 2055 tests), most likely as the teardown
    destroyed what the backend left behind after the other rank had closed its connections. Every
    file a run writes is closed by then (checkpoints written whole, logs appended and closed)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, or the stream closed
            stream.flush()
    os._exit(code)


def shutdown(d: Dist) -> None:
    """Leave the process group, its gloo or NCCL threads ended with it: nothing else may hold it
    (a DistributedDataParallel does; drop it first). Still held, the group outlived
    destroy_process_group and was torn down at interpreter exit, once the other ranks had gone
    and closed their connections, which aborted a rank of a two-process gloo run now and then
    ('terminate called without an active exception': 3 of 85 two-process runs of a few gloo DDP
    steps, barrier and destroy_process_group; none of 70 with the wrapper collected first)."""
    if d.active and dist.is_initialized():
        gc.collect()  # a dropped DDP wrapper is in reference cycles (its hooks)
        dist.destroy_process_group()

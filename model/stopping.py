"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (`docker stop`, `kill`, torchrun passing either on)
without losing its work.

Before the first step (reading the data, caching frozen towers) a signal stops the run at once:
an `Interrupted` exception unwinds it, so a cache or checkpoint being written is removed
unfinished (runtime.files.atomic_write) and nothing partial stays. From the first step on, a
signal is only noted: the training loop finishes the step under way, writes last.pt as a periodic
checkpoint would and raises `Interrupted` with that step, so `--resume` continues exactly. A
validation (minutes on a large split) does not wait for its end: it is abandoned between two
batches (`ValidationVote`), and last.pt records the step with its validation still due, which the
resumed run does first. A second signal while that happens is noted and ignored, so it cannot cut
the checkpoint short (kill -9 still stops at once, leaving the previous last.pt whole), nor, once
the run has restored the handlers, the sentence that says how to resume or the process's exit
(`calm_after_stop`)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar

from model.distributed import Dist, max_over_ranks
from runtime.interrupts import SIGNALS, ignore_at_exit, say


class Interrupted(BaseException):
    """The run stopped on `signum`; `step`: the step of the last.pt it saved in `run_dir` (None:
    it stopped before its first step and saved nothing). A BaseException, as KeyboardInterrupt:
    no `except Exception` on the way out may swallow it."""

    def __init__(self, signum: int, step: int | None = None, run_dir: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.run_dir = signum, step, run_dir

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended: 130, 143."""
        return 128 + self.signum


class Abandoned(Exception):
    """A pass over a split given up between two batches because the run is stopping."""


class StopSignals:
    """SIGINT and SIGTERM handled for the block (the previous handlers restored after it): they
    raise Interrupted at once until `defer()` is called, then only set `received`."""

    # The signal the last block entered in this process is stopping on (calm_after_stop reads it).
    stopping: ClassVar[int | None] = None

    def __init__(self, announce: bool = True):
        self.announce = announce  # say so on stderr when a signal is noted (the main rank)
        self.received: int | None = None
        self.deferred = False
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        StopSignals.stopping = None
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def defer(self) -> None:
        """From now on a signal is noted, for the loop to stop after its step."""
        self.deferred = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            self._say(f"{name} again: already stopping; kill -9 stops at once (the previous last.pt stays whole)")
            return
        self.received = StopSignals.stopping = signum
        if not self.deferred:
            raise Interrupted(signum)
        self._say(
            f"{name}: stopping after the step under way (a validation is left for --resume to do), "
            "once its checkpoint is saved"
        )

    def _say(self, text: str) -> None:
        if self.announce:
            say("train", text)


@contextmanager
def calm_after_stop(announce: bool = True) -> Iterator[None]:
    """Around a command whose run handles signals (StopSignals): a signal after the run stopped on
    one and restored the handlers, while the command says where its checkpoint is and how to
    resume and until the process has exited, is told the run is stopping already. It was a
    KeyboardInterrupt that cut that sentence short (a second Ctrl-C soon after the first, on a
    short step), and one raised in the interpreter's exit (torch's finalizers) that printed a
    traceback after it; so a run that stopped leaves this handler in place when the block ends.
    Until a run stops, a signal acts as it did before the block, and after a block whose run
    did not stop, the previous handlers are back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handle(signum: int, frame: FrameType | None) -> None:
        if StopSignals.stopping is None:  # as before the block: the previous handler, or the default
            signal.signal(signum, previous[signal.Signals(signum)])
            signal.raise_signal(signum)
        elif announce:
            say("train", f"{signal.Signals(signum).name} again: already stopping")

    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield
    finally:
        if StopSignals.stopping is None:
            for s, handler in previous.items():
                signal.signal(s, handler)
        else:
            ignore_at_exit()  # the exit resets Python's handlers (runtime.interrupts)


VALIDATED = 256  # above every signal's number: rank 0's word that its validation is whole


class ValidationVote:
    """Whether to abandon a validation, agreed by every rank between its batches. Rank 0 validates
    and asks before each batch (`stop`); the other ranks, which have nothing to validate, answer in
    the same collective (`wait`) with the signal each received, until rank 0 says it is done
    (`done`). The largest answer wins, so a signal on any rank abandons the pass on all of them at
    the same batch, and no rank is left in a collective the others have left. One process alone
    asks only its own signals."""

    def __init__(self, signals: StopSignals, d: Dist):
        self.signals, self.dist = signals, d
        self.signum = 0  # the signal that abandoned the validation (0: none)

    def stop(self) -> bool:
        """Rank 0, before each batch: whether any rank has received a signal."""
        self.signum = max_over_ranks(self.signals.received or 0, self.dist)
        return bool(self.signum)

    def done(self) -> None:
        """Rank 0, after the last batch: the waiting ranks go on."""
        max_over_ranks(VALIDATED, self.dist)

    def wait(self) -> None:
        """Every other rank: answer until rank 0's validation is whole or abandoned."""
        answer = 0
        while not answer:
            answer = max_over_ranks(self.signals.received or 0, self.dist)
        self.signum = 0 if answer == VALIDATED else answer


def ignore_in_worker(worker_id: int) -> None:
    """A DataLoader worker's init: Ctrl-C reaches every process of the terminal's group, and a
    worker must neither run the handler it inherited (fork) nor end on it (failing the batch its
    main process waits for). The main process stops its workers, and they stop when it dies."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)

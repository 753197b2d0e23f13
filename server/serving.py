"""How `soundscape serve` runs uvicorn, so that Ctrl-C held down stops it as one press does.

uvicorn catches SIGINT while it serves and, once shut down, raises each signal it caught again
for the handler that was there before. With Ctrl-C held down that was tens of SIGINTs: Python's
default handler (or asyncio's) raised KeyboardInterrupt at the second, wherever the exit had got
to, so each worker printed tracebacks (the lifespan's cancellation, multiprocessing's bootstrap,
an atexit hook) and a one-worker server could die by SIGINT (exit status -2). Here the handler
before uvicorn's raises KeyboardInterrupt once, in a one-worker server (`interrupt_once`), or
ignores SIGINT, in a worker of several, which its supervisor stops with SIGTERM."""

from __future__ import annotations

import contextlib
import copy
import logging
import multiprocessing
import signal
import sys
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from runtime.interrupts import interrupt_once, stay_calm


class QuietForcedStop(logging.Filter):
    """Drops the lifespan's report of its own cancellation. A forced stop (a second Ctrl-C)
    skips the lifespan's shutdown, the event loop's closing cancels it, and Starlette reports
    that as a failed shutdown: a traceback ending in CancelledError. A shutdown that really
    fails names its own exception and is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Traceback") and text.rstrip().endswith("CancelledError"))


# uvicorn's logging with QuietForcedStop on its stderr handler (each worker configures its own).
LOG_CONFIG: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
LOG_CONFIG["filters"] = {"quiet_forced_stop": {"()": QuietForcedStop}}
LOG_CONFIG["handlers"]["default"]["filters"] = ["quiet_forced_stop"]


class ServeConfig(uvicorn.Config):
    """uvicorn's Config, whose workers ignore SIGINT outside uvicorn's own handling. A worker's
    first act is configure_logging (uvicorn._subprocess), the one hook before it runs its server."""

    def configure_logging(self) -> None:
        super().configure_logging()
        if multiprocessing.parent_process() is not None:  # a worker; the supervisor sends it SIGTERM
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(config: ServeConfig) -> None:
    """uvicorn.run's dispatch for an app given by import string: a supervisor of `workers`
    processes, or one server in this process; either calm from its stop to its exit."""
    if config.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        stay_calm("serve")  # its handlers (a queue it no longer reads) go at the interpreter's exit
        return
    interrupt_once("serve")
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # the SIGINT uvicorn caught, raised once it stopped
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)

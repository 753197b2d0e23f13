"""A command stopped by Ctrl-C ends with its sentence and exit code 130 however long Ctrl-C is
held down (by SIGTERM, 143 and its sentence): a signal while its threads join or its interpreter
exits is told the command is stopping already (runtime.interrupts), not a KeyboardInterrupt
traceback from threading's shutdown, nor a death by SIGINT (exit status -2) in the exit's last
milliseconds."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port
from tests.server_support import fresh_query_db, serve_command

ROOT = Path(__file__).resolve().parent.parent

# A command whose work runs on a thread pool, as precompute's readers do: it waits in its pool
# until Ctrl-C, and its workers take a moment to finish their tasks as the process exits. It
# starts as from a terminal, SIGINT neither ignored nor blocked: a child inherits both from its
# parent, and once on a loaded CI box the held-down test's command slept its 60 s through every
# SIGINT and exited 0, as if the test's worker had SIGINT ignored or blocked when it started it.
SLOW_COMMAND = """
import signal, sys, time
from concurrent.futures import ThreadPoolExecutor
from cli.errors import run_reporting_errors

signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
signal.signal(signal.SIGINT, signal.default_int_handler)

def work():
    pool = ThreadPoolExecutor(2)
    for _ in range(8):
        pool.submit(time.sleep, 0.05)
    print("working", flush=True)
    time.sleep(60)

sys.exit(run_reporting_errors("slow", work))
"""


def ctrl_c_held_down(process: subprocess.Popen, timeout: float = 120.0, group: bool = False) -> None:
    """SIGINT every few milliseconds until the process exits, as a terminal sends with Ctrl-C
    held down: a signal lands in each stage of stopping, the interpreter's own exit included.
    `group`: to the process's group, as a terminal does (a server's workers too)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if group:
                os.killpg(process.pid, signal.SIGINT)
            else:
                process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            return
        time.sleep(0.003)


def test_a_command_stopped_by_ctrl_c_held_down_exits_130_with_its_sentence_alone():
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_COMMAND], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "working\n"
        ctrl_c_held_down(process)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line]  # say() writes a blank line first
    assert "soundscape slow: interrupted" in lines, err
    assert set(lines) <= {"soundscape slow: interrupted", "soundscape slow: SIGINT again: already stopping"}, err
    assert err.count("SIGINT again: already stopping") <= 1, err  # said once, not once per repeat


def test_a_command_stopped_by_sigterm_exits_143_with_a_sentence():
    """`docker stop` and `kill` send SIGTERM, which ended a command silently (Python's default)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_COMMAND], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline() == "working\n"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert err.strip() == "soundscape slow: stopped by SIGTERM", err


@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_stopped_by_ctrl_c_held_down_exits_quietly(bundle_path, store_path, workers):
    """uvicorn raises each SIGINT it caught again once it has stopped: held down, that printed the
    lifespan's CancelledError and multiprocessing's KeyboardInterrupt tracebacks from each worker,
    and a one-worker server could die by SIGINT (-2). server/serving.py stops it once."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SOUNDSCAPE_")}}
    env["SOUNDSCAPE_QUERY_DB"] = fresh_query_db()
    command = serve_command(bundle_path, store_path, port, "--workers", str(workers))
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_for_port(port, timeout=90)
        time.sleep(0.5)  # every worker up, not just the first to listen
        ctrl_c_held_down(process, group=True)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err
    assert err.count("SIGINT again: already stopping") <= 1, err

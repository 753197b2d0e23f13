"""A command stopped by Ctrl-C ends with its sentence and exit code 130 however long Ctrl-C is
held down: a signal while its threads join or its interpreter exits is told the command is
stopping already (runtime.interrupts), not a KeyboardInterrupt traceback from threading's
shutdown, nor a death by SIGINT (exit status -2) in the exit's last milliseconds."""

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A command whose work runs on a thread pool, as precompute's readers do: it waits in its pool
# until Ctrl-C, and its workers take a moment to finish their tasks as the process exits.
SLOW_COMMAND = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
from cli.errors import run_reporting_errors

def work():
    pool = ThreadPoolExecutor(2)
    for _ in range(8):
        pool.submit(time.sleep, 0.05)
    print("working", flush=True)
    time.sleep(60)

sys.exit(run_reporting_errors("slow", work))
"""


def ctrl_c_held_down(process: subprocess.Popen, timeout: float = 120.0) -> None:
    """SIGINT every few milliseconds until the process exits, as a terminal sends with Ctrl-C
    held down: a signal lands in each stage of stopping, the interpreter's own exit included."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
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

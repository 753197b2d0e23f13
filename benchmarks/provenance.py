"""What every benchmark's result says of its run (command, commit, date, machine) and how it is
written out. Kept apart from run.py so that a script run on a bare GPU machine imports nothing of
the server's."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def served_commit() -> str:
    """HEAD's short hash, with "+changes" when the served code (server/, runtime/, store/) differs
    from it: what was measured. A copy of the tree without git (as a lent GPU machine gets) takes
    it from BENCHMARK_COMMIT."""
    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return os.environ.get("BENCHMARK_COMMIT", "unknown")
    return head + ("+changes" if git("status", "--porcelain", "server", "runtime", "store") else "")


def provenance() -> dict:
    """What a benchmark's result says of its run: the command, the commit, the date, the machine."""
    return {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "commit": served_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def finite(value: object) -> object:
    """The value with every NaN or infinity in it as None: a figure that does not exist (an AUC
    over no positives) is null, since NaN is not JSON and strict readers (jq, browsers) refuse it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(result: object, indent: int = 2, default=None) -> str:
    """A result as strict JSON (non-finite numbers as null); `default` converts what json cannot."""
    plain = json.loads(json.dumps(result, default=default)) if default is not None else result
    return json.dumps(finite(plain), indent=indent, allow_nan=False)


def emit(result: dict, path: Path | None) -> None:
    """Print a benchmark's result as JSON and, given a path, write it there too."""
    text = dumps(result)
    if path is not None:
        path.write_text(text + "\n", encoding="utf-8")
    print(text)

"""The code checks, run by pytest so that CI (the README's test command) runs them: ruff's lint
rules and formatter, import-linter's layer contracts and mypy, all configured in pyproject.toml
and run with this interpreter's own tools (the `test` extra pins them). .pre-commit-config.yaml
runs the same commands before each commit; CONTRIBUTING.md says how to fix what they find."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_FILE_BYTES = 20 * 1024 * 1024  # CONTRIBUTING.md: large data is built or fetched, not committed

# name -> (command, what to do when it fails)
CHECKS = {
    "ruff check": (["ruff", "check", "."], "fix the findings (`ruff check --fix .` fixes the safe ones)"),
    "ruff format": (["ruff", "format", "--check", "."], "run `ruff format .`"),
    "import-linter": (
        ["lint-imports"],
        "an import crosses the layers of docs/architecture.md or closes a cycle: move the code to its layer",
    ),
    "mypy": (["mypy"], "fix the types (`# type: ignore[code]` only with a comment saying why)"),
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_code_check_passes(name: str) -> None:
    command, advice = CHECKS[name]
    tool = BIN / command[0]
    assert tool.is_file(), f"{tool} is missing: install the test extra (scripts/setup.sh train,test)"
    result = subprocess.run([str(tool), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        pytest.fail(f"`{shlex.join(command)}` failed; {advice}:\n{output[-6000:]}", pytrace=False)


def test_pre_commit_runs_the_same_checks() -> None:
    """Each check above is a local hook that runs the venv's tool with the same arguments (ruff's
    hooks get the changed files instead of `.`, and the formatter formats them instead of only
    checking), so a commit that passes its hooks passes these checks."""
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    entries = {}
    for hook in hooks.values():
        assert hook["language"] == "system", f"hook {hook['id']} must use the project's .venv (language: system)"
        entries[hook["id"]] = shlex.split(hook["entry"])
    for name, (command, _) in CHECKS.items():
        wanted = [f".venv/bin/{command[0]}", *(arg for arg in command[1:] if arg not in (".", "--check"))]
        assert any(entry[: len(wanted)] == wanted for entry in entries.values()), (
            f"no pre-commit hook runs {shlex.join(wanted)} (the '{name}' check)"
        )


def test_no_tracked_file_over_20_mb() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to measure")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    large = {
        str(p.relative_to(ROOT)): p.stat().st_size for p in paths if p.is_file() and p.stat().st_size > MAX_FILE_BYTES
    }
    assert not large, f"tracked files over 20 MB (build or fetch them instead): {large}"

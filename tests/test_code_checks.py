"""The code checks, run by pytest so that CI (the README's test command) runs them: ruff's lint
rules and formatter, import-linter's layer contracts and mypy, all configured in pyproject.toml
and run with this interpreter's own tools (the `test` extra pins them). .pre-commit-config.yaml
runs the same commands before each commit; CONTRIBUTING.md says how to fix what they find."""

from __future__ import annotations

import ast
import os
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
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
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


# Every package, the tests too (they read the docs, configs and manifests the product writes).
CODE = ("runtime", "store", "server", "precompute", "model", "corpus", "cli", "scripts", "benchmarks", "tests")


def text_calls_without_encoding(path: Path) -> list[str]:
    """'file:line' of each read_text, write_text or text-mode open() call that names no encoding.
    Ruff's PLW1514 (pyproject.toml) catches these where it can tell a Path, not on
    `(ROOT / name).read_text()`: this scan takes every read_text and write_text."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        mode = node.args[1] if name == "open" and len(node.args) > 1 else None
        mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
        binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
        plain_open = name == "open" and isinstance(node.func, ast.Name)
        if name in ("read_text", "write_text") or (plain_open and not binary):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_text_file_is_read_and_written_in_utf_8() -> None:
    """Without encoding= a text file is read in the machine's encoding: cp1252 on Windows, ASCII
    under a C locale with UTF-8 mode off (the demo bundle's tokenizer.json did not load)."""
    files = sorted(path for package in CODE for path in (ROOT / package).rglob("*.py"))
    assert [hit for path in files for hit in text_calls_without_encoding(path)] == []


def test_a_text_model_loads_under_a_bare_c_locale() -> None:
    """MiniLM's tokenizer.json holds non-ASCII tokens: a server whose locale encoding is ASCII
    (LC_ALL=C with Python's UTF-8 mode off, PYTHONUTF8=0) stopped on UnicodeDecodeError loading it."""
    from model.nn.text_towers import minilm_package_dir

    tokenizer = minilm_package_dir() / "tokenizer.json"
    code = (
        "import locale, sys; from runtime.text import HuggingFaceTokenizer; "
        f"t = HuggingFaceTokenizer({str(tokenizer)!r}, 16); ids, _ = t.encode(['caf\\u00e9 birdsong']); "
        "print(locale.getpreferredencoding(), ids.shape[0])"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ANSI_X3.4-1968", "1"]

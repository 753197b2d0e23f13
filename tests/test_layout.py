"""The layout rules of docs/architecture.md that code can check. import-linter checks the imports
as written (tests/test_code_checks.py); this checks what importing actually loads."""

import subprocess
import sys

# Imports every module of the torch-free packages, then the command line, in a fresh interpreter;
# prints the first module after whose import torch is loaded, or nothing.
TORCH_FREE = """
import importlib, importlib.util, pkgutil, sys
names = []
for package in ("runtime", "store", "server", "precompute"):
    path = importlib.util.find_spec(package).submodule_search_locations
    names += [package, *(m.name for m in pkgutil.walk_packages(path, package + "."))]
for name in [*names, "cli.main"]:
    importlib.import_module(name)
    if "torch" in sys.modules:
        print(name)
        break
"""


def test_torch_free_packages_never_load_torch():
    out = subprocess.run([sys.executable, "-c", TORCH_FREE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {out.stdout.strip()} loads torch"


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "export", "precompute", "serve"):
        assert command in out.stdout

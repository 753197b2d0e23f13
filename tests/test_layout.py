"""The layout rules of docs/architecture.md that code can check."""

import subprocess
import sys


def test_server_and_precompute_never_import_torch():
    code = (
        "import sys, server.app, server.asgi, server.commands, precompute.run, precompute.commands, cli.main; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "export", "precompute", "serve"):
        assert command in out.stdout

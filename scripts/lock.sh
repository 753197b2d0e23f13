#!/usr/bin/env bash
# Regenerate locks/*.txt from pyproject.toml with uv (installed into .venv when missing); run it after
# changing a dependency in pyproject.toml and commit the locks with it. --upgrade takes the newest
# versions pyproject allows instead of keeping the current pins. scripts/lock.py says more.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import packaging' 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check packaging
[ -x .venv/bin/uv ] || .venv/bin/pip install -q --disable-pip-version-check 'uv>=0.5'
exec .venv/bin/python scripts/lock.py "$@"

#!/usr/bin/env bash
# Set up .venv (with redis-server, docker-compose, chromium and curl from apt-get when missing) and run the
# whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,test redis-server docker-compose chromium curl
exec .venv/bin/python -m pytest "$@"

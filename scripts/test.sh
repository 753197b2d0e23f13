#!/usr/bin/env bash
# Set up .venv (with redis-server, docker-compose, chromium, curl and nginx-light, the replicas' caching proxy
# in tests/test_replicas.py, from apt-get when missing) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,test redis-server docker-compose chromium curl nginx-light
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Set up .venv (with redis-server, docker-compose, chromium, curl, nginx-light, the replicas' caching proxy
# in tests/test_replicas.py, wrk, the harness's load generator, and python3-qgis, QGIS for tests/test_qgis.py,
# from apt-get when missing) and run the whole test suite. Extra arguments go to pytest.
# The tests run in one worker per core and one more, at most 4 (pytest-xdist; the first worker to need the tiny
# bundle and store builds them, the others wait and read them), a test module's tests on one worker, the modules
# holding slow tests first (tests/conftest.py); -n 0 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train,test redis-server docker-compose chromium curl nginx-light wrk python3-qgis
# One worker more than the cores: the suite's processes also wait (on servers, subprocesses, sleeps and the
# shared fixtures); on 2 cores it took 981-998 s at -n 2 and 830-924 s at -n 3 (CONTRIBUTING.md).
workers=$(( $(nproc 2>/dev/null || echo 1) + 1 ))
[ "$workers" -gt 4 ] && workers=4
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"

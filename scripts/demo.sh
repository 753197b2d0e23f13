#!/usr/bin/env bash
# Set up .venv, build the demo world where missing (Blue Marble imagery, the bundle assembled from
# weights/demo, the store of levels 0..7) and serve it on http://127.0.0.1:8000. Extra arguments
# go to `soundscape demo`. The train extra is installed for the export of the frozen towers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh train
exec .venv/bin/soundscape demo "$@"

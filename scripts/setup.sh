#!/usr/bin/env bash
# Create .venv and install the project with the given extras (default: train).
# Usage: scripts/setup.sh [extras] [apt packages...]
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-train}
shift || true

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} with apt-get"
  as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
    { as_root apt-get update >/dev/null && as_root apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
}

python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed"'
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$python" -m venv .venv; }
fi
[ $# -gt 0 ] && apt_install "$@"
# torch is pinned here (not in pyproject) so this machine takes its local CPU build.
.venv/bin/pip install -q --disable-pip-version-check 'torch==2.13.*'
.venv/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"
# aisfx (CC BY 4.0 audio tower) pins numpy 1.23 and librosa 0.9 though it runs on current ones,
# so it cannot be a pyproject dependency: install it alone, without its declared dependencies.
case ",${extras}," in *,train,*) .venv/bin/pip install -q --disable-pip-version-check --no-deps 'aisfx==0.1.2' ;; esac

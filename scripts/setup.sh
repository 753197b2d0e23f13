#!/usr/bin/env bash
# Create .venv and install the project with the given extras (default: train) at the versions of
# their lock file, locks/EXTRAS.txt (extras joined by +, `core` for none; scripts/lock.sh makes them).
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
# The locked set (locks/, made by scripts/lock.sh), then the project itself without resolving again.
lock=locks/${extras//,/+}.txt
[ -f "$lock" ] || { echo "setup.sh: no lock for the extras '${extras}' ($lock); add the set to scripts/lock.py" \
                         "and run scripts/lock.sh" >&2; exit 2; }
pip=(.venv/bin/pip install -q --disable-pip-version-check)
# torch (CPU build, pinned in locks/torch.txt) is kept out of the locks: see there.
case ",${extras}," in *,train,*) "${pip[@]}" -r locks/torch.txt ;; esac
"${pip[@]}" -r "$lock"
"${pip[@]}" --no-deps -e .
# aisfx (CC BY 4.0 audio tower) pins numpy 1.23 and librosa 0.9 though it runs on current ones,
# so it cannot be a pyproject dependency: install it alone, without its declared dependencies.
case ",${extras}," in *,train,*) "${pip[@]}" --no-deps 'aisfx==0.1.2' ;; esac

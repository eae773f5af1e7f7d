#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package with the given extras.
# Sourced by scripts/demo.sh and scripts/test.sh. torch is pinned in pyproject.toml to the CPU build
# available on the project's machines; no other step is needed on a fresh machine.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
python=${PYTHON:-python3}
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
# shellcheck disable=SC1091
source "$root/.venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e "$root${extras:+[$extras]}"

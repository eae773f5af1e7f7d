#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package with the given extras,
# every package at the version pinned in constraints.txt (the lock: what the suite last passed with).
# Sourced by scripts/demo.sh and scripts/test.sh; no other step is needed on a fresh machine.
#
#   source scripts/setup-env.sh [EXTRAS]      # e.g. "space", "test"; the venv stays activated
#
# The lock is written by scripts/refresh-lock.sh, never by hand. pyproject.toml keeps the ranges the code supports
# (for `pip install` into one's own environment); the lock pins one tested point inside them, so a fresh machine next
# year installs what CI tested. The build tools (pip, setuptools, wheel) are pinned too and the package is built
# without build isolation, so nothing of the install itself floats.
#
# The eval and test extras also get lmms-eval, installed without its dependency set (see
# [tool.llava-codebook.no-deps] in pyproject.toml), also at its pinned version.
#
# The install is skipped when .venv already holds one made from the same pyproject.toml and lock with the same
# extras: a stamp file per extras set (.venv/.installed-<extras>) records their hash. The package is installed in
# editable mode, so source changes need no reinstall. A fresh machine (no .venv) always installs everything; to
# force a reinstall, delete .venv/.installed-*.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
python=${PYTHON:-python3}
venv=$root/.venv
lock=$root/constraints.txt
if [ ! -f "$lock" ]; then
  echo "error: the lock $lock is missing; run scripts/refresh-lock.sh to write it" >&2
  return 1 2>/dev/null || exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
stamp="$venv/.installed-${extras:-base}"
wanted="$(cat "$root/pyproject.toml" "$lock" | sha256sum | cut -d' ' -f1) ${extras}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  python -m pip install --quiet --constraint "$lock" pip setuptools wheel
  python -m pip install --quiet --constraint "$lock" --no-build-isolation -e "$root${extras:+[$extras]}"
  # Packages an extra needs whose own dependency sets must not be resolved (lmms-eval's pulls torchvision and
  # another torch), listed per extra in pyproject.toml under [tool.llava-codebook.no-deps].
  nodeps=$(python -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    table = tomllib.load(f).get("tool", {}).get("llava-codebook", {}).get("no-deps", {})
print(" ".join(sorted({spec for extra in sys.argv[2].split(",") for spec in table.get(extra.strip(), [])})))
' "$root/pyproject.toml" "$extras")
  if [ -n "$nodeps" ]; then
    # shellcheck disable=SC2086  # one word per requirement
    python -m pip install --quiet --constraint "$lock" --no-deps $nodeps
  fi
  # Written only after a successful install: an interrupted or failed one is retried next time.
  echo "$wanted" >"$stamp"
fi

#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package with the given extras.
# Sourced by scripts/demo.sh and scripts/test.sh. torch is pinned in pyproject.toml to the CPU build
# available on the project's machines; no other step is needed on a fresh machine. The eval and test extras also
# get lmms-eval, installed without its dependency set (see [tool.llava-codebook.no-deps] in pyproject.toml).
#
# The install is skipped when .venv already holds one made from the same pyproject.toml with the same extras: a
# stamp file per extras set (.venv/.installed-<extras>) records the hash of pyproject.toml it was installed from.
# The package is installed in editable mode, so source changes need no reinstall; a changed pyproject.toml
# (dependencies, extras, entry points) does. A fresh machine (no .venv) always installs everything; to force a
# reinstall, delete .venv/.installed-*.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extras=${1:-}
python=${PYTHON:-python3}
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
# shellcheck disable=SC1091
source "$root/.venv/bin/activate"
stamp="$root/.venv/.installed-${extras:-base}"
wanted="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) ${extras}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e "$root${extras:+[$extras]}"
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
    python -m pip install --quiet --no-deps $nodeps
  fi
  # Written only after a successful install: an interrupted or failed one is retried next time.
  echo "$wanted" >"$stamp"
fi

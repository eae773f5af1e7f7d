#!/usr/bin/env bash
# Catch drift before users do, and refresh the lock in one step.
#
#   bash scripts/refresh-lock.sh                # newest allowed versions -> suite -> constraints.txt if it passes
#   bash scripts/refresh-lock.sh --check        # the same, but never writes the lock (report only)
#   bash scripts/refresh-lock.sh -- -k lmms     # arguments after -- go to pytest
#
# It creates a scratch venv (.venv-latest, or $DRIFT_VENV), installs the package with every extra at the newest
# versions pyproject.toml allows (no lock), prints how they differ from constraints.txt, and runs the whole suite
# there. When the suite passes (and --check is not given) it writes those exact versions to constraints.txt, which is
# what scripts/setup-env.sh, the README's two commands and CI install. When it fails, the lock is left as it is and the
# failures say what the new versions break: bound the culprit in pyproject.toml (with a comment saying why), rerun.
#
# torch is held at the lock's version (or $TORCH_SPEC, e.g. TORCH_SPEC='torch==2.14.1'): on the project's machines
# any torch but the CPU build on local disk is a multi-GB CUDA download. The packages installed without their
# dependencies ([tool.llava-codebook.no-deps]) are exact pins there and stay as pinned.
# Not part of .ci/run: it asks the package index for new releases, which is what CI must not depend on.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lock="$root/constraints.txt"
venv=${DRIFT_VENV:-$root/.venv-latest}
python=${PYTHON:-python3}
write=1
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --check) write=0 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "usage: bash scripts/refresh-lock.sh [--check] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
  esac
  shift
done
torch_spec=${TORCH_SPEC:-$(grep -E '^torch==' "$lock" 2>/dev/null || echo torch)}

rm -rf "$venv"
"$python" -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
extras=$(python -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(",".join(sorted(tomllib.load(f)["project"]["optional-dependencies"])))
' "$root/pyproject.toml")
nodeps=$(python -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    table = tomllib.load(f).get("tool", {}).get("llava-codebook", {}).get("no-deps", {})
print(" ".join(sorted({spec for specs in table.values() for spec in specs})))
' "$root/pyproject.toml")
echo "== installing the newest versions pyproject.toml allows (extras: $extras; $torch_spec held) into $venv"
python -m pip install --quiet --upgrade pip setuptools wheel
python -m pip install --quiet "$torch_spec"
python -m pip install --quiet --upgrade --upgrade-strategy eager --no-build-isolation -e "$root[$extras]" "$torch_spec"
if [ -n "$nodeps" ]; then
  # shellcheck disable=SC2086  # one word per requirement
  python -m pip install --quiet --no-deps $nodeps
fi
echo "== versions against the lock"
python "$root/scripts/lockfile.py" diff "$lock" "$venv/bin/python"
# The lock these versions would make; the suite's own checks of the lock (tests/test_lock.py) read this one.
candidate="$venv/constraints.candidate.txt"
python "$root/scripts/lockfile.py" write "$candidate" "$venv/bin/python" >/dev/null

echo "== the suite on these versions"
cd "$root"
status=0
HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False LLAVA_CODEBOOK_LOCK="$candidate" \
  python -m pytest -q "${pytest_args[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "== the suite FAILED on the newest versions (exit $status): the lock is unchanged." >&2
  echo "   The failures above are what the versions listed above break." >&2
  exit "$status"
fi
if [ "$write" -eq 1 ] && [ ${#pytest_args[@]} -eq 0 ]; then
  cp "$candidate" "$lock"
  echo "== the suite passed: constraints.txt now pins these versions. Commit it."
else
  echo "== the suite passed; the lock was not written (--check, or a partial run with pytest arguments)."
fi

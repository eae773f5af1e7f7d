#!/usr/bin/env bash
# The test job: install everything the suite needs (package, test extras, headless Chromium for the browser
# test) and run the whole suite, slow end-to-end tests included. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/setup-env.sh" test
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "warning: could not install chromium + chromium-driver; the browser test will be skipped" >&2
  fi
fi
cd "$root"
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec python -m pytest -q "$@"

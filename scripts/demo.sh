#!/usr/bin/env bash
# The main job: launch the Space locally. With no argument it serves the embedded tiny random-weight model
# (offline, built in code in seconds); with a Hub model id (or a local directory) it serves that model:
#   bash scripts/demo.sh                                    # embedded default, offline
#   bash scripts/demo.sh org/llava-next-codebook            # a pruning-enabled repo (trust_remote_code)
#   CODEBOOK_REPO=org/codebook bash scripts/demo.sh llava-hf/llama3-llava-next-8b-hf
#   bash scripts/demo.sh --port 7861                        # options (after the model id, if any) go to the app
# The install runs on the first start only (and after pyproject.toml changes): see setup-env.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/scripts/setup-env.sh" space
export GRADIO_ANALYTICS_ENABLED=False
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  export MODEL_ID="$1"
  shift
fi
exec python "$root/spaces_app/app.py" "$@"

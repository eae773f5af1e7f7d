#!/usr/bin/env bash
# The GPU check, one command (see benchmarks/gpu.py): every strategy at LLaVA-NeXT-7B and LLaVA-1.5-7B geometry
# (random weights, bf16), batch sizes 1 and 8, mixed prompts; writes benchmarks/results/gpu-<gpu name>.md and .json.
# Sized to finish in under 8 minutes on one H100 (--time-budget caps the measuring; build and import come on top).
#
#   bash benchmarks/gpu.sh            # on a machine with a CUDA GPU
#   bash benchmarks/gpu.sh --smoke    # tiny geometry on the CPU: checks that the script runs (not a measurement)
#
# It imports this checkout directly (no install), with $PYTHON (default python3): that Python needs torch with CUDA,
# transformers (the version constraints.txt pins; the software line of the table says which ran), tokenizers,
# safetensors, huggingface_hub, numpy and pillow.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" benchmarks/gpu.py "$@"

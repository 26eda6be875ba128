#!/usr/bin/env bash
# The main job: `hf-calib demo` (quick by default, about 10 minutes on 2 CPU cores, offline).
# Extra arguments go to the demo (e.g. --full, --output-dir DIR, --seed N; see --help).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${HF_CALIB_VENV:-$repo/.venv}"
cd "$repo"
exec "$venv/bin/hf-calib" demo "$@"

#!/usr/bin/env bash
# The full test suite in the project's own virtual environment (created if missing).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not integration"`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup_env.sh"
venv="${HF_CALIB_VENV:-$repo/.venv}"
cd "$repo"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
exec "$venv/bin/python" -m pytest -ra "$@"

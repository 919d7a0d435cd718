#!/usr/bin/env bash
# Run the whole test suite on a real local SLURM: install and start everything it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/local-slurm.sh start
bash tools/setup-venv.sh dev
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
exec pytest -n 4 --durations=15 "$@"

#!/usr/bin/env bash
# Run the whole test suite on a real local SLURM: install and start everything it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/local-slurm.sh start
bash tools/setup-venv.sh dev
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
# Independent tests in parallel, then, one at a time, those that stop SLURM daemons or
# count slurmctld's RPCs.
pytest -n 4 --durations=10 -m "not disruptive and not serial" "$@"
pytest --durations=5 -m "disruptive or serial" "$@"

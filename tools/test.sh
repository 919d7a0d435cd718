#!/usr/bin/env bash
# Run the whole test suite on a real local SLURM and on both StepUp hosts: install and start
# everything it needs. Extra arguments are passed to every pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/local-slurm.sh start
bash tools/setup-venv.sh 4 dev
bash tools/setup-venv.sh 3 test
# The original releases, for tests/test_compat.py.
bash tools/setup-venv.sh orig3
bash tools/setup-venv.sh orig4
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Independent tests in parallel (they mostly wait for SLURM): the whole suite on StepUp 4, the
# tests that run a real workflow again on StepUp 3. Then, one at a time, those that stop SLURM
# daemons or count slurmctld's RPCs.
echo "=== StepUp 4: all tests"
.venv/bin/pytest -n 6 --durations=10 -m "not disruptive and not serial" "$@"
echo "=== StepUp 3: end-to-end tests"
.venv3/bin/pytest -n 6 --durations=10 -m "e2e and not disruptive and not serial" "$@"
echo "=== StepUp 4: disruptive and serial tests"
.venv/bin/pytest --durations=5 -m "disruptive or serial" "$@"

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
# The bash wrapper submitted in place of each job script: its template and a rendered example
# must be valid bash and clean for shellcheck.
if ! command -v shellcheck > /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck > /dev/null
fi
rendered=$(mktemp --suffix=.sh)
.venv/bin/python -c '
from path import Path
from stepup.queue.wrapper import JobScript, render_wrapper
script = JobScript(Path("slurmjob.sh"), ("#SBATCH -N 1",), None, "./slurmjob.sh")
print(render_wrapper(script, "stepup-queue-0123456789abcdef"), end="")
' > "$rendered"
for wrapper in stepup/queue/wrapper.sh "$rendered"; do
    bash -n "$wrapper"
    shellcheck "$wrapper"
done
rm "$rendered"
# Independent tests in parallel (they mostly wait for SLURM): the whole suite on StepUp 4, the
# tests that run a real workflow again on StepUp 3. Then, one at a time, those that stop SLURM
# daemons or count slurmctld's RPCs.
echo "=== StepUp 4: all tests"
.venv/bin/pytest -n 6 --durations=10 -m "not disruptive and not serial" "$@"
echo "=== StepUp 3: end-to-end tests"
.venv3/bin/pytest -n 6 --durations=10 -m "e2e and not disruptive and not serial" "$@"
echo "=== StepUp 4: disruptive and serial tests"
.venv/bin/pytest --durations=5 -m "disruptive or serial" "$@"

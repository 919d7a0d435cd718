#!/usr/bin/env bash
# Run the basic example of the documentation (docs/examples/slurm-basic) on a local SLURM and
# show each job with `stepup jobs` and a timeline picture of them. Meant for a fresh Debian
# machine, as root:
#
#   bash tools/demo.sh
#
# Exits with 0 when the example behaves as documented: the jobs in pass/ and sweep/value*/
# succeed and the job in fail/ fails with exit code 1.
set -euo pipefail
cd "$(dirname "$0")/.."
# STEPUP_QUEUE_HOST=3 runs the demo on StepUp Core 3 instead of 4.
host=${STEPUP_QUEUE_HOST:-4}
bash tools/local-slurm.sh start
bash tools/setup-venv.sh "$host" test
if [[ $host == 3 ]]; then
    export PATH="$PWD/.venv3/bin:$PATH"
    run=(stepup boot -n 8 --no-progress)
else
    export PATH="$PWD/.venv/bin:$PATH"
    run=(stepup build -j 8 -k --no-progress)
fi

work=$(mktemp -d -t stepup-queue-demo.XXXXXX)
cp -r docs/examples/slurm-basic "$work/slurm-basic"
cd "$work/slurm-basic"
# The example's plan.py is for StepUp 4; plan-stepup3.py is the same plan for StepUp 3.
if [[ $host == 3 ]]; then cp plan-stepup3.py plan.py; fi
# Short waits for a quick demo on an idle local cluster; keep the defaults on a real one.
export STEPUP_SBATCH_CACHE_TIMEOUT=2
export STEPUP_SBATCH_POLLING_INTERVAL=0.2
export STEPUP_SBATCH_TIME_MARGIN=0.1
export STEPUP_SBATCH_RET_TIMEOUT=5
export STEPUP_QUEUE_CACHE_DIR="$work/cache"

echo "=== ${run[*]} in $PWD"
set +e
"${run[@]}" < /dev/null
code=$?
set -e
echo
echo "=== ${run[*]} exited with code $code (non-zero: the step in fail/ failed, as it should)"
echo
echo "=== stepup jobs: each job's state, exit code, queue and run time (SLURM and the logs)"
timeline="$PWD/jobs-timeline.png"
stepup jobs --timeline "$timeline"
ok=yes
check() {
    local folder=$1 expected=$2 ret
    ret=$(cat "$folder/slurmjob.ret" 2> /dev/null || echo "?")
    if [[ $ret != "$expected" ]]; then
        echo "    expected exit code $expected in $folder/slurmjob.ret, found $ret" >&2
        ok=no
    fi
}
check pass 0
check fail 1
for value in 1 2 3; do check "sweep/value$value" 0; done
echo
echo "=== Some outputs"
for file in pass/pi.txt fail/slurmjob.err sweep/value{1,2,3}/result.txt; do
    printf '%-25s %s\n' "$file" "$(cat "$file" 2> /dev/null || echo "(missing)")"
done
echo
echo "The example is in $PWD"
echo "The timeline of its jobs is $timeline"
if [[ $ok == yes && $code != 0 ]]; then
    echo "Demo OK: four jobs succeeded and the job in fail/ failed with exit code 1."
else
    echo "Demo FAILED: see the messages above." >&2
    exit 1
fi

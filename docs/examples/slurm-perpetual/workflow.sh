#!/usr/bin/env bash
#SBATCH --job-name=workflow
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --output=workflow-%j.out
# Run a StepUp workflow as a SLURM job. Before the wall time (--time above) runs
# out, StepUp is stopped gracefully. When the workflow did not finish, this
# script submits itself again: the next run picks up the jobs submitted by this
# one.
#
# Submit it from the folder with plan.py, in a shell where StepUp Queue is
# installed:
#   sbatch workflow.sh

# Seconds after which StepUp is asked to stop. Leave time for the shutdown
# before the wall time.
STOP_AFTER=${WORKFLOW_STOP_AFTER:-3000}
# Seconds between the first `stepup shutdown` and the second one. The first lets
# running steps finish; the second interrupts steps that still wait for a SLURM
# job. The jobs keep running.
GRACE=${WORKFLOW_STOP_GRACE:-300}
# The id of the workflow job that is queued or running now, so that `scancel
# "$(cat workflow.jobid)"` stops this workflow and no other job of the same
# name.
echo "$SLURM_JOB_ID" > workflow.jobid

# StepUp 4 runs `stepup build`, StepUp 3 `stepup boot`; each waiting step holds
# one of the slots given with -j (StepUp 4) or -n (StepUp 3).
if stepup build --help > /dev/null 2>&1; then
    stepup build -j 8 --no-progress &
else
    stepup boot -n 8 --no-progress &
fi
boot=$!
stops=0
while kill -0 "$boot" 2> /dev/null; do
    # Stop once after STOP_AFTER seconds, and once more GRACE seconds later.
    if ((SECONDS >= STOP_AFTER + stops * GRACE && stops < 2)); then
        echo "workflow.sh: stepup shutdown after ${SECONDS} s"
        timeout 60 stepup shutdown || true
        stops=$((stops + 1))
    fi
    sleep 1
done
wait "$boot"
code=$?
if ((stops > 0 && code != 0)); then
    echo "workflow.sh: interrupted (code $code), submitting workflow.sh again"
    # The exit code of this job is that of sbatch: non-zero when the chain
    # breaks here.
    sbatch --parsable workflow.sh > workflow.jobid
    exit
fi
echo "workflow.sh: StepUp exited with code $code"
exit "$code"

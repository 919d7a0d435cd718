"""`sq-sbatch-and-wait [EXT] [--rc RC] [--onchange X]`: the command of an sbatch step on StepUp 4.

StepUp 4 calls this console script in a child of its forkserver and ignores what `main`
returns: the step's return code is only what `sys.exit` gets. Nothing here imports StepUp.
"""

import argparse
import os
import sys

from path import Path

from .entry import add_step_arguments, run_step
from .version import add_version_argument

__all__ = ("main",)

PROG = "sq-sbatch-and-wait"
OUTSIDE = "--outside-stepup"

_DESCRIPTION = """\
The command of an sbatch() step of a StepUp 4 workflow, which StepUp runs in the job folder.
It submits the folder's slurmjob{EXT} once (a restarted workflow finds the job again instead of
submitting it twice), waits until SLURM is done with it and exits with the job's exit code.
Write sbatch("folder/") in plan.py and run `stepup build` rather than calling it by hand.
"""

# StepUp 4 sets it for every step it runs.
_STEP_VARIABLE = "STEPUP_STEP_INP_DIGEST"
# The input digest in the log of a job submitted by hand: a workflow that later adds the folder
# sees changed inputs, and STEPUP_QUEUE_ONCHANGE decides, as for any other change.
BY_HAND_DIGEST = "0" * 64


def main(argv: list[str] | None = None):
    """Run the sbatch step in the current folder and exit with the job's exit code."""
    words = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION)
    add_step_arguments(parser)
    parser.add_argument(
        OUTSIDE,
        action="store_true",
        help="Submit and wait although no StepUp step runs this command (no input checks).",
    )
    add_version_argument(parser)
    # Here --help, --version and bad arguments get argparse's usual answer and exit.
    args = parser.parse_args(words)
    if _STEP_VARIABLE not in os.environ and not args.outside_stepup:
        print(
            f"Error: {PROG} runs as a step of a StepUp 4 workflow, but no StepUp step runs it "
            f"({_STEP_VARIABLE} is not set). By hand, it would submit the job script in "
            f"{Path.cwd()} and wait for it. Add sbatch(...) to plan.py and run `stepup build`, "
            f"or pass {OUTSIDE} to submit and wait anyway.",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.outside_stepup:
        os.environ.setdefault(_STEP_VARIABLE, BY_HAND_DIGEST)
    sys.exit(run_step([word for word in words if word != OUTSIDE], PROG, "stepup build"))

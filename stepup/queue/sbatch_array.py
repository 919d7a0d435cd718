"""`sq-sbatch-array MANIFEST`: the command of an sbatch_array() step on StepUp 4.

StepUp 4 calls this console script in the folder of plan.py and ignores what `main` returns:
the step's return code is only what `sys.exit` gets. Nothing here imports StepUp.
"""

import argparse
import sys

from .entry import run_array_step
from .version import add_version_argument

__all__ = ("main",)

PROG = "sq-sbatch-array"

_DESCRIPTION = """\
The command of an sbatch_array() step of a StepUp 4 workflow, which StepUp runs in the folder of
plan.py. It submits the job scripts of all job folders named in the manifest (written by
sbatch_array()) once as SLURM job arrays, waits for all of them and exits with 0 when all
succeeded. Write sbatch_array([...]) in plan.py and run `stepup build` rather than calling it
by hand.
"""


def main(argv: list[str] | None = None):
    """Run the sbatch_array step of a manifest and exit with 0 when every job succeeded."""
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION)
    parser.add_argument("manifest", help="The manifest written by sbatch_array() in plan.py.")
    add_version_argument(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sys.exit(run_array_step(args.manifest, "stepup build"))

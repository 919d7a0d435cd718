"""`sq-sbatch-and-wait [EXT] [--rc RC] [--onchange X]`: the command of an sbatch step on StepUp 4.

StepUp 4 calls this console script in a child of its forkserver and ignores what `main`
returns: the step's return code is only what `sys.exit` gets. Nothing here imports StepUp.
"""

import sys

from .entry import run_step

__all__ = ("main",)


def main(argv: list[str] | None = None):
    """Run the sbatch step in the current folder and exit with the job's exit code."""
    words = sys.argv[1:] if argv is None else argv
    sys.exit(run_step(words, "sq-sbatch-and-wait", "stepup build"))

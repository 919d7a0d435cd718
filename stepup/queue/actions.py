"""The `sbatch` action of StepUp 3, run by a worker for each step of `stepup.queue.api.sbatch`.

This module must not use `from __future__ import annotations`: StepUp 3 checks that the
action's return annotation is the class `int` itself. It imports nothing of StepUp, so that it
also imports cleanly beside StepUp 4 (which has no actions).
"""

import argparse
import shlex
import sys

from .entry import parse_step_args, run_array_step, run_step

__all__ = ("parse_sbatch_args", "sbatch", "sbatcharray")


def parse_sbatch_args(argstr: str) -> argparse.Namespace:
    """Parse the arguments of the sbatch action, e.g. `.py --rc='source env.sh'`.

    Parameters
    ----------
    argstr
        The action's arguments, as a shell-quoted string.

    Returns
    -------
    args
        See `stepup.queue.entry.parse_step_args`.

    Raises
    ------
    ValueError
        When the arguments cannot be parsed.
    """
    return parse_step_args(_split(argstr), "sbatch")


def _split(argstr: str) -> list[str]:
    try:
        return shlex.split(argstr)
    except ValueError as exc:
        raise ValueError(f"Invalid arguments of the sbatch action {argstr!r}: {exc}") from None


def sbatch(argstr: str, work_thread: "WorkThread") -> int:  # noqa: F821
    """Submit `slurmjob{ext}` in the step's folder once, wait for it, return its exit code.

    Parameters
    ----------
    argstr
        Optional extension of the job script (default `.sh`), `--rc=COMMAND` and
        `--onchange=raise|resubmit|ignore`.
    work_thread
        The StepUp worker thread running this action (asked for by name, unused).

    Returns
    -------
    returncode
        The exit code of the job script, or 1 when the job could not run or did not finish.
    """
    try:
        words = _split(argstr)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return run_step(words, "sbatch", "stepup boot")


def sbatcharray(argstr: str, work_thread: "WorkThread") -> int:  # noqa: F821
    """Submit the job folders of an `sbatch_array()` step as job arrays and wait for them.

    Parameters
    ----------
    argstr
        The manifest file written by `sbatch_array()`, e.g. `slurmarray.json`.
    work_thread
        The StepUp worker thread running this action (asked for by name, unused).

    Returns
    -------
    returncode
        0 when every folder's job succeeded, else 1.
    """
    try:
        words = _split(argstr)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if len(words) != 1:
        print(f"Error: sbatcharray takes one manifest file, got {argstr!r}", file=sys.stderr)
        return 1
    return run_array_step(words[0], "stepup boot")

"""The `sbatch` action, run by a StepUp worker for each step made by `stepup.queue.api.sbatch`.

This module must not use `from __future__ import annotations`: StepUp checks that the
action's return annotation is the class `int` itself.
"""

import argparse
import shlex
import sys

from path import Path
from stepup.core.worker import WorkThread

from .config import Config
from .lifecycle import JobError, run_job

__all__ = ("parse_sbatch_args", "sbatch")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(
            f"Invalid arguments of the sbatch action: {message}. {self.format_usage()}"
        )


def parse_sbatch_args(argstr: str) -> argparse.Namespace:
    """Parse the arguments of the sbatch action, e.g. `.py --rc='source env.sh'`.

    Parameters
    ----------
    argstr
        The action's arguments, as a shell-quoted string.

    Returns
    -------
    args
        With attributes `ext` (default `.sh`) and `rc` (default `None`).

    Raises
    ------
    ValueError
        When the arguments cannot be parsed.
    """
    parser = _ArgumentParser(prog="sbatch", add_help=False)
    parser.add_argument("ext", nargs="?", default=".sh")
    parser.add_argument("--rc", default=None)
    try:
        words = shlex.split(argstr)
    except ValueError as exc:
        raise ValueError(f"Invalid arguments of the sbatch action {argstr!r}: {exc}") from None
    return parser.parse_args(words)


def sbatch(argstr: str, work_thread: WorkThread) -> int:
    """Submit `slurmjob{ext}` in the step's folder once, wait for it, return its exit code.

    Parameters
    ----------
    argstr
        Optional extension of the job script (default `.sh`) and `--rc=COMMAND`.
    work_thread
        The StepUp worker thread running this action.

    Returns
    -------
    returncode
        The exit code of the job script, or 1 when the job could not run or did not finish.
    """
    try:
        args = parse_sbatch_args(argstr)
        return run_job(args.ext, args.rc, Config.from_environ())
    except (ValueError, JobError) as exc:
        # The message says what went wrong and what to do: a traceback would not help.
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A full disk, an exceeded quota or a read-only folder: no traceback, just the file.
        where = "" if exc.filename is None else f": {exc.filename}"
        print(
            f"Error: {exc.strerror or exc}{where}\n"
            f"Free space or fix the permissions in {Path.cwd()}, then run the workflow again: "
            "a job submitted before the error is found again, not submitted twice.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            "Interrupted while waiting. The job is left alone: a new `stepup boot` waits for it "
            "again, `stepup canceljobs` cancels it.",
            file=sys.stderr,
        )
        return 1

"""What an sbatch step runs on either host: read its arguments, run the job, report the end.

StepUp 3 calls the `sbatch` action (`actions.py`), StepUp 4 the console script
`sq-sbatch-and-wait` (`sbatch_and_wait.py`); both hand their words to `run_step`, which turns
every expected failure into a clear message and a return code. Nothing here imports StepUp.
"""

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping

from path import Path

from .config import Config, OnChange
from .errors import JobError, SubmitInterrupted
from .lifecycle import run_job

__all__ = (
    "HOST_VARIABLES",
    "add_step_arguments",
    "job_environment",
    "parse_step_args",
    "run_step",
)

# Variables by which StepUp steers the step that runs us. A job that inherited them would talk
# to (or write into) the workflow that submitted it, e.g. when it runs a StepUp workflow itself.
HOST_VARIABLES = (
    "STEPUP_DIRECTOR_SOCKET",
    "STEPUP_REPORTER_SOCKET",
    "STEPUP_ROOT",
    "STEPUP_BUILD_LOG_LEVEL",
    "STEPUP_JOB_I",
    "STEPUP_STEP_I",
    "STEPUP_STEP_INP_DIGEST",
    "STEPUP_STEP_NEED",
)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(f"Invalid arguments of {self.prog}: {message}. {self.format_usage()}")


def add_step_arguments(parser: argparse.ArgumentParser):
    """Add the arguments of an sbatch step: `[EXT] [--rc RC] [--onchange X]`."""
    parser.add_argument(
        "ext", nargs="?", default=".sh", help="The extension of the job script (default: .sh)."
    )
    parser.add_argument(
        "--rc", default=None, help="Shell code run before sbatch, e.g. 'source env.sh'."
    )
    parser.add_argument(
        "--onchange",
        default=None,
        choices=[m.value for m in OnChange],
        help="What to do with a job whose inputs changed (default: STEPUP_QUEUE_ONCHANGE).",
    )


def parse_step_args(words: list[str], prog: str) -> argparse.Namespace:
    """Parse the arguments of an sbatch step, e.g. `['.py', '--rc=source env.sh']`.

    Parameters
    ----------
    words
        The arguments after the command name.
    prog
        The command name, for error messages: `sbatch` or `sq-sbatch-and-wait`.

    Returns
    -------
    args
        With attributes `ext` (default `.sh`), `rc` and `onchange` (both default `None`).

    Raises
    ------
    ValueError
        When the arguments cannot be parsed.
    """
    parser = _ArgumentParser(prog=prog, add_help=False)
    add_step_arguments(parser)
    return parser.parse_args(words)


def job_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment in which sbatch runs, and which the job inherits: the step's own
    environment without the variables by which StepUp steers the step."""
    return {name: value for name, value in environ.items() if name not in HOST_VARIABLES}


def run_step(words: list[str], prog: str, rerun: str) -> int:
    """Submit `slurmjob{ext}` in the current folder once, wait for it, return its exit code.

    Parameters
    ----------
    words
        The step's arguments, see `parse_step_args`.
    prog
        The command name, for error messages.
    rerun
        The command that runs the workflow again, e.g. `stepup build`, for messages.

    Returns
    -------
    returncode
        The exit code of the job script, or 1 when the job could not run or did not finish.
    """
    try:
        args = parse_step_args(words, prog)
        config = Config.from_environ()
        for warning in config.warnings:
            print(f"Warning: {warning}", file=sys.stderr)
        if args.onchange is not None:
            config = dataclasses.replace(
                config, onchange=OnChange(args.onchange), onchange_source="sbatch(onchange=...)"
            )
        digest = os.environ.get("STEPUP_STEP_INP_DIGEST", "")
        return run_job(args.ext, args.rc, digest, config, job_environment(os.environ))
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
    except SubmitInterrupted as exc:
        if exc.maybe_submitted:
            what = (
                f"The submission may have reached SLURM: a new `{rerun}` looks for its job "
                "before it submits again, and waits for it."
            )
        else:
            what = f"No job was submitted: a new `{rerun}` submits it."
        print(f"Interrupted while submitting. {what}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"Interrupted while waiting. The job is left alone: a new `{rerun}` waits for it "
            "again, `stepup canceljobs` cancels it.",
            file=sys.stderr,
        )
        return 1

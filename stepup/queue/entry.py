"""What an sbatch step runs on either host: read its arguments, run the job, report the end.

StepUp 3 calls the `sbatch` action (`actions.py`), StepUp 4 the console script
`sq-sbatch-and-wait` (`sbatch_and_wait.py`); both hand their words to `run_step`, which turns
every expected failure into a clear message and a return code. Nothing here imports StepUp.
"""

import argparse
import dataclasses
import functools
import os
import resource
import sys
from collections.abc import Callable, Mapping

from path import Path

from .config import Config, OnChange
from .errors import JobError, SubmitInterrupted
from .lifecycle import run_job
from .openfiles import (
    OpenFileLimitError,
    files_needed,
    parse_limits,
    refusal_message,
    slots_from_argv,
)

__all__ = (
    "HOST_VARIABLES",
    "NOFILE_VARIABLE",
    "add_step_arguments",
    "check_open_files",
    "job_environment",
    "parse_step_args",
    "raise_open_file_limit",
    "run_array_step",
    "run_step",
)

# The soft open-file limit before `raise_open_file_limit` raised it: steps restore it, so that
# sbatch and the job (SLURM propagates the submitter's limits) get the user's own.
NOFILE_VARIABLE = "STEPUP_QUEUE_NOFILE_SOFT"

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
    NOFILE_VARIABLE,
)
# The commands that start StepUp's director: `stepup build` (`sb`) and `stepup boot`.
_DIRECTOR_COMMANDS = ("build", "boot")
_TOP_OPTIONS_WITH_VALUE = ("--root", "-l", "--log-level")


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


def raise_open_file_limit(argv: list[str]):
    """Raise the soft open-file limit to the hard one in a `stepup build` or `boot` process.

    StepUp imports the tools of every extension before it parses its command line, and starts
    its director only afterwards: the director, the forkserver and all steps inherit the
    raised limit (a process cannot raise its parent's). Says so once on stderr, and leaves
    other `stepup` commands alone.

    Parameters
    ----------
    argv
        The command line of the process, `sys.argv`.
    """
    if Path(argv[0]).name == "sb" or _subcommand(argv[1:]) in _DIRECTOR_COMMANDS:
        _raise_once()


def _subcommand(words: list[str]) -> str | None:
    # The first word that is neither an option nor the value of one of StepUp's (3 and 4)
    # top-level options, e.g. `stepup --root DIR boot`.
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in _TOP_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


@functools.cache
def _raise_once():
    # Every tool of StepUp Queue registers through the hook: the first one acts.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        # An unlimited hard limit is above the kernel's nr_open: no number to raise to.
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return
    os.environ.setdefault(NOFILE_VARIABLE, str(soft))
    print(
        f"StepUp Queue raised the soft limit of open files from {soft} to {hard} (the hard "
        "limit), so that StepUp's director can hold more waiting steps; jobs get "
        f"the limit {soft}.",
        file=sys.stderr,
    )


def _director() -> tuple[list[str], str] | None:
    # The command line and /proc/PID/limits of the closest ancestor that is StepUp's director:
    # the parent of a StepUp 3 worker, the grandparent of a StepUp 4 forkserver child.
    pid = os.getppid()
    for _ in range(8):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            if "stepup.core.director" in argv:
                return argv, Path(f"/proc/{pid}/limits").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, UnicodeDecodeError):
            return None
        # The parent pid is the second field after the parenthesized command name.
        pid = int(stat.rpartition(")")[2].split()[1])
        if pid <= 1:
            return None
    return None


def check_open_files(jobs_option: str):
    """Refuse when StepUp's director has too few open files for the steps that may wait at once.

    Parameters
    ----------
    jobs_option
        How the user sets the number of steps at once: `stepup build -j` or `stepup boot -n`.

    Raises
    ------
    OpenFileLimitError
        With the numbers and the fixes. Nothing happens when no director is found (e.g. a step
        run by hand) or its command line or limits cannot be read.
    """
    found = _director()
    if found is None:
        return
    argv, limits_text = found
    slots = slots_from_argv(argv, len(os.sched_getaffinity(0)))
    limits = parse_limits(limits_text)
    if slots is None or limits is None:
        return
    soft, hard = limits
    if files_needed(slots) > soft:
        raise OpenFileLimitError(refusal_message(slots, soft, hard, jobs_option))


def _restore_open_file_limit():
    # Back to the user's soft limit (see NOFILE_VARIABLE): this process needs few files.
    try:
        soft = int(os.environ.get(NOFILE_VARIABLE, ""))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if soft < resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError):
        pass


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

    def run() -> int:
        args = parse_step_args(words, prog)
        config = _config()
        if args.onchange is not None:
            config = dataclasses.replace(
                config, onchange=OnChange(args.onchange), onchange_source="sbatch(onchange=...)"
            )
        check_open_files(f"{rerun} {'-n' if rerun.endswith('boot') else '-j'}")
        _restore_open_file_limit()
        digest = os.environ.get("STEPUP_STEP_INP_DIGEST", "")
        return run_job(args.ext, args.rc, digest, config, job_environment(os.environ))

    return _guarded(run, rerun)


def run_array_step(manifest: str, rerun: str) -> int:
    """Submit the job folders of an `sbatch_array()` step once as job arrays and wait for them.

    Parameters
    ----------
    manifest
        The manifest file written by `sbatch_array()`, relative to the current folder (that
        of plan.py).
    rerun
        The command that runs the workflow again, e.g. `stepup build`, for messages.

    Returns
    -------
    returncode
        0 when every folder's job succeeded, else 1 (the message names the failed folders).
    """

    def run() -> int:
        # Here, not at the top: the module of a single sbatch step need not load these.
        from .arrayjob import run_array
        from .arraymanifest import read_manifest

        config = _config()
        _restore_open_file_limit()
        env = job_environment(os.environ)
        name = Path(manifest).stem
        return run_array(read_manifest(manifest), name, config, env, rerun)

    return _guarded(run, rerun)


def _config() -> Config:
    config = Config.from_environ()
    for warning in config.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    return config


def _guarded(run: Callable[[], int], rerun: str) -> int:
    """`run()`, with every expected failure turned into a message and return code 1."""
    try:
        return run()
    except (ValueError, JobError, OpenFileLimitError) as exc:
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

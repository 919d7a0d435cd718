"""Attempts of a job: the retry settings of a job folder and the files of earlier attempts.

When SLURM ends a job with an infrastructure failure (see `states.retried_states`), the step
submits the job again, up to `retries` times. Each attempt has its own log:

- `slurmjob.log` is the current attempt, in the format that the original releases read (they
  take the first `Submitted` record for the job and replay the states after it, so earlier jobs
  cannot precede it in the same file);
- `slurmjob.log.N`, `slurmjob.out.N` and `slurmjob.err.N` are the files of an earlier attempt,
  moved aside before the next one is submitted. The log is moved last: until it is, the
  attempt is the current one, so a workflow killed at any instant repeats no step of the
  move, and the next attempt is submitted through the usual `Submitting` record (exactly once).

Earlier attempts count only when their log holds the current log's input digest: a job
resubmitted after a change of its inputs starts a new series.

The settings live in `slurmjob.retries`, written by `sbatch()` in `plan.py` rather than put
in the step's command: the command is part of the step's input digest, and a change of
`retries` must not count as a change of the job's inputs (which would fail or resubmit a job
that already finished).
"""

import json
import re

from path import Path

from .errors import JobError
from .joblog import LOG_NAME, JobLog, read_log
from .states import retried_states

__all__ = (
    "RETRIES_NAME",
    "archive_attempt",
    "attempt_files",
    "earlier_attempts",
    "read_retry_settings",
    "write_retry_settings",
)

RETRIES_NAME = "slurmjob.retries"
_STREAMS = ("slurmjob.out", "slurmjob.err")
_RE_ARCHIVE = re.compile(re.escape(LOG_NAME) + r"\.([1-9][0-9]*)")


def write_retry_settings(folder: Path, retries: int | None, retry_on: tuple[str, ...]):
    """Write (or remove) `slurmjob.retries` in a job folder, only when its content changes.

    Parameters
    ----------
    folder
        The job folder (created when missing).
    retries
        The `retries` of `sbatch()`, `None` to follow `STEPUP_QUEUE_RETRIES`.
    retry_on
        The extra states after which the job is submitted again, e.g. `("TIMEOUT",)`.
    """
    path = folder / RETRIES_NAME
    if retries is None and not retry_on:
        if path.is_file():
            path.remove()
        return
    text = json.dumps({"retries": retries, "retry_on": list(retry_on)}) + "\n"
    if path.is_file() and path.read_text() == text:
        return
    folder.makedirs_p()
    path.write_text(text)


def read_retry_settings(folder: Path, default: int) -> tuple[int, frozenset[str]]:
    """How often a job is submitted again, and after which end states.

    Parameters
    ----------
    folder
        The job folder.
    default
        The number of retries when `sbatch()` set none (`STEPUP_QUEUE_RETRIES`).

    Raises
    ------
    JobError
        When `slurmjob.retries` cannot be read.
    """
    path = folder / RETRIES_NAME
    if not path.is_file():
        return default, retried_states(())
    try:
        settings = json.loads(path.read_text())
        retries = settings["retries"]
        states = retried_states(settings["retry_on"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _settings_error(path, str(exc)) from None
    if retries is None:
        return default, states
    if not isinstance(retries, int) or retries < 0:
        raise _settings_error(path, f"retries={retries!r} is not a whole number >= 0")
    return retries, states


def _settings_error(path: Path, what: str) -> JobError:
    return JobError(
        f"Cannot read {path}: {what}. This file is written by sbatch(retries=..., "
        "retry_on=...) in plan.py: remove it and run the workflow again."
    )


def _archives(folder: Path) -> dict[int, Path]:
    """The logs of earlier attempts in a job folder, by number."""
    found = {}
    for path in folder.files(f"{LOG_NAME}.*"):
        match = _RE_ARCHIVE.fullmatch(path.name)
        if match is not None:
            found[int(match.group(1))] = path
    return found


def attempt_files(folder: Path) -> list[Path]:
    """The files of all earlier attempts in a job folder: `slurmjob.{out,err,log}.N`."""
    names = (*_STREAMS, LOG_NAME)
    return sorted(
        path
        for path in folder.files("slurmjob.*")
        if any(re.fullmatch(re.escape(name) + r"\.[1-9][0-9]*", path.name) for name in names)
    )


def earlier_attempts(log_path: Path, digest: str) -> list[JobLog]:
    """The logs of the earlier attempts of the job whose current log is `log_path`, oldest
    first: those with the same input digest."""
    archives = _archives(log_path.parent)
    logs = (read_log(archives[number]) for number in sorted(archives))
    return [log for log in logs if log.digest == digest]


def archive_attempt(log_path: Path) -> int:
    """Move the log, output and error of the current attempt aside as `*.N`; return N.

    Raises
    ------
    JobError
        When a file of that name exists already: it is never overwritten.
    """
    folder = log_path.parent
    number = max(_archives(folder), default=0) + 1
    # The log last: once it is moved, the attempt is over (see the module docstring).
    for name in (*_STREAMS, LOG_NAME):
        source, target = folder / name, folder / f"{name}.{number}"
        if not source.exists():
            continue
        if target.exists():
            raise JobError(
                f"Cannot keep {source} of the earlier attempt as {target}: that file exists. "
                f"Move {target} elsewhere and run the workflow again."
            )
        source.rename(target)
    return number

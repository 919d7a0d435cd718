"""The job log `slurmjob.log`: format version 2, read, written and validated here.

A log written by StepUp Queue looks like this, one record per line::

    StepUp Queue sbatch wait log format version 2
    <STEPUP_STEP_INP_DIGEST of the step that submitted the job>
    2026-11-25T10:01:02.123456 Submitting stepup-queue-3f2a9c0d1e4b5a69
    2026-11-25T10:01:02.345678 Submitted 1234
    2026-11-25T10:01:33.012345 RUNNING
    2026-11-25T10:05:01.543210 COMPLETED

The first two lines and the `Submitted` and state records are exactly those of StepUp Queue
1.0.2, so job folders written by it can be resumed. The `Submitting` record is new: it is
written (and flushed to disk) just before `sbatch` runs and holds the token that tags the job,
so that a workflow killed before the `Submitted` record was written can find its job again
instead of submitting it twice. Once the `Submitted` record is written, the log is rewritten
without `Submitting` records, so that a folder whose submission completed is exactly in the
format that the original releases read. The `Submitted` record holds what
`sbatch --parsable` printed: `ID` or `ID;CLUSTER`. The folder of an array task
(`sbatch_array`) records `ID_N` or `ID_N;CLUSTER`: the array job id and the task index; its
second line is the digest of that folder's own inputs (see `arrays.folder_digest`).

The original StepUp Queue 2.x writes a bare `Submitting` record (no token) before sbatch: it is
read as a submission that tagged no job.

A job that SLURM keeps pending for a reason that never resolves by itself is cancelled; the
record `Hopeless <REASON>` (e.g. `Hopeless PartitionTimeLimit`) then precedes the `CANCELLED`
record, so that the original releases, which read the last record, see the final state.
"""

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from path import Path

from .states import FINAL_STATES

__all__ = (
    "FORMAT_LINE",
    "LOG_NAME",
    "JobLog",
    "JobLogError",
    "append_record",
    "find_logs",
    "is_token",
    "parse_submitted",
    "parse_submitted_task",
    "read_log",
    "record_submitted",
    "start_log",
)

LOG_NAME = "slurmjob.log"
FORMAT_LINE = "StepUp Queue sbatch wait log format version 2"

_RE_STATE = re.compile(r"[A-Z][A-Z_]*")
_RE_SUBMITTED = re.compile(
    r"(?P<id>[0-9]+)(?:_(?P<task>[0-9]+))?(?:;(?P<cluster>[A-Za-z0-9_.-]+))?"
)
_RE_TOKEN = re.compile(r"stepup-queue-[0-9a-f]{16}")


class JobLogError(ValueError):
    """A job log cannot be read. The message names the file, the line and how to fix it."""


@dataclass
class JobLog:
    """The contents of a job log.

    Attributes
    ----------
    path
        The log file.
    digest
        The input digest of the step that submitted the job (second line).
    token
        The token of the last `Submitting` record, `None` when there is none or it is bare.
    submitting_time
        When the last `Submitting` record was written, `None` when there is none.
    job_id
        The job id from the `Submitted` record, `None` when the job was not (yet) submitted.
        Of an array task (`Submitted ID_N`), the array job id.
    task
        The array task index of an array task (`sbatch_array`), `None` for a single job.
    cluster
        The cluster name from the `Submitted` record, `None` when there is none.
    submitted_time
        When the `Submitted` record was written.
    states
        The recorded (time, state) pairs, oldest first.
    hopeless
        The pending reason for which StepUp Queue cancelled the job, `None` when it did not.
    """

    path: Path
    digest: str
    token: str | None = None
    submitting_time: datetime | None = None
    job_id: int | None = None
    task: int | None = None
    cluster: str | None = None
    submitted_time: datetime | None = None
    states: list[tuple[datetime, str]] = field(default_factory=list)
    hopeless: str | None = None

    @property
    def last_state(self) -> str | None:
        """The most recently recorded state, `None` when no state was recorded."""
        return self.states[-1][1] if self.states else None

    @property
    def done(self) -> bool:
        """True when the log records a final state."""
        return self.last_state in FINAL_STATES

    @property
    def job_name(self) -> str | None:
        """How SLURM names the logged job: `ID`, or `ID_N` for an array task."""
        if self.job_id is None:
            return None
        return str(self.job_id) if self.task is None else f"{self.job_id}_{self.task}"

    @property
    def interrupted(self) -> bool:
        """True when a submission began (`Submitting`) but no job id was logged: it may or may
        not have reached SLURM."""
        return self.job_id is None and self.submitting_time is not None


def is_token(text: str) -> bool:
    """True when `text` is a token with which StepUp Queue tags a job (its comment)."""
    return _RE_TOKEN.fullmatch(text) is not None


def parse_submitted(text: str) -> tuple[int, str | None]:
    """Parse what `sbatch --parsable` printed: `ID` or `ID;CLUSTER`. The folder of an array task
    (`sbatch_array`) records `ID_N` or `ID_N;CLUSTER`: the array job id and the task index; its
    second line is the digest of that folder's own inputs (see `arrays.folder_digest`).

        Parameters
        ----------
        text
            The output of sbatch (surrounding white space is ignored).

        Returns
        -------
        job_id, cluster
            The job id and the cluster name, `None` when there is no cluster.

        Raises
        ------
        ValueError
            When the text is not of the form `ID` or `ID;CLUSTER`.
    """
    job_id, task, cluster = parse_submitted_task(text)
    if task is not None:
        raise ValueError(f"Expected 'ID' or 'ID;CLUSTER', got {text.strip()!r}")
    return job_id, cluster


def parse_submitted_task(text: str) -> tuple[int, int | None, str | None]:
    """Parse a `Submitted` record's value: `ID`, `ID;CLUSTER`, or of an array task `ID_N` or
    `ID_N;CLUSTER`.

    Returns
    -------
    job_id, task, cluster
        The (array) job id, the task index (`None` for a single job) and the cluster name.

    Raises
    ------
    ValueError
        When the text has none of these forms.
    """
    match = _RE_SUBMITTED.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"Expected 'ID' or 'ID;CLUSTER', got {text.strip()!r} (of an array task: 'ID_N' "
            "or 'ID_N;CLUSTER')"
        )
    task = match.group("task")
    return int(match.group("id")), None if task is None else int(task), match.group("cluster")


def read_log(path: str | Path) -> JobLog:
    """Read and validate a job log.

    Parameters
    ----------
    path
        The log file.

    Returns
    -------
    joblog
        The parsed contents.

    Raises
    ------
    JobLogError
        When the file does not follow format version 2.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _error(path, 1, "it is not UTF-8 text") from None
    lines = text.splitlines()
    if len(lines) == 0 or lines[0] != FORMAT_LINE:
        found = repr(lines[0][:80]) if lines else "an empty file"
        raise _error(path, 1, f"the first line must be {FORMAT_LINE!r}, found {found}")
    if len(lines) < 2 or lines[1].strip() == "" or " " in lines[1]:
        raise _error(path, 2, "the second line must hold the input digest of the step")
    joblog = JobLog(path, lines[1])
    for lineno, line in enumerate(lines[2:], 3):
        _parse_record(joblog, lineno, line)
    return joblog


def _parse_record(joblog: JobLog, lineno: int, line: str):
    stamp, _, record = line.partition(" ")
    try:
        time = datetime.fromisoformat(stamp)
    except ValueError:
        raise _error(
            joblog.path, lineno, f"no valid date and time at the start of {line!r}"
        ) from None
    kind, _, rest = record.partition(" ")
    if kind == "Submitting" and (rest == "" or is_token(rest)):
        joblog.token = rest or None
        joblog.submitting_time = time
    elif kind == "Submitted":
        if joblog.job_id is not None:
            raise _error(joblog.path, lineno, "a second Submitted record")
        try:
            joblog.job_id, joblog.task, joblog.cluster = parse_submitted_task(rest)
        except ValueError as exc:
            raise _error(joblog.path, lineno, str(exc)) from None
        joblog.submitted_time = time
    elif kind == "Hopeless" and rest != "" and joblog.job_id is not None:
        joblog.hopeless = rest
    elif _RE_STATE.fullmatch(record) and joblog.job_id is not None:
        joblog.states.append((time, record))
    else:
        raise _error(joblog.path, lineno, f"cannot understand the record {record!r}")


def _error(path: Path, lineno: int, what: str) -> JobLogError:
    return JobLogError(
        f"Invalid job log {path} (line {lineno}): {what}. This file is written by StepUp Queue "
        "and should not be edited. To submit the job afresh, make sure it is no longer queued "
        "or running (squeue --me), then remove the file by hand."
    )


def start_log(path: str | Path, digest: str):
    """Write the first two lines of a new log, replacing an existing log.

    Parameters
    ----------
    path
        The log file.
    digest
        The input digest of the step (`STEPUP_STEP_INP_DIGEST`).
    """
    _write(Path(path), f"{FORMAT_LINE}\n{digest}\n", "w")


def append_record(path: str | Path, record: str) -> datetime:
    """Append a time-stamped record and flush it to disk before returning.

    Parameters
    ----------
    path
        The log file.
    record
        The record, e.g. `Submitted 1234` or a SLURM state like `RUNNING`.

    Returns
    -------
    time
        The time stamp written in front of the record.
    """
    time = datetime.now()
    _write(Path(path), _record(time, record), "a")
    return time


def record_submitted(path: str | Path, submitted: str) -> datetime:
    """Append the `Submitted` record and drop the `Submitting` records, atomically.

        Parameters
        ----------
        path
            The log file.
        submitted
            What `sbatch --parsable` printed: `ID` or `ID;CLUSTER`. The folder of an array task
    (`sbatch_array`) records `ID_N` or `ID_N;CLUSTER`: the array job id and the task index; its
    second line is the digest of that folder's own inputs (see `arrays.folder_digest`).

        Returns
        -------
        time
            The time stamp of the `Submitted` record.
    """
    path = Path(path)
    time = datetime.now()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.split()[1:2] != ["Submitting"]]
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        _write(tmp, "".join(kept) + _record(time, f"Submitted {submitted}"), "w")
        # Atomic: a reader sees the log with the Submitting record or the one with Submitted.
        tmp.replace(path)
    except OSError as exc:
        tmp.remove_p()
        # The log is the file the user must look at, not our temporary copy.
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return time


def _record(time: datetime, record: str) -> str:
    return f"{time.isoformat(timespec='microseconds')} {record}\n"


def _write(path: Path, text: str, mode: str):
    # fsync: the log is the only memory of a submission when the workflow is killed.
    with open(path, mode, encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def find_logs(root: str | Path, onerror: Callable[[OSError], None] | None = None) -> Iterator[Path]:
    """Yield all job logs below a folder, in sorted order, skipping hidden folders.

    Parameters
    ----------
    root
        The folder to search recursively.
    onerror
        Called with the error of each folder that cannot be read (e.g. no permission).
    """
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        if LOG_NAME in filenames:
            yield Path(dirpath) / LOG_NAME

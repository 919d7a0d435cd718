"""The rows of `stepup jobs`: what SLURM, the job log and `slurmjob.ret` say of each job.

Shared by the table and JSON of the tool (`jobs.py`) and its timeline chart (`timeline.py`).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from path import Path

from .attempts import earlier_attempts
from .efficiency import Usage
from .found_job import FoundJob
from .joblog import JobLogError
from .jobsearch import JobSearch
from .slurm.parsers import parse_time
from .states import FINAL_STATES

__all__ = ("JobRow", "KnownAttempts", "job_row", "job_rows")

Attempts = tuple[tuple[int | None, str | None], ...]
# The earlier attempts of each job folder as last read, with the submission they were read
# for: folder → (submission, attempts). See `_attempts`.
KnownAttempts = dict[Path, tuple[tuple, Attempts]]


@dataclass
class JobRow:
    """What `stepup jobs` shows of one job.

    Attributes
    ----------
    folder
        The job folder, as found below the PATH arguments.
    job_id
        SLURM's job id.
    cluster
        The cluster of the `Submitted` record, `None` for the default cluster.
    state
        SLURM's state (squeue, else sacct), else the log's, else `COMPLETED` or `FAILED`
        from the exit code in `slurmjob.ret`, else `SUBMITTED`.
    source
        Where the state comes from: `squeue`, `sacct`, `log` (`slurmjob.log`) or `ret`
        (`slurmjob.ret`).
    reason
        Why SLURM keeps a pending job waiting, else `None`.
    exit_code
        The script's exit code (`slurmjob.ret`, else sacct's) of an ended job, else `None`.
    signal
        The signal that ended the job according to sacct, else `None`.
    submitted, started, ended
        When the job was submitted, started and ended (local time), `None` when unknown.
    queued, ran
        Seconds the job waited in the queue and ran (up to now when it still does),
        `None` when unknown.
    usage
        What an ended job asked for and used according to sacct (CPU, memory, time limit),
        `None` for a job that has not ended or that sacct does not know.
    attempts
        The earlier attempts of the job, submitted again after an infrastructure failure
        (see `attempts`): job id and last logged state of each, oldest first.
    """

    folder: str
    job_id: int
    cluster: str | None
    state: str
    source: str
    reason: str | None
    exit_code: int | None
    signal: int | None
    submitted: datetime | None
    started: datetime | None
    ended: datetime | None
    queued: float | None
    ran: float | None
    usage: Usage | None = None
    attempts: Attempts = ()

    @property
    def has_ended(self) -> bool:
        return self.state in FINAL_STATES

    def detail(self) -> str:
        """The pending reason of a pending job, the exit code of an ended one, and which attempt
        it is when SLURM ended earlier attempts with an infrastructure failure."""
        if self.reason is not None:
            detail = self.reason
        elif not self.has_ended:
            detail = ""
        elif self.signal is not None:
            detail = f"signal {self.signal}"
        else:
            detail = "no exit code" if self.exit_code is None else f"exit {self.exit_code}"
        if self.attempts:
            detail = f"{detail}, attempt {len(self.attempts) + 1}".lstrip(", ")
        return detail

    def to_json(self) -> dict:
        """The row with the documented, stable field names of `stepup jobs --json`."""

        def stamp(time: datetime | None) -> str | None:
            return None if time is None else time.isoformat(timespec="seconds")

        return {
            "folder": self.folder,
            "job_id": self.job_id,
            "cluster": self.cluster,
            "state": self.state,
            "source": self.source,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "submitted": stamp(self.submitted),
            "started": stamp(self.started),
            "ended": stamp(self.ended),
            "queued_seconds": self.queued,
            "ran_seconds": self.ran,
            "efficiency": None if self.usage is None else self.usage.to_json(),
            "attempts": [{"job_id": job_id, "state": state} for job_id, state in self.attempts],
        }


def _state(job: FoundJob, record: dict[str, str] | None) -> tuple[str, str]:
    """The state of a job and where it comes from (see `JobRow`)."""
    if job.live is not None:
        return job.live, "squeue"
    if record is not None:
        return record["State"], "sacct"
    # StepUp Queue ends a step when the exit code appears, without logging the final state.
    if job.log.done or (job.log.last_state is not None and not isinstance(job.ret, int)):
        return job.log.last_state, "log"
    if isinstance(job.ret, int):
        return ("COMPLETED" if job.ret == 0 else "FAILED"), "ret"
    return job.log.last_state or "SUBMITTED", "log"


def _logged_time(job: FoundJob, states: Iterable[str]) -> datetime | None:
    """When the log first records one of the states, `None` when it does not."""
    return next((time for time, state in job.log.states if state in states), None)


def job_row(job: FoundJob, now: datetime, known: KnownAttempts | None = None) -> JobRow:
    """Combine what SLURM, the log and `slurmjob.ret` say of a job into its row.

    Parameters
    ----------
    job
        A job found by `search_jobs(..., history=True)`.
    now
        The current time, up to which the queue or run time of an active job is counted.
    known
        The earlier attempts read before (by an earlier frame of `stepup jobs --watch`), used
        again and updated (see `_attempts`).
    """
    # A record of another job with the same id (reused ids, another user) says nothing.
    record = job.history if job.why_not_ours is None else None
    state, source = _state(job, record)
    ended_state = state in FINAL_STATES
    if record is not None:
        submitted = parse_time(record["Submit"]) or job.log.submitted_time
        started = parse_time(record["Start"])
        ended = parse_time(record["End"]) if ended_state else None
    else:
        submitted = job.log.submitted_time
        started = _logged_time(job, ("RUNNING",))
        ended = _logged_time(job, FINAL_STATES)
    # A job may be cancelled, or fail to start, before it runs: it has an end, no start.
    stop = ended if ended_state else now
    if started is not None:
        queued = started - submitted if submitted is not None else None
        ran = None if stop is None else stop - started
    else:
        queued = None if submitted is None or stop is None else stop - submitted
        ran = None
    exit_code = signal = None
    if ended_state:
        if isinstance(job.ret, int):
            exit_code = job.ret
        # sacct gives a job that SLURM ended before or while it ran (CANCELLED, NODE_FAIL,
        # ...) the exit code 0:0, which is no exit code of the script.
        elif (
            record is not None
            and ":" in record["ExitCode"]
            and (state == "COMPLETED" or record["ExitCode"] != "0:0")
        ):
            code, number = map(int, record["ExitCode"].split(":"))
            exit_code, signal = code, number or None
    return JobRow(
        folder=str(job.folder),
        job_id=job.job_id,
        cluster=job.cluster,
        state=state,
        source=source,
        reason=job.reason if state == "PENDING" else None,
        exit_code=exit_code,
        signal=signal,
        submitted=submitted,
        started=started,
        ended=ended,
        queued=None if queued is None else max(queued.total_seconds(), 0.0),
        ran=None if ran is None else max(ran.total_seconds(), 0.0),
        usage=job.usage if ended_state and record is not None else None,
        attempts=_attempts(job, known),
    )


def _attempts(job: FoundJob, known: KnownAttempts | None) -> Attempts:
    """The job id and last state of each earlier attempt; none when they cannot be read (a
    folder gone or not readable, a damaged log of an attempt): the row still shows the job.

    Listing the folder and reading the logs of its attempts for every job in every frame of
    `--watch` is slow on a shared file system, so what was read is kept in `known`. An attempt
    is moved aside only before the next one is submitted (`attempts.archive_attempt`), so the
    attempts stay the same while the current log records the same submission: the same
    `Submitting` record (token and time) or the same `Submitted` record (job id and time).
    """
    submission = (
        job.log.digest,
        job.log.token,
        job.log.submitting_time,
        job.log.job_id,
        job.log.submitted_time,
    )
    folder = job.log.path.parent
    if known is not None and folder in known and known[folder][0] == submission:
        return known[folder][1]
    try:
        logs = earlier_attempts(job.log.path, job.log.digest)
    except (OSError, JobLogError):
        # Not kept: the next frame tries again.
        return ()
    attempts = tuple((log.job_id, log.last_state) for log in logs)
    if known is not None:
        known[folder] = (submission, attempts)
    return attempts


def job_rows(search: JobSearch, now: datetime, known: KnownAttempts | None = None) -> list[JobRow]:
    """The rows of the jobs found, sorted by folder (then job id); see `job_row`."""
    rows = [job_row(job, now, known) for job in search.jobs]
    return sorted(rows, key=lambda row: (row.folder, row.job_id))

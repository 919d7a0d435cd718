"""`stepup jobs [PATH ...]`: a read-only view of a workflow's SLURM jobs, as a table or a chart.

The jobs are found through their logs, as by `stepup canceljobs`. SLURM is asked with one
squeue call per cluster (live states and pending reasons) and one sacct call per cluster
(times and exit codes of all jobs). When SLURM cannot be asked, the rows show what the logs
and `slurmjob.ret` know.
"""

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from path import Path

from .jobsearch import FoundJob, JobSearch, add_search_arguments, add_tool, search_jobs
from .states import FINAL_STATES
from .tables import print_table

__all__ = ("JobRow", "format_duration", "job_rows", "jobs_subcommand", "jobs_tool", "sq_jobs")

_DESCRIPTION = """\
Show the SLURM jobs of a workflow: one row per job with its folder, job id, cluster, state,
the pending reason of a pending job or the exit code of an ended one, when it was submitted,
how long it queued and how long it ran, then a summary with the number of jobs per state and
the total queue and run time. Each PATH is searched recursively for slurmjob.log files, as by
`stepup canceljobs`. The state is SLURM's (squeue, then sacct), else the log's last state, else
what slurmjob.ret says. SLURM is asked with one squeue and one sacct call per cluster; when it
cannot be asked, the rows show what the logs know. This tool changes nothing."""

_JSON_HELP = (
    "Print the rows as JSON (an object with the keys jobs, summary, unreachable and errors; "
    "see the documentation for the fields) instead of a table."
)


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

    @property
    def has_ended(self) -> bool:
        return self.state in FINAL_STATES

    def detail(self) -> str:
        """The pending reason of a pending job, the exit code of an ended one."""
        if self.reason is not None:
            return self.reason
        if not self.has_ended:
            return ""
        if self.signal is not None:
            return f"signal {self.signal}"
        return "no exit code" if self.exit_code is None else f"exit {self.exit_code}"

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
        }


def _parse_time(text: str | None) -> datetime | None:
    """A time stamp of sacct; `None` for `Unknown`, `None` or an empty field."""
    try:
        return None if text is None else datetime.fromisoformat(text)
    except ValueError:
        return None


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


def job_row(job: FoundJob, now: datetime) -> JobRow:
    """Combine what SLURM, the log and `slurmjob.ret` say of a job into its row.

    Parameters
    ----------
    job
        A job found by `search_jobs(..., history=True)`.
    now
        The current time, up to which the queue or run time of an active job is counted.
    """
    # A record of another job with the same id (reused ids, another user) says nothing.
    record = job.history if job.why_not_ours is None else None
    state, source = _state(job, record)
    ended_state = state in FINAL_STATES
    if record is not None:
        submitted = _parse_time(record["Submit"]) or job.log.submitted_time
        started = _parse_time(record["Start"])
        ended = _parse_time(record["End"]) if ended_state else None
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
    )


def job_rows(search: JobSearch, now: datetime) -> list[JobRow]:
    """The rows of the jobs found, sorted by folder (then job id)."""
    rows = [job_row(job, now) for job in search.jobs]
    return sorted(rows, key=lambda row: (row.folder, row.job_id))


def format_duration(seconds: float | None) -> str:
    """A short duration: `45s`, `3m05s`, `2h07m`, `4d03h`; empty when unknown."""
    if seconds is None:
        return ""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def _summary(rows: list[JobRow]) -> dict:
    counts = Counter(row.state for row in rows)
    return {
        "jobs": len(rows),
        "states": dict(sorted(counts.items())),
        "queued_seconds": sum(row.queued or 0.0 for row in rows),
        "ran_seconds": sum(row.ran or 0.0 for row in rows),
    }


def _format_time(time: datetime | None, now: datetime) -> str:
    """A short time stamp: the time of day for today, else the date and the minute."""
    if time is None:
        return ""
    return f"{time:%H:%M:%S}" if time.date() == now.date() else f"{time:%m-%d %H:%M}"


def _print_table(rows: list[JobRow], search: JobSearch, hidden: int, now: datetime):
    for cluster in search.unreachable:
        where = "the default cluster" if cluster is None else f"cluster {cluster}"
        print(f"SLURM could not be asked about {where}: its jobs show what their logs know.")
    if rows:
        headers = ["FOLDER", "JOB", "CLUSTER", "STATE", "REASON/EXIT", "SUBMITTED"]
        headers += ["QUEUED", "RAN"]
        cells = [
            [
                row.folder,
                str(row.job_id),
                row.cluster or "",
                row.state,
                row.detail(),
                _format_time(row.submitted, now),
                format_duration(row.queued),
                format_duration(row.ran),
            ]
            for row in rows
        ]
        print_table(headers, cells, wrap=("REASON/EXIT",), optional=("CLUSTER",))
    elif hidden == 0:
        print("No job logs found.")
    summary = _summary(rows)
    states = ", ".join(f"{count} {state}" for state, count in summary["states"].items())
    print(
        f"Summary: {summary['jobs']} jobs"
        + (f" ({states})" if states else "")
        + f", queued {format_duration(summary['queued_seconds'])}"
        f", ran {format_duration(summary['ran_seconds'])} in total."
        + (f" {hidden} more not shown (--state)." if hidden else "")
    )


def jobs_subcommand(subparsers: argparse._SubParsersAction, loader=None) -> Callable:
    """Add the `jobs` subcommand and return the function that runs it (see `add_tool`)."""
    summary = (
        "Show the SLURM jobs of a workflow (states, queue and run times) as a table, as JSON "
        "or as a timeline chart."
    )
    return add_tool(
        subparsers,
        "jobs",
        summary=summary,
        description=_DESCRIPTION,
        add_arguments=_add_arguments,
        tool=jobs_tool,
    )


def sq_jobs(argv: list[str] | None = None):
    """`sq-jobs [PATH ...]`: the same as `stepup jobs`."""
    parser = argparse.ArgumentParser(prog="sq-jobs", description=_DESCRIPTION)
    _add_arguments(parser)
    sys.exit(jobs_tool(parser.parse_args(argv)))


def _add_arguments(parser: argparse.ArgumentParser):
    add_search_arguments(parser)
    parser.add_argument(
        "-s",
        "--state",
        metavar="STATE[,STATE]",
        help="Only show jobs in these states (e.g. PENDING,FAILED; any case).",
    )
    parser.add_argument("--json", action="store_true", help=_JSON_HELP)
    parser.add_argument(
        "-t",
        "--timeline",
        type=Path,
        metavar="FILE",
        help="Also draw the jobs as a timeline chart (one bar per job: queued, then running) "
        "into FILE, a .png, .svg or .pdf file. Needs matplotlib: "
        "pip install matplotlib (the plot extra of stepup-queue).",
    )


def jobs_tool(args: argparse.Namespace) -> int:
    """Show the jobs found below `args.paths`; return the exit status."""
    if args.timeline is not None:
        from .timeline import timeline_problem

        problem = timeline_problem(args.timeline)
        if problem is not None:
            print(f"Error: {problem}", file=sys.stderr)
            return 2
    search = search_jobs(args.paths, history=True)
    if search is None:
        return 2
    now = datetime.now()
    rows = job_rows(search, now)
    hidden = 0
    if args.state:
        wanted = {state.strip().upper() for state in args.state.split(",")}
        shown = [row for row in rows if row.state in wanted]
        hidden = len(rows) - len(shown)
        rows = shown
    if args.json:
        document = {
            "jobs": [row.to_json() for row in rows],
            "summary": _summary(rows),
            "unreachable": [
                {"cluster": cluster, "error": why} for cluster, why in search.unreachable.items()
            ],
            "errors": search.errors,
        }
        print(json.dumps(document, indent=2))
    else:
        _print_table(rows, search, hidden, now)
    if args.timeline is not None:
        from .timeline import draw_timeline

        draw_timeline(rows, args.timeline, now)
        print(f"Timeline of {len(rows)} jobs written to {args.timeline}", file=sys.stderr)
    return 0

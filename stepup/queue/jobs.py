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
from collections.abc import Callable
from datetime import datetime

from path import Path

from .jobrows import JobRow, job_rows
from .jobsearch import JobSearch, add_search_arguments, add_tool, search_jobs
from .tables import print_table

__all__ = ("format_duration", "jobs_subcommand", "jobs_tool", "sq_jobs")

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

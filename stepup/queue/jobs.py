"""`stepup jobs [PATH ...]`: a read-only view of a workflow's SLURM jobs, as a table or a chart.

The jobs are found through their logs, as by `stepup canceljobs`. SLURM is asked with one
squeue call per cluster (live states and pending reasons) and one sacct call per cluster
(times, exit codes and, from the lines of the job steps, the efficiency of all jobs). When
SLURM cannot be asked, the rows show what the logs and `slurmjob.ret` know. `--watch` redraws
the table, reading squeue's answer from the shared scheduler cache.
"""

import argparse
import contextlib
import io
import json
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from path import Path
from rich.console import Console
from rich.live import Live
from rich.text import Text

from .config import Config, ConfigError
from .efficiency import Advice, format_size
from .jobrows import JobRow, KnownAttempts, job_rows
from .jobsearch import JobSearch, Remembered, search_jobs
from .slurm.cache import Snapshot, StateCache
from .tables import print_table
from .toolcli import add_search_arguments, add_tool

__all__ = ("format_duration", "jobs_subcommand", "jobs_tool", "sq_jobs")

_DESCRIPTION = """\
Show the SLURM jobs of a workflow: one row per job with its folder, job id, cluster, state,
the pending reason of a pending job or the exit code of an ended one, when it was submitted,
how long it queued and how long it ran, then a summary with the number of jobs per state and
the total queue and run time, and the #SBATCH lines to change for ended jobs that used under
25% of their CPUs or memory or over 90% of their time limit. Each PATH is searched recursively
for slurmjob.log files, as by `stepup canceljobs`. The state is SLURM's (squeue, then sacct),
else the log's last state, else what slurmjob.ret says. SLURM is asked with one squeue and one
sacct call per cluster; when it cannot be asked, the rows show what the logs know. This tool
changes nothing."""

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


# The summary's line for each kind of advice (see `efficiency.Usage.advice`), for one job
# and for more.
_ADVICE = {
    "cpu": ("used under 25% of its CPUs", "used under 25% of their CPUs"),
    "memory": ("used under 25% of its memory", "used under 25% of their memory"),
    "time": ("ran over 90% of its time limit", "ran over 90% of their time limit"),
}
# Folders named per kind of advice; `--efficiency` or `--json` shows them all.
_NAMED = 3


def _advice(rows: list[JobRow]) -> list[tuple[JobRow, Advice]]:
    """The `#SBATCH` lines to change, for each ended job that asked too much or too little."""
    return [(row, advice) for row in rows if row.usage is not None for advice in row.usage.advice()]


def _summary(rows: list[JobRow]) -> dict:
    counts = Counter(row.state for row in rows)
    return {
        "jobs": len(rows),
        "states": dict(sorted(counts.items())),
        "queued_seconds": sum(row.queued or 0.0 for row in rows),
        "ran_seconds": sum(row.ran or 0.0 for row in rows),
        "advice": [
            {
                "folder": row.folder,
                "job_id": row.job_id,
                "kind": advice.kind,
                "option": advice.option,
                "message": advice.message,
            }
            for row, advice in _advice(rows)
        ],
    }


def _format_time(time: datetime | None, now: datetime) -> str:
    """A short time stamp: the time of day for today, else the date and the minute."""
    if time is None:
        return ""
    return f"{time:%H:%M:%S}" if time.date() == now.date() else f"{time:%m-%d %H:%M}"


def _percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{fraction:.0%}"


def _cells(row: JobRow, now: datetime, efficiency: bool) -> list[str]:
    cells = [row.folder, str(row.job_id), row.cluster or "", row.state, row.detail()]
    usage = row.usage
    if not efficiency:
        cells += [_format_time(row.submitted, now), format_duration(row.queued)]
        return [*cells, format_duration(row.ran)]
    if usage is None:
        return [*cells, format_duration(row.ran), "", "", "", ""]
    peak = "" if usage.peak_memory is None else format_size(usage.peak_memory)
    return [
        *cells,
        format_duration(row.ran),
        _percent(usage.cpu_efficiency),
        peak,
        _percent(usage.memory_use),
        _percent(usage.time_use),
    ]


def _report(
    rows: list[JobRow],
    search: JobSearch,
    hidden: int,
    now: datetime,
    *,
    efficiency: bool = False,
    width: int | None = None,
) -> str:
    """The table and its summary, as printed, fitted to `width` (default: the terminal's)."""
    out = io.StringIO()
    width = width or Console(file=sys.stdout).width
    for cluster in search.unreachable:
        where = "the default cluster" if cluster is None else f"cluster {cluster}"
        print(
            f"SLURM could not be asked about {where}: its jobs show what their logs know.", file=out
        )
    if rows:
        headers = ["FOLDER", "JOB", "CLUSTER", "STATE", "REASON/EXIT"]
        # The efficiency of ended jobs replaces when they were submitted and queued: 80 columns.
        headers += (
            ["RAN", "CPU%", "PEAK", "MEM%", "TIME%"]
            if efficiency
            else ["SUBMITTED", "QUEUED", "RAN"]
        )
        cells = [_cells(row, now, efficiency) for row in rows]
        print_table(
            headers, cells, wrap=("REASON/EXIT",), optional=("CLUSTER",), file=out, width=width
        )
    elif hidden == 0:
        print("No job logs found.", file=out)
    summary = _summary(rows)
    states = ", ".join(f"{count} {state}" for state, count in summary["states"].items())
    print(
        f"Summary: {summary['jobs']} jobs"
        + (f" ({states})" if states else "")
        + f", queued {format_duration(summary['queued_seconds'])}"
        f", ran {format_duration(summary['ran_seconds'])} in total."
        + (f" {hidden} more not shown (--state)." if hidden else ""),
        file=out,
    )
    # The summary's advice: which #SBATCH lines to change, and in which job folders.
    by_kind: dict[str, list[JobRow]] = {}
    changes = {}
    for row, advice in _advice(rows):
        by_kind.setdefault(advice.kind, []).append(row)
        changes[advice.kind] = advice.change
    for kind in (kind for kind in _ADVICE if kind in by_kind):
        flagged = by_kind[kind]
        folders = ", ".join(row.folder for row in flagged[:_NAMED])
        if len(flagged) > _NAMED:
            folders += f" and {len(flagged) - _NAMED} more"
        count = "1 job" if len(flagged) == 1 else f"{len(flagged)} jobs"
        what = _ADVICE[kind][len(flagged) > 1]
        line = f"{count} {what}: {changes[kind]} in {folders}."
        print(
            textwrap.fill(line, width or 80, subsequent_indent="  ", break_on_hyphens=False),
            file=out,
        )
    return out.getvalue()


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
    parser.add_argument(
        "-e",
        "--efficiency",
        action="store_true",
        help="Show how well each ended job used what it asked for (CPU%%: CPU time over run time "
        "times CPUs, PEAK: peak memory, MEM%%: peak over requested memory, TIME%%: run time over "
        "time limit), instead of when it was submitted and how long it queued.",
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
    parser.add_argument(
        "-w",
        "--watch",
        type=_period,
        nargs="?",
        # Without a number: the cache period (a given number is positive, see `_period`).
        const=0.0,
        metavar="SECONDS",
        help="Redraw the table every SECONDS (default: STEPUP_SBATCH_CACHE_TIMEOUT, 30) until "
        "every job shown has ended, or Ctrl-C. The states come from the scheduler cache that "
        "the waiting steps share, so that watching adds at most one squeue call per cache "
        "period, whatever the number of watchers. Without a terminal, a new table is printed "
        "each time. Not with --json or --timeline.",
    )


def _period(text: str) -> float:
    """The SECONDS of `--watch`: a positive number."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is None or not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is no positive number of seconds. Give the PATHs before --watch, or a "
            "number after it, e.g. --watch 10 PATH."
        )
    return seconds


def _filter(rows: list[JobRow], states: str | None) -> tuple[list[JobRow], int]:
    """The rows in the states asked for (all without `--state`) and the number left out."""
    if not states:
        return rows, 0
    wanted = {state.strip().upper() for state in states.split(",")}
    shown = [row for row in rows if row.state in wanted]
    return shown, len(rows) - len(shown)


def jobs_tool(args: argparse.Namespace) -> int:
    """Show the jobs found below `args.paths`; return the exit status."""
    if args.watch is not None:
        return _watch(args)
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
    rows, hidden = _filter(job_rows(search, now), args.state)
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
        sys.stdout.write(_report(rows, search, hidden, now, efficiency=args.efficiency))
    if args.timeline is not None:
        from .timeline import draw_timeline

        draw_timeline(rows, args.timeline, now)
        print(f"Timeline of {len(rows)} jobs written to {args.timeline}", file=sys.stderr)
    return 0


def _watch(args: argparse.Namespace) -> int:
    """Redraw the table each period until every job shown has ended; Ctrl-C stops it (exit 0).

    The states come from the shared scheduler cache (one `StateCache` per cluster, kept for the
    whole watch so that the default cluster's name is asked once), sacct is asked again only
    about the jobs whose state changed (see `ask_slurm`), and a job folder is searched for
    earlier attempts again only when its log records a new submission (see `job_row`).
    """
    if args.json or args.timeline is not None:
        print(
            "Error: --watch shows the table only: leave out --json and --timeline.", file=sys.stderr
        )
        return 2
    try:
        config = Config.from_environ()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    period = args.watch or config.cache_timeout
    caches: dict[str | None, StateCache] = {}

    def snapshot(cluster: str | None) -> Snapshot:
        if cluster not in caches:
            caches[cluster] = StateCache(config, cluster)
        return caches[cluster].snapshot()

    remembered: Remembered = {}
    known_attempts: KnownAttempts = {}
    problems: list[str] = []

    def frame(width: int | None) -> tuple[str, bool]:
        """The table as it is now, with a line that says when; True when all jobs ended."""
        nonlocal problems
        search = search_jobs(
            args.paths, history=True, snapshot=snapshot, remembered=remembered, report=False
        )
        now = datetime.now()
        rows, hidden = _filter(job_rows(search, now, known_attempts), args.state)
        # Problems are printed when they change, not with every table.
        latest = [*search.errors, *map(str, search.unreachable.items())]
        if latest != problems:
            search.report_problems()
            problems = latest
        # Until the jobs were found and none shown has yet to end: a watch started with the
        # workflow waits for the first log.
        done = bool(search.jobs) and all(row.has_ended for row in rows)
        head = f"{now:%H:%M:%S}: " + (
            f"all {len(rows)} jobs shown have ended."
            if done
            else f"every {period:g} s until all jobs shown have ended (Ctrl-C stops)."
        )
        report = _report(rows, search, hidden, now, efficiency=args.efficiency, width=width)
        return f"{head}\n{report}", done

    console = Console(highlight=False)
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    try:
        with live or contextlib.nullcontext():
            while True:
                text, done = frame(console.width if live else None)
                if live is not None:
                    live.update(Text(text.rstrip("\n")), refresh=True)
                else:
                    # Without a terminal: a new table each period, after an empty line.
                    sys.stdout.write(text + "\n")
                    sys.stdout.flush()
                if done:
                    return 0
                time.sleep(period)
    except KeyboardInterrupt:
        return 0

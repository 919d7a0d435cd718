"""`stepup canceljobs [PATH ...]`: cancel the SLURM jobs of a workflow, found through their logs.

StepUp Queue leaves jobs running when a workflow is interrupted; this tool is how users stop
them. It never deletes or edits files (that is `stepup removejobs`).
"""

import argparse
import sys
from collections.abc import Callable

from .found_job import FoundJob
from .jobsearch import search_jobs
from .slurm.control import MAX_SCANCEL_IDS, cancel, id_order
from .toolcli import add_search_arguments, add_tool, print_actions

__all__ = ("canceljobs_subcommand", "canceljobs_tool", "sq_cancel_jobs")

_DESCRIPTION = """\
Cancel the SLURM jobs of a workflow. Each PATH is searched recursively for slurmjob.log files;
each log gives a job id (and cluster). SLURM is asked (one squeue call per cluster) which of
these jobs are still pending or running in their own folder, and those are cancelled with
scancel, at most 100 job ids per call, whatever their logs say. A job id that SLURM gives to a
job in another folder (ids are reused) is never cancelled. The folder of an array task
(sbatch_array) records ID_N: that task alone is cancelled, and only when squeue lists it with
the token of its array, whose task link (.stepup-queue/arrays/NAME/TOKEN/N in the folder of the
plan) points to this folder. When SLURM cannot be asked, the logs
decide: jobs whose log records a final state (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) or
whose slurmjob.ret holds an exit code are then left alone unless --all is given. This tool never
deletes or edits files: cleaning up the job folders afterwards is your choice (see `stepup
removejobs`). The exit status is non-zero when an scancel call failed."""


_ALL_HELP = (
    "When SLURM cannot be asked, also cancel jobs whose log records a final state or whose "
    "slurmjob.ret holds an exit code. (A job that SLURM lists as pending or running is "
    "cancelled anyway.)"
)


def canceljobs_subcommand(subparsers: argparse._SubParsersAction, loader=None) -> Callable:
    """Add the `canceljobs` subcommand and return the function that runs it (see `add_tool`)."""
    summary = "Cancel the SLURM jobs of a workflow, found through their slurmjob.log files."
    return add_tool(
        subparsers,
        "canceljobs",
        summary=summary,
        description=_DESCRIPTION,
        add_arguments=_add_arguments,
        tool=canceljobs_tool,
    )


def _add_arguments(parser: argparse.ArgumentParser):
    add_search_arguments(parser)
    parser.add_argument("-a", "--all", action="store_true", help=_ALL_HELP)
    parser.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="Only show which jobs would be cancelled; run no scancel.",
    )


def sq_cancel_jobs(argv: list[str] | None = None):
    """`sq-cancel-jobs [PATH ...] [-a] [-c]`: the command of the original StepUp Queue 2.x.

    Unlike `stepup canceljobs`, it only shows what it would cancel unless `-c/--commit` is given.
    """
    parser = argparse.ArgumentParser(
        prog="sq-cancel-jobs",
        description=_DESCRIPTION + "\n\nWithout --commit, this is a dry run.",
    )
    add_search_arguments(parser)
    parser.add_argument("-a", "--all", action="store_true", help=_ALL_HELP)
    parser.add_argument(
        "-c", "--commit", action="store_true", help="Cancel the jobs; without it, only show them."
    )
    args = parser.parse_args(argv)
    args.dry_run = not args.commit
    sys.exit(canceljobs_tool(args))


def _decide(job: FoundJob, cancel_all: bool) -> tuple[bool, str]:
    """Decide whether to cancel a job; return the decision and why (empty when obvious).

    SLURM's live state wins over the files: a job that SLURM lists as pending or running
    (requeued, or held after RequeueExitHold) is cancelled whatever its log and
    `slurmjob.ret` say.
    """
    if job.why_not_ours is not None:
        return False, job.why_not_ours
    if job.log.task is not None and job.live is None and job.active is not False:
        # The identity of an array task is told by squeue's comment (see `why_not_ours`).
        return False, "squeue does not list this task: nothing ties it to this folder, not touched"
    if job.active is False:
        # scancel cannot stop a job that SLURM no longer runs, whatever the log says.
        if job.live is None:
            return False, "no longer listed by SLURM; ended according to " + (
                "its log" if job.account is None else "SLURM's accounting"
            )
        return False, f"already {job.live} in SLURM"
    if job.orphan:
        return True, "its folder has no slurmjob.log (tagged by StepUp Queue)"
    if job.active:
        return True, "live in SLURM, although its log says it ended" if job.ended_by_log else ""
    if job.asked:
        return False, "neither squeue nor sacct knows this job: not touched"
    if job.ended_by_log and not cancel_all:
        return False, "ended according to its log (--all cancels it anyway)"
    return True, "SLURM not asked: going by the log"


def _scancel_id(job: FoundJob) -> int | str:
    """What scancel is given for a job: its id, or `ID_N` for an array task (only that task is
    cancelled, not the tasks of other folders)."""
    return job.job_id if job.log.task is None else job.name


def canceljobs_tool(args: argparse.Namespace) -> int:
    """Cancel the jobs found below `args.paths`; return the exit status."""
    search = search_jobs(args.paths)
    if search is None:
        return 2

    decisions = [(job, *_decide(job, args.all)) for job in search.jobs]
    # Per cluster, the job ids and the array tasks (`ID_N`, see `_scancel_id`) to cancel:
    # all in the same scancel calls, at most MAX_SCANCEL_IDS each.
    by_cluster: dict[str | None, set[int | str]] = {}
    for job, selected, _ in decisions:
        if selected:
            by_cluster.setdefault(job.cluster, set()).add(_scancel_id(job))

    # (cluster, scancel id) pairs whose scancel call failed.
    failed_ids: set[tuple[str | None, int | str]] = set()
    ncall = 0
    if not args.dry_run:
        for cluster, ids in by_cluster.items():
            ordered = sorted(ids, key=id_order)
            results = cancel(ordered, cluster, search.timeout)
            ncall += len(results)
            for start, result in zip(range(0, len(ordered), MAX_SCANCEL_IDS), results, strict=True):
                if result.returncode != 0:
                    print(f"Error: {result.describe()}", file=sys.stderr)
                    chunk = ordered[start : start + MAX_SCANCEL_IDS]
                    failed_ids.update((cluster, job_id) for job_id in chunk)

    rows = []
    counts = {"cancelled": 0, "skipped": 0, "failed": 0}
    for job, selected, why in decisions:
        note = why
        if not selected:
            action = "skip"
            counts["skipped"] += 1
        elif args.dry_run:
            action = "would cancel"
            counts["cancelled"] += 1
        elif (job.cluster, _scancel_id(job)) in failed_ids:
            action = "error"
            note = "scancel failed"
            counts["failed"] += 1
        else:
            action = "cancelled"
            counts["cancelled"] += 1
        rows.append((action, job, note))

    if rows:
        print_actions(rows)
    else:
        print("No job logs found.")
    verb = "would cancel" if args.dry_run else "cancelled"
    nerror = len(search.errors) + counts["failed"]
    print(
        f"Summary: found {len(search.jobs)} jobs, {verb} {counts['cancelled']}, "
        f"skipped {counts['skipped']}, errors {nerror}."
        + ("" if args.dry_run else f" ({ncall} scancel call{'' if ncall == 1 else 's'})")
    )
    if args.dry_run:
        print("Dry run: nothing was cancelled.")
    return 1 if failed_ids else 0

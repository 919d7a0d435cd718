"""`stepup removejobs [PATH ...]`: clear the files of ended jobs so the next boot resubmits them.

Only the four files StepUp Queue and SLURM write for a job are removed, and only for jobs that
SLURM confirms are no longer pending or running. Without `--commit` nothing is removed.
"""

import argparse
import getpass
import os
import pwd
import sys
from collections.abc import Callable

from .attempts import attempt_files
from .found_job import FoundJob
from .joblog import LOG_NAME
from .jobsearch import search_jobs
from .states import FAILED_STATES
from .toolcli import add_search_arguments, add_tool, print_actions
from .wrapper import RET_NAME

__all__ = ("JOB_FILES", "removejobs_subcommand", "removejobs_tool", "sq_remove_jobs")

# The files removed from a job folder; the log goes last, so that a folder in which a removal
# failed still records its job.
JOB_FILES = ("slurmjob.out", "slurmjob.err", RET_NAME, LOG_NAME)

_DESCRIPTION = """\
Remove the files of ended SLURM jobs of a workflow, so that the next run of the workflow submits
them afresh. Each PATH is searched recursively for slurmjob.log files. By default, jobs that
failed are selected: the log or SLURM records a failed end state (FAILED, CANCELLED, TIMEOUT,
NODE_FAIL, OUT_OF_MEMORY, ...), slurmjob.ret holds a non-zero exit code, or the job ended
without an exit code. With --all, every ended job is selected, also those that succeeded.
A job that SLURM (asked with one squeue call per cluster) lists as pending or running is never
selected, and nothing is removed when SLURM cannot be asked. The folder of an array task
(sbatch_array, logged as ID_N) is selected only when the task is the folder's: SLURM's token of
its array leads to the task link that points to the folder, or, once the step removed its links,
the task ran from a plan folder whose sbatch_array() manifest lists the folder.
Without --commit, nothing is removed: the jobs are only listed. With --commit, slurmjob.log,
slurmjob.out, slurmjob.err and slurmjob.ret of the selected jobs are removed, and those of
earlier attempts (slurmjob.log.N, slurmjob.out.N, slurmjob.err.N), nothing else (never the job
script)."""


def removejobs_subcommand(subparsers: argparse._SubParsersAction, loader=None) -> Callable:
    """Add the `removejobs` subcommand and return the function that runs it (see `add_tool`)."""
    summary = (
        "Remove the log and output files of failed (or all ended) SLURM jobs of a workflow, "
        "so that they are submitted again."
    )
    return add_tool(
        subparsers,
        "removejobs",
        summary=summary,
        description=_DESCRIPTION,
        add_arguments=_add_arguments,
        tool=removejobs_tool,
    )


def sq_remove_jobs(argv: list[str] | None = None):
    """`sq-remove-jobs [PATH ...] [-a] [-c]`: the command of the original StepUp Queue 2.x."""
    parser = argparse.ArgumentParser(prog="sq-remove-jobs", description=_DESCRIPTION)
    _add_arguments(parser)
    sys.exit(removejobs_tool(parser.parse_args(argv)))


def _add_arguments(parser: argparse.ArgumentParser):
    add_search_arguments(parser)
    parser.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="Select every ended job, also those that succeeded.",
    )
    parser.add_argument(
        "-c",
        "--commit",
        action="store_true",
        help="Remove the files of the selected jobs, instead of only listing them.",
    )


def _why_failed(job: FoundJob) -> str:
    if isinstance(job.ret, int) and job.ret != 0:
        return f"exit code {job.ret}"
    if job.end_state in FAILED_STATES:
        return f"ended {job.end_state}"
    ended = "ended" if job.end_state is None else f"ended {job.end_state}"
    if isinstance(job.ret, str):
        return f"{ended} without a valid exit code"
    return f"{ended} without an exit code"


def _decide(job: FoundJob, select_all: bool) -> tuple[bool, str]:
    """Decide whether to remove the files of a job; return the decision and why."""
    if job.why_not_ours is not None:
        return False, job.why_not_ours
    owner = _log_owner(job)
    if owner is not None:
        # sacct may hide a colleague's job (PrivateData=jobs) or be down: only SLURM's word
        # that the job is the user's allows removing the files of another user's log.
        return False, f"log of user {owner}, and SLURM does not confirm the job is yours"
    if job.active is None:
        if job.asked:
            return False, "SLURM cannot confirm that it ended: neither squeue nor sacct knows it"
        return False, "SLURM could not be asked"
    if job.active:
        return False, f"still {job.live or job.account['State']} in SLURM"
    if job.succeeded:
        return select_all, "succeeded" if select_all else "succeeded (--all selects it)"
    return True, _why_failed(job)


def _log_owner(job: FoundJob) -> str | None:
    """The owner of the job's log when it is another user and SLURM does not say the job is
    this user's, else `None`."""
    try:
        uid = job.log.path.stat().st_uid
    except OSError:
        return None
    if uid == os.getuid() or job.live is not None or job.owner == getpass.getuser():
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _remove_files(job: FoundJob) -> list[str]:
    """Remove the job's files; return error messages (empty when all went well)."""
    # The folder as found on disk, not the normalized one printed in the table.
    folder = job.log.path.parent
    # Earlier attempts first: the next run must not count them for the fresh job.
    for path in [*attempt_files(folder), *(folder / name for name in JOB_FILES)]:
        try:
            path.remove_p()
        except OSError as exc:
            # Stop: the log, removed last, keeps recording the job while other files remain.
            return [f"Could not remove {path}: {exc}"]
    return []


def removejobs_tool(args: argparse.Namespace) -> int:
    """List or remove the files of the selected jobs found below `args.paths`."""
    search = search_jobs(args.paths)
    if search is None:
        return 2
    decisions = [(job, *_decide(job, args.all)) for job in search.jobs]
    refuse = bool(search.unreachable)

    rows = []
    nselected = 0
    nremoved = 0
    removal_errors = []
    for job, selected, note in decisions:
        if not selected:
            action = "keep"
        elif not args.commit or refuse:
            action = "would remove"
            nselected += 1
        else:
            nselected += 1
            errors = _remove_files(job)
            removal_errors.extend(errors)
            action = "error" if errors else "removed"
            nremoved += not errors
        rows.append((action, job, note))

    for message in removal_errors:
        print(f"Error: {message}", file=sys.stderr)
    if rows:
        print_actions(rows)
    else:
        print("No job logs found.")
    nerror = len(search.errors) + len(removal_errors)
    done = f"removed {nremoved}" if args.commit and not refuse else f"would remove {nselected}"
    print(
        f"Summary: found {len(search.jobs)} jobs, {done}, kept {len(rows) - nselected}, "
        f"errors {nerror}."
    )
    if refuse:
        print(
            "Nothing was removed: SLURM could not be asked whether these jobs are still pending "
            "or running (see the warnings above). Try again when squeue works.",
            file=sys.stderr,
        )
        return 1
    if not args.commit and nselected > 0:
        print(f"Nothing was removed: add --commit to remove {', '.join(JOB_FILES)} of these jobs.")
    return 1 if removal_errors else 0

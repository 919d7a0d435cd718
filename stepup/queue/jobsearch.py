"""Find the jobs of a workflow from their logs and ask SLURM which of them are still alive.

Shared by `stepup canceljobs`, `stepup removejobs` and `stepup jobs`: they search folders for
`slurmjob.log`, read each log on its own (one unreadable log never stops the others), read the
exit code in `slurmjob.ret`, and ask SLURM with one `squeue` call per cluster which jobs are
still pending or running, and with one `sacct` call per cluster about the others. What is known
of each job is a `found_job.FoundJob`.
"""

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from path import Path

from .config import Config, ConfigError
from .efficiency import Usage, usage_by_run
from .found_job import FoundJob
from .joblog import LOG_NAME, JobLog, JobLogError, find_logs, is_token, read_log
from .slurm.cache import Snapshot
from .slurm.commands import run_command
from .slurm.parsers import Listing, UnreadableOutputError, parse_squeue
from .slurm.queries import HISTORY_FIELDS, sacct_query, squeue_command
from .states import FINAL_STATES
from .wrapper import read_ret

__all__ = (
    "JobSearch",
    "Remembered",
    "ask_slurm",
    "find_jobs",
    "search_jobs",
)


@dataclass
class JobSearch:
    """The outcome of a search: the jobs found, and what went wrong along the way.

    Attributes
    ----------
    jobs
        The jobs found, in the order of the PATH arguments and then sorted by folder.
    errors
        One message for each PATH or log that could not be used.
    unreachable
        Cluster (`None` for the default cluster) → why SLURM could not be asked about it.
    timeout
        Seconds after which a SLURM command is killed (`STEPUP_SBATCH_COMMAND_TIMEOUT`).
    """

    jobs: list[FoundJob] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unreachable: dict[str | None, str] = field(default_factory=dict)
    timeout: float = 60.0

    def report_problems(self):
        """Print the errors and the unreachable clusters on standard error."""
        for message in self.errors:
            print(f"Error: {message}", file=sys.stderr)
        for cluster, why in self.unreachable.items():
            where = "the default cluster" if cluster is None else f"cluster {cluster}"
            print(f"Warning: could not ask SLURM about {where}: {why}", file=sys.stderr)


def find_jobs(paths: Iterable[str | Path]) -> tuple[list[FoundJob], list[str]]:
    """Read all job logs found recursively below the given folders.

    Parameters
    ----------
    paths
        Folders to search. A path that is not a folder is reported and skipped;
        a log found through several paths is read once.

    Returns
    -------
    jobs, errors
        The jobs whose log could be read, and one message per unusable path or log.
    """
    jobs = []
    errors = []
    seen = set()

    def unreadable(exc: OSError):
        # Reported, not skipped in silence: the folder may hold jobs to cancel.
        errors.append(f"Skipped {exc.filename}: cannot read this folder ({exc.strerror}).")

    for path in paths:
        root = Path(path)
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            errors.append(f"{root} {what}: skipped.")
            continue
        for log_path in find_logs(root, unreadable):
            key = log_path.realpath()
            if key in seen:
                continue
            seen.add(key)
            try:
                joblog = read_log(log_path)
            except (JobLogError, OSError) as exc:
                errors.append(f"Skipped: {exc}")
                continue
            jobs.append(FoundJob(joblog, read_ret(log_path.parent)))
    return jobs, errors


# How `stepup jobs --watch` reads the shared scheduler cache: cluster → SLURM's answer.
SnapshotOf = Callable[[str | None], Snapshot]
# What sacct said of each job in an earlier look: (cluster, job id) → (squeue's state then,
# the `history` record, its `usage`).
Remembered = dict[tuple[str | None, int], tuple[str | None, dict[str, str], Usage | None]]


def ask_slurm(
    jobs: list[FoundJob],
    timeout: float,
    history: bool = False,
    roots: Iterable[str | Path] = (),
    *,
    snapshot: SnapshotOf | None = None,
    remembered: Remembered | None = None,
) -> dict[str | None, str]:
    """Ask SLURM for the current states of the jobs, with one squeue and one sacct call per
    cluster.

    Each job gets `asked`, `live`, `reason` and `workdir` set, and `account` when squeue no
    longer lists it. StepUp removes the log of a step that left the plan, also while its job
    runs: the live jobs of StepUp Queue (tagged with a token) that squeue lists in a folder
    below one of `roots` without a log are added to `jobs`, as `orphan`.

    Parameters
    ----------
    jobs
        The jobs to look up.
    timeout
        Seconds after which squeue or sacct is killed.
    history
        Also ask sacct (in the same call) about the jobs squeue lists, and set `history` and
        `usage` of every job sacct knows.
    roots
        The folders searched for logs. Jobs without a log are looked for on the clusters of
        the logs found (on the default cluster when none was found).
    snapshot
        Where the listing of a cluster comes from instead of a squeue call of its own: the
        shared scheduler cache (`StateCache.snapshot`), which all waiting steps and watchers
        renew at most once per cache period.
    remembered
        With `history`: sacct's earlier answers, used again (and updated): sacct is asked only
        about jobs that are new, or whose state in squeue changed since, unless their record
        is final already.

    Returns
    -------
    unreachable
        Cluster → description of the failed query, for clusters that could not be asked.
    """
    unreachable = {}
    # Without any log, the default cluster is asked for jobs without a log.
    by_cluster: dict[str | None, list[FoundJob]] = {None: []} if roots and not jobs else {}
    logged = {os.path.realpath(job.log.path.parent) for job in jobs}
    for job in jobs:
        by_cluster.setdefault(job.cluster, []).append(job)
    for cluster, cluster_jobs in by_cluster.items():
        listing, answered, failure = _listing(cluster, timeout, snapshot)
        if failure is not None:
            unreachable[cluster] = failure
            continue
        orphans = _orphans(listing, cluster, roots, logged)
        jobs.extend(orphans)
        cluster_jobs.extend(orphans)
        by_token = {comment: job_id for job_id, comment in listing.comments.items()}
        for job in cluster_jobs:
            job.asked = True
            job.asked_at = answered
            if job.log.job_id is None:
                job.token_id = by_token.get(job.log.token)
            if job.log.task is not None:
                # An array task (sbatch_array) runs in the folder of plan.py, not in its own:
                # the log's task, not the folder, tells it. The accounting is not asked: its
                # records are per task (the tools of issue 17 show them; here the log decides).
                job.live = listing.tasks.get((job.log.job_id, job.log.task))
                continue
            job.live = listing.states.get(job.job_id)
            job.reason = listing.reasons.get(job.job_id) or None
            job.workdir = listing.workdirs.get(job.job_id)
        # squeue lists only the user's own jobs that slurmctld still holds: the others are
        # looked up in the accounting database, all in one call.
        single = [job for job in cluster_jobs if job.log.task is None]
        unlisted = [job for job in single if job.job_id is not None and job.live is None]
        wanted = [job for job in single if job.job_id is not None] if history else unlisted
        records: dict[int, dict[str, str]] = {}
        usage: dict[tuple[int, str], Usage] = {}
        if history and remembered is not None:
            for job in wanted:
                old = remembered.get((cluster, job.job_id))
                # Asked again: a job that ended since, or that squeue no longer lists.
                unchanged = job.live is not None and job.live not in FINAL_STATES
                if old is not None and (
                    old[1]["State"] in FINAL_STATES or (unchanged and old[0] == job.live)
                ):
                    records[job.job_id] = old[1]
                    usage[job.job_id, old[1]["Submit"]] = old[2]
            wanted = [job for job in wanted if job.job_id not in records]
        if wanted:
            ids = [job.job_id for job in wanted]
            # With `history`, the lines of the job steps (their peak memory) come along.
            found, output = sacct_query(ids, cluster, timeout, HISTORY_FIELDS, steps=history)
            records.update(found or {})
            if history:
                usage.update(usage_by_run(output, HISTORY_FIELDS))
        for job in unlisted:
            job.account = records.get(job.job_id)
        if history:
            for job in cluster_jobs:
                job.history = records.get(job.job_id)
                if job.history is not None:
                    job.usage = usage.get((job.job_id, job.history["Submit"]))
                    if remembered is not None:
                        remembered[cluster, job.job_id] = (job.live, job.history, job.usage)
    return unreachable


def _listing(
    cluster: str | None, timeout: float, snapshot: SnapshotOf | None
) -> tuple[Listing | None, datetime, str | None]:
    """What SLURM lists of the user's jobs on a cluster and when, else why it could not be
    asked."""
    if snapshot is not None:
        answer = snapshot(cluster)
        return (
            (answer.listing, answer.time, None)
            if answer.ok
            else (None, answer.time, answer.error.strip())
        )
    answered = datetime.now()
    result = run_command(squeue_command(cluster), timeout=timeout)
    if result.returncode != 0:
        return None, answered, result.describe()
    try:
        return parse_squeue(result.stdout), answered, None
    except UnreadableOutputError as exc:
        return None, answered, str(exc)


def _orphans(
    listing: Listing, cluster: str | None, roots: Iterable[str | Path], logged: set[str]
) -> list[FoundJob]:
    """The live, tagged jobs that squeue lists below one of `roots` in a folder without log."""
    tops = [os.path.realpath(root) for root in roots]
    orphans = []
    for job_id in listing.active():
        workdir = listing.workdirs.get(job_id)
        if workdir is None or not is_token(listing.comments.get(job_id, "")):
            continue
        real = os.path.realpath(workdir)
        if real in logged or not any(real == top or real.startswith(top + os.sep) for top in tops):
            continue
        folder = Path(os.path.relpath(workdir))
        joblog = JobLog(folder / LOG_NAME, "", job_id=job_id, cluster=cluster)
        orphans.append(FoundJob(joblog, read_ret(folder), orphan=True))
    return orphans


def search_jobs(
    paths: Iterable[str | Path],
    history: bool = False,
    *,
    snapshot: SnapshotOf | None = None,
    remembered: Remembered | None = None,
    report: bool = True,
) -> JobSearch | None:
    """Find the jobs below the given folders, ask SLURM for their states, report problems.

    Parameters
    ----------
    paths
        The folders to search.
    history
        Ask sacct about all jobs, also those squeue lists (see `ask_slurm`).
    snapshot, remembered
        See `ask_slurm`.
    report
        Print the problems on standard error (else the caller does, see `report_problems`).

    Returns
    -------
    search
        What was found, or `None` (after printing why) when the environment sets an invalid
        command timeout.
    """
    try:
        timeout = Config.from_environ().command_timeout
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return None
    paths = list(paths)
    jobs, errors = find_jobs(paths)
    unreachable = ask_slurm(jobs, timeout, history, paths, snapshot=snapshot, remembered=remembered)
    # A submission interrupted before its Submitted record: only the token can tell the job.
    for job in jobs:
        if job.job_id is None and _submitting_now(job):
            # Not yet in SLURM's answer, which is older than the submission (e.g. cached).
            continue
        if job.job_id is None and job.log.token is None:
            errors.append(
                f"Skipped: The job log {job.log.path} has no Submitted record: nothing was "
                "submitted."
            )
        elif job.job_id is None:
            why = (
                "squeue lists no job with its token on the default cluster: the job was not "
                "submitted, or it has ended"
                if job.asked
                else "SLURM could not be asked for the job with its token"
            )
            errors.append(
                f"Skipped: the job log {job.log.path} has no Submitted record ({job.log.token}), "
                f"and {why}. Booting the workflow again completes the log."
            )
    jobs = [job for job in jobs if job.job_id is not None]
    search = JobSearch(jobs, errors, unreachable, timeout)
    if report:
        search.report_problems()
    return search


def _submitting_now(job: FoundJob) -> bool:
    """True for a log whose submission began after SLURM's answer about its cluster.

    A log of only its first two lines was just started: its step is about to submit.
    """
    began = job.log.submitting_time
    if began is None and job.log.job_id is None:
        try:
            began = datetime.fromtimestamp(job.log.path.mtime)
        except OSError:
            return False
    return job.asked_at is not None and began is not None and began > job.asked_at

"""Find the jobs of a workflow from their logs and ask SLURM which of them are still alive.

Shared by `stepup canceljobs`, `stepup removejobs` and `stepup jobs`: they search folders for
`slurmjob.log`, read each log on its own (one unreadable log never stops the others), read the
exit code in `slurmjob.ret`, and ask SLURM with one `squeue` call per cluster which jobs are
still pending or running, and with one `sacct` call per cluster about the others. The printing
helpers keep the output of the tools alike.
"""

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from path import Path

from .config import Config, ConfigError
from .joblog import LOG_NAME, JobLog, JobLogError, find_logs, is_token, read_log
from .slurm.commands import run_command
from .slurm.identity import foreign_workdir, why_not_logged_job
from .slurm.parsers import Listing, UnreadableOutputError, parse_squeue
from .slurm.queries import HISTORY_FIELDS, sacct_records, squeue_command
from .states import FAILED_STATES, FINAL_STATES
from .tables import print_table
from .version import add_version_argument
from .wrapper import read_ret

__all__ = (
    "FoundJob",
    "JobSearch",
    "add_search_arguments",
    "add_tool",
    "ask_slurm",
    "find_jobs",
    "print_actions",
    "search_jobs",
)

# Final states in which the job did not end well.


@dataclass
class FoundJob:
    """A job found through its log, with what the log, `slurmjob.ret` and SLURM say of it.

    Attributes
    ----------
    log
        The parsed log, with a job id or with the token of an interrupted submission.
    ret
        The contents of `slurmjob.ret`, see `read_ret`.
    asked
        True when SLURM answered the query for this job's cluster.
    live
        The state SLURM lists for the job now, `None` when it is not listed (or not asked).
    reason
        Why SLURM keeps the job pending (e.g. `Priority`), `None` when it does not say.
    token_id
        For a log without `Submitted` record: the job that SLURM lists with the log's token.
    account
        SLURM's accounting record of a job that squeue no longer lists (see
        `slurm.queries.HISTORY_FIELDS`), `None` when sacct was not asked or does not know it.
    history
        SLURM's accounting record of the job, also when squeue lists it; only asked for by
        `stepup jobs` (for the times and exit codes), else `None`.
    workdir
        The folder in which squeue lists the job, `None` when it is not listed.
    orphan
        True for a live job of StepUp Queue found without a log in its folder; `log` then
        holds only its job id and cluster.
    """

    log: JobLog
    ret: int | str | None
    asked: bool = False
    live: str | None = None
    reason: str | None = None
    token_id: int | None = None
    account: dict[str, str] | None = None
    history: dict[str, str] | None = None
    workdir: str | None = None
    orphan: bool = False

    @property
    def folder(self) -> Path:
        """The job folder, normalized for printing."""
        return Path(os.path.normpath(self.log.path.parent))

    @property
    def job_id(self) -> int | None:
        return self.log.job_id if self.log.job_id is not None else self.token_id

    @property
    def cluster(self) -> str | None:
        return self.log.cluster

    @property
    def ended_by_log(self) -> bool:
        """True when the log records a final state or `slurmjob.ret` holds an exit code.

        StepUp Queue ends a step as soon as the exit code appears, without logging a state,
        so an exit code alone means the job has finished.
        """
        return self.log.done or isinstance(self.ret, int)

    @property
    def active(self) -> bool | None:
        """True when the job has not finished, False when that is confirmed, else `None`.

        squeue no longer listing a job does not prove that it ended (it lists only the user's
        own jobs, and may forget one): the end is confirmed by sacct or by the log.
        """
        if not self.asked:
            return None
        if self.live is not None:
            return self.live not in FINAL_STATES
        if self.account is not None:
            return self.account["State"] not in FINAL_STATES
        return False if self.ended_by_log else None

    @property
    def owner(self) -> str | None:
        """The user who submitted the job according to sacct, `None` when unknown."""
        return None if self.account is None else self.account["User"]

    @property
    def why_not_ours(self) -> str | None:
        """Why SLURM's job with this id is not the log's job, `None` when nothing says so.

        Job ids are reused (e.g. after a reinstall of SLURM), and a folder may hold the log of
        another user's job: such a job is never cancelled and its files are never removed.
        """
        if self.live is not None:
            # squeue lists the user's own jobs only: the folder tells whether it is this one.
            why = foreign_workdir(self.job_id, self.workdir or "", self.log.path.parent)
        elif self.account is None:
            return None
        elif self.owner != getpass.getuser():
            return f"job of user {self.owner}: not touched"
        else:
            why = why_not_logged_job(
                self.job_id, self.account, self.log.path.parent, self.log.submitted_time
            )
        return None if why is None else f"{why}, not touched"

    @property
    def end_state(self) -> str | None:
        """The final state recorded in the log, else the one SLURM lists, else `None`."""
        if self.log.done:
            return self.log.last_state
        for state in self.live, self.account and self.account["State"]:
            if state in FINAL_STATES:
                return state
        return None

    @property
    def succeeded(self) -> bool:
        """True when the script left exit code 0 and no failed end state is known."""
        return self.ret == 0 and self.end_state not in FAILED_STATES

    def slurm_column(self) -> str:
        """What SLURM says now, with the reason of a pending job, for printing."""
        if not self.asked:
            return "?"
        if self.live is None and self.account is not None:
            return self.account["State"]
        if self.live == "PENDING" and self.reason is not None:
            return f"PENDING ({self.reason})"
        return self.live or "gone"

    def log_column(self) -> str:
        """What the log and `slurmjob.ret` say, for printing."""
        if self.orphan:
            return "no log"
        # SUBMITTING: killed before the job id was logged; the job was found by its token.
        words = [self.log.last_state or ("SUBMITTING" if self.log.job_id is None else "SUBMITTED")]
        if isinstance(self.ret, int):
            words.append(f"exit={self.ret}")
        elif isinstance(self.ret, str):
            words.append("exit=?")
        return " ".join(words)


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
                joblog = _read_submitted_log(log_path)
            except (JobLogError, OSError) as exc:
                errors.append(f"Skipped: {exc}")
                continue
            jobs.append(FoundJob(joblog, read_ret(log_path.parent)))
    return jobs, errors


def _read_submitted_log(path: Path) -> JobLog:
    joblog = read_log(path)
    if joblog.job_id is None and joblog.token is None:
        raise JobLogError(f"The job log {path} has no Submitted record: nothing was submitted.")
    return joblog


def ask_slurm(
    jobs: list[FoundJob],
    timeout: float,
    history: bool = False,
    roots: Iterable[str | Path] = (),
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
        Also ask sacct (in the same call) about the jobs squeue lists, and set `history` of
        every job sacct knows.
    roots
        The folders searched for logs. Jobs without a log are looked for on the clusters of
        the logs found (on the default cluster when none was found).

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
        result = run_command(squeue_command(cluster), timeout=timeout)
        failure = result.describe() if result.returncode != 0 else None
        if failure is None:
            try:
                listing = parse_squeue(result.stdout)
            except UnreadableOutputError as exc:
                failure = str(exc)
        if failure is not None:
            unreachable[cluster] = failure
            continue
        orphans = _orphans(listing, cluster, roots, logged)
        jobs.extend(orphans)
        cluster_jobs.extend(orphans)
        by_token = {comment: job_id for job_id, comment in listing.comments.items()}
        for job in cluster_jobs:
            job.asked = True
            if job.log.job_id is None:
                job.token_id = by_token.get(job.log.token)
            job.live = listing.states.get(job.job_id)
            job.reason = listing.reasons.get(job.job_id) or None
            job.workdir = listing.workdirs.get(job.job_id)
        # squeue lists only the user's own jobs that slurmctld still holds: the others are
        # looked up in the accounting database, all in one call.
        unlisted = [job for job in cluster_jobs if job.job_id is not None and job.live is None]
        wanted = [job for job in cluster_jobs if job.job_id is not None] if history else unlisted
        if wanted:
            ids = [job.job_id for job in wanted]
            records = sacct_records(ids, cluster, timeout, HISTORY_FIELDS) or {}
            for job in unlisted:
                job.account = records.get(job.job_id)
            if history:
                for job in wanted:
                    job.history = records.get(job.job_id)
    return unreachable


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


def search_jobs(paths: Iterable[str | Path], history: bool = False) -> JobSearch | None:
    """Find the jobs below the given folders, ask SLURM for their states, report problems.

    Parameters
    ----------
    paths
        The folders to search.
    history
        Ask sacct about all jobs, also those squeue lists (see `ask_slurm`).

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
    unreachable = ask_slurm(jobs, timeout, history, paths)
    # A submission interrupted before its Submitted record: only the token can tell the job.
    for job in jobs:
        if job.job_id is None:
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
    search.report_problems()
    return search


def add_search_arguments(parser: argparse.ArgumentParser):
    """Add the PATH arguments shared by the job tools."""
    parser.add_argument(
        "paths",
        nargs="*",
        default=[Path(".")],
        type=Path,
        metavar="PATH",
        help=f"Folders searched recursively for {LOG_NAME} (hidden folders are skipped). "
        "Default: the current folder.",
    )
    add_version_argument(parser)


def add_tool(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    summary: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    tool: Callable[[argparse.Namespace], int],
) -> Callable:
    """Add a job tool as a StepUp subcommand and return the function that runs it.

    The tools register with `(subparsers, loader=None)`: StepUp 3 passes the subparsers only,
    StepUp 4 also its configuration loader (unused). Both ignore what the returned function
    returns, so it exits through `sys.exit`.

    This is also StepUp Queue's only hook in a `stepup build` or `stepup boot` process before
    its director starts: there it raises the open-file limit (`entry.raise_open_file_limit`).
    """
    # Imported here: the tools of every `stepup` command import this module.
    from .entry import raise_open_file_limit

    raise_open_file_limit(sys.argv)
    parser = subparsers.add_parser(name, help=summary, description=description)
    add_arguments(parser)
    return lambda args: sys.exit(tool(args))


def print_actions(rows: list[tuple[str, FoundJob, str]]):
    """Print one row per job: action, job id, cluster, SLURM state (with the reason of a
    pending job), log state, folder, note.

    The cluster column is left out when no job names one (see `tables.print_table`).

    Parameters
    ----------
    rows
        (action, job, note) for each job; the note may be empty.
    """
    headers = ["ACTION", "JOB", "CLUSTER", "SLURM", "LOG", "FOLDER", "NOTE"]
    cells = [
        [
            action,
            str(job.job_id),
            job.cluster or "",
            job.slurm_column(),
            job.log_column(),
            str(job.folder),
            note,
        ]
        for action, job, note in rows
    ]
    print_table(
        headers,
        cells,
        wrap=("ACTION", "SLURM", "LOG", "NOTE"),
        optional=("CLUSTER",),
    )

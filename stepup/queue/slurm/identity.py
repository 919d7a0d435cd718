"""Which job is whose: the rules that tie a job SLURM knows to a job folder and its log.

Job ids are reused (a reinstalled SLURM starts again at 1, ids wrap at MaxJobId), SLURM resets
a job's submit time on every requeue, and a submission may be interrupted before its job id is
logged. A job is acted on (waited for, cancelled, its files removed) only when these rules say
it is the folder's; every mismatch is reported, never acted on.
"""

import os
import re
from datetime import datetime

from path import Path

from .parsers import CLOCK_SLACK, parse_time
from .queries import accounted_submissions, listed_submissions

__all__ = (
    "ARRAY_LINKS",
    "array_task_folder",
    "find_by_token",
    "foreign_workdir",
    "match_submission",
    "why_not_array_task",
    "why_not_logged_job",
)

# Below the work directory of an array (the folder of plan.py): per step name and token, the
# symlink `N` of task N points to its job folder (written by `arraysubmission` before sbatch).
ARRAY_LINKS = ".stepup-queue/arrays"
# The comment of a job submitted by StepUp Queue (`joblog.is_token`, a layer above).
_RE_TOKEN = re.compile(r"stepup-queue-[0-9a-f]{16}")


def foreign_workdir(job_id: int, workdir: str, folder: str) -> str | None:
    """Why SLURM's job with a logged id is not the job of `folder`: it ran elsewhere.

    Returns
    -------
    why
        `None` when `workdir` (SLURM's work directory of the job) is empty or the folder.
    """
    if workdir != "" and os.path.realpath(workdir) != os.path.realpath(folder):
        return f"SLURM's job {job_id} ran in {workdir}: the id was reused"
    return None


def array_task_folder(workdir: str, token: str, index: int) -> str | None:
    """The job folder (real path) of task `index` of the array with this token and work
    directory, from its symlink `WORKDIR/ARRAY_LINKS/NAME/TOKEN/N`; `None` when no such link
    exists (e.g. removed once every task of its step ended)."""
    for link in (Path(workdir) / ARRAY_LINKS).glob(f"*/{token}/{index}"):
        if link.islink():
            return os.path.realpath(link)
    return None


def why_not_array_task(
    name: str,
    workdir: str,
    token: str | None,
    *,
    index: int,
    folder: str,
    ended: bool,
    first_submit: str | None,
    submitted: datetime | None,
) -> str | None:
    """Tell why SLURM's array task `name` (`ID_N`) is not the task a folder's log records,
    `None` when it is (or, for an ended task, may be).

    An array task runs with the folder of plan.py as its work directory, not in its own job
    folder, so the work directory alone cannot tie it to the folder (as `foreign_workdir` does
    for a single job). The array's comment (its submission token) and work directory lead to
    the symlink through which SLURM writes the task's output, `WORKDIR/ARRAY_LINKS/NAME/TOKEN/N`,
    which the submitting step created before sbatch and which points to the folder of task N:
    the task is the folder's only when that link resolves to the folder. The token is random
    and written by the submission alone, so a reused array id (another workflow, another user,
    a reinstalled SLURM) or a log that names another folder's task never matches.

    The links of a step are removed once all its tasks ended, and the accounting stores comments
    only with `AccountingStoreFlags=job_comment`. Without the link, a task that has not ended is
    never confirmed (it is not acted on); an ended one is checked as a single job is for reused
    ids: it must have been submitted no later than the log's `Submitted` record.

    Parameters
    ----------
    name
        The task as SLURM names it, `ID_N`, for messages.
    workdir
        SLURM's work directory of the array, empty when unknown.
    token
        The array's comment, `None` when unknown.
    index
        The task index N.
    folder
        The job folder whose log records the task.
    ended
        True when SLURM says the task ended.
    first_submit
        When SLURM says the task was first submitted (sacct's time), `None` when unknown.
    submitted
        When the log's `Submitted` record was written, `None` when unknown.
    """
    linked = None
    if workdir != "" and token is not None and _RE_TOKEN.fullmatch(token):
        linked = array_task_folder(workdir, token, index)
        if linked is None and (Path(workdir) / ARRAY_LINKS).glob(f"*/{token}"):
            return f"SLURM's array {name.partition('_')[0]} ({token}) has no task {index} link"
    elif workdir != "" and token is not None:
        return f"SLURM's array of task {name} carries no token of StepUp Queue: not its task"
    if linked is not None:
        if linked != os.path.realpath(folder):
            shown = os.path.relpath(linked)
            return f"SLURM's task {name} is that of {linked if shown.startswith('..') else shown}"
        return None
    if not ended:
        return f"SLURM's task {name} cannot be tied to this folder (no link of its array)"
    when = parse_time(first_submit or "")
    if submitted is not None and when is not None and when > submitted + CLOCK_SLACK:
        return (
            f"SLURM's task {name} was submitted at {first_submit}, after the log's Submitted "
            f"record ({submitted:%Y-%m-%dT%H:%M:%S}): the id was reused"
        )
    return None


def why_not_logged_job(
    job_id: int, record: dict[str, str], folder: str, submitted: datetime | None
) -> str | None:
    """Tell why SLURM's job with a logged id is not the logged job, `None` when it may be.

    Job ids are reused (a reinstalled SLURM starts again at 1, ids wrap at MaxJobId): the id
    counts only when SLURM's record of the job has the job folder as its work directory and
    was first submitted no later than the log's `Submitted` record. The first submission, not
    the last: SLURM resets the submit time on every requeue. No earliest time is checked: the
    `Submitted` record of a job found after an interrupted submission is written when the job
    is found, perhaps long after SLURM's submit time.

    Parameters
    ----------
    job_id
        The job id in the log.
    record
        SLURM's record of that job from `queries.sacct_records`.
    folder
        The job folder.
    submitted
        When the log's `Submitted` record was written, `None` when unknown.
    """
    why = foreign_workdir(job_id, record["WorkDir"], folder)
    if why is not None:
        return why
    first = record.get("FirstSubmit", record["Submit"])
    when = parse_time(first)
    if submitted is not None and when is not None and when > submitted + CLOCK_SLACK:
        return (
            f"SLURM's job {job_id} was submitted at {first}, after the log's Submitted record "
            f"({submitted:%Y-%m-%dT%H:%M:%S}): the id was reused"
        )
    return None


def find_by_token(
    token: str | None, clusters: str | None, since: datetime, timeout: float, arrays: bool = False
) -> tuple[bool, int | None]:
    """Look for the job of an interrupted submission, first in squeue, then in sacct.

    squeue shows the token (the job's comment), the folder and the submission time of every
    job that slurmctld still holds. sacct shows comments only where the accounting stores
    them (`AccountingStoreFlags=job_comment`, not SLURM's default); elsewhere the job is the
    one, with no comment, submitted from the current folder after the `Submitting` record.

    Parameters
    ----------
    token
        The comment given to the job at submission; `None` for a bare `Submitting` record of
        the original StepUp Queue 2.x, which tags no job: then only the folder and the time
        tell the job.
    clusters
        The value of the script's `-M` option, `None` when it has none.
    since
        The time of the `Submitting` record.
    timeout
        Seconds after which squeue or sacct is killed.
    arrays
        Look for an array job (`sbatch_array`), submitted from the current folder: `job_id`
        is then its array job id.

    Returns
    -------
    certain, job_id
        `certain` is False when SLURM could not be asked; `job_id` is None when
        SLURM answered and no job carries the token.

    Raises
    ------
    ValueError
        When SLURM lists several jobs without comment that may be this submission's.
    """
    listed = listed_submissions(clusters, timeout, arrays)
    if listed is None:
        return False, None
    tagged = [job_id for job_id, record in listed.items() if token and record["Comment"] == token]
    if tagged:
        return True, tagged[0]
    # squeue shows the comment of every job it lists, so none of those carries our token.
    # A submission without token (2.x) is told by folder and time, here as in sacct.
    found = [] if token is not None else match_submission(listed, None, os.getcwd(), since)
    records = accounted_submissions(clusters, since, timeout, arrays)
    if records is None:
        return False, None
    unlisted = {job_id: record for job_id, record in records.items() if job_id not in listed}
    candidates = found + match_submission(unlisted, token, os.getcwd(), since)
    if len(candidates) > 1:
        ids = ", ".join(map(str, candidates))
        ended = ", all ended" if token is not None else ""
        raise ValueError(
            f"SLURM lists several jobs without a comment submitted from {os.getcwd()} "
            f"since {since - CLOCK_SLACK:%Y-%m-%dT%H:%M:%S} ({ids}){ended}; StepUp "
            "Queue cannot tell which one its interrupted submission made. Make sure none of "
            "them is still needed (scancel), then remove slurmjob.log in this folder to submit "
            "the job afresh."
        )
    return True, candidates[0] if candidates else None


def match_submission(
    records: dict[int, dict[str, str]], token: str | None, workdir: str, since: datetime
) -> list[int]:
    """Select the jobs in sacct records that a submission tagged with `token` made.

    Parameters
    ----------
    records
        Parsed `sacct` output with the fields of `parsers.SUBMISSION_FIELDS` (or squeue's, in
        the same fields).
    token
        The comment given to the job at submission.
    workdir
        The folder sbatch was run from.
    since
        The time of the `Submitting` record.

    Returns
    -------
    job_ids
        The jobs whose comment is the token; if there are none, the jobs without comment
        submitted from `workdir` no earlier than `since` minus `CLOCK_SLACK`.
    """
    tagged = [job_id for job_id, record in records.items() if token and record["Comment"] == token]
    if tagged:
        return tagged
    earliest = since - CLOCK_SLACK
    return sorted(
        job_id
        for job_id, record in records.items()
        if record["Comment"] == ""
        and record["WorkDir"] == workdir
        and (parse_time(record["Submit"]) or datetime.min) >= earliest
    )

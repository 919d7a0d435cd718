"""The queries that read SLURM's state: squeue, sacct and scontrol show.

Each runs one command (see `commands.run_command`) and returns what its parser makes of the
answer, or `None` when SLURM did not answer or printed something unreadable: the callers treat
that as "not known", never as "no such job". The status query that every waiting step shares
goes through the cache (see `cache.StateCache`) instead.
"""

import os
from collections.abc import Iterable
from datetime import datetime

from .commands import CommandResult, cluster_args, is_transient, run_command
from .parsers import (
    CLOCK_SLACK,
    SQUEUE_FORMAT,
    SUBMISSION_FIELDS,
    SUBMISSION_FORMAT,
    Listing,
    array_tasks,
    last_run,
    parse_array_states,
    parse_cluster_name,
    parse_job_records,
    parse_job_runs,
    parse_key_values,
    parse_max_array_size,
    parse_requeue_codes,
    parse_squeue,
    readable,
)

__all__ = (
    "ACCOUNT_FIELDS",
    "HISTORY_FIELDS",
    "USAGE_FIELDS",
    "accounted_submissions",
    "array_states",
    "default_cluster_name",
    "listed_submissions",
    "max_array_size",
    "query_jobs",
    "requeue_exit_codes",
    "sacct_query",
    "sacct_records",
    "show_config",
    "show_records",
    "squeue_command",
    "task_records",
)


def squeue_command(cluster: str | None) -> list[str]:
    """The query for the states and comments of all of this user's jobs SLURM still knows."""
    return ["squeue", *cluster_args(cluster), "--me", "-t", "all", "-h", "-o", SQUEUE_FORMAT]


def query_jobs(job_ids: Iterable[int], cluster: str | None, timeout: float) -> Listing | None:
    """Ask squeue now, not through the cache, about some of the user's jobs.

    Returns
    -------
    listing
        What squeue lists of these jobs; `None` when it failed.
    """
    ids = ",".join(map(str, sorted(job_ids)))
    result = run_command([*squeue_command(cluster), "-j", ids], timeout=timeout)
    # squeue fails for ids it no longer knows at all, which is an answer as well.
    if result.returncode != 0 and "invalid job id" not in result.stderr.lower():
        return None
    return readable(parse_squeue, result.stdout)


# User before WorkDir, the field that takes the rest of the line; End tells the runs of a
# requeued job (see `last_run`).
ACCOUNT_FIELDS = ("JobIDRaw", "State", "Submit", "End", "User", "WorkDir")
# What a job asked for and used, read by `efficiency.usage_by_run` from the line of the job
# and those of its steps (peak memory); `Submit` tells the runs of a requeued job apart.
USAGE_FIELDS = (
    "Elapsed",
    "TotalCPU",
    "AllocCPUS",
    "ReqMem",
    "MaxRSS",
    "TRESUsageInTot",
    "Timelimit",
    "NNodes",
)
# The fields `stepup jobs` shows: those of ACCOUNT_FIELDS (to tell whether the job is the
# logged one), times, exit code and USAGE_FIELDS.
HISTORY_FIELDS = (
    "JobIDRaw",
    "State",
    "ExitCode",
    "Submit",
    "Start",
    "End",
    *USAGE_FIELDS,
    "User",
    "WorkDir",
)


def sacct_records(
    job_ids: Iterable[int],
    cluster: str | None,
    timeout: float,
    fields: tuple[str, ...] = ACCOUNT_FIELDS,
) -> dict[int, dict[str, str]] | None:
    """Ask the accounting database about jobs of any user, in one call.

    Every run of a requeued job has a record of its own, each with the time of its requeue as
    its `Submit` (sacct -D lists them all). A job's record is that of its last run, with the
    `Submit` of its first run added as `FirstSubmit`: that time does not change on requeue.

    Parameters
    ----------
    job_ids
        The jobs to look up.
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which sacct is killed.
    fields
        The fields to ask, `JobIDRaw` first and `WorkDir` last: `ACCOUNT_FIELDS`, or
        `HISTORY_FIELDS` (also times as `YYYY-MM-DDTHH:MM:SS`, or `Unknown`/`None` when not yet
        known, and the exit code).

    Returns
    -------
    records
        Job id → the fields after `JobIDRaw` and `FirstSubmit`, for the jobs sacct knows;
        `None` when sacct failed.
    """
    return sacct_query(job_ids, cluster, timeout, fields)[0]


def sacct_query(
    job_ids: Iterable[int | str],
    cluster: str | None,
    timeout: float,
    fields: tuple[str, ...],
    steps: bool = False,
) -> tuple[dict[int, dict[str, str]] | None, str]:
    """`sacct_records`, and sacct's output, which holds the lines of the job steps (`ID.batch`,
    ...) after the line of their job when `steps` is true: still one call.

    `job_ids` may name array tasks as `ID_N`: their records are keyed by their own raw job id
    (`JobIDRaw`); ask the field `JobID` too to tell which task each is (see `task_records`).

    Returns
    -------
    records, output
        The records as returned by `sacct_records`, and what sacct printed (empty when it
        failed).
    """
    # Array tasks as `ID_N` (sacct prints their JobID so, and their own JobIDRaw).
    ids = ",".join(map(str, sorted(job_ids, key=lambda job: (isinstance(job, str), job))))
    only_jobs = [] if steps else ["-X"]
    args = ["sacct", *cluster_args(cluster), *only_jobs, "-D", "-n", "-P", "-a", "-j", ids]
    result = run_command([*args, "-o", ",".join(fields)], timeout=timeout)
    if result.returncode != 0:
        return None, ""
    runs = readable(parse_job_runs, result.stdout, fields)
    records = None if runs is None else {job_id: last_run(rs) for job_id, rs in runs.items()}
    return records, result.stdout


def task_records(
    records: dict[int, dict[str, str]],
) -> tuple[dict[int, dict[str, str]], dict[tuple[int, int], tuple[int, dict[str, str]]]]:
    """Split the records of `sacct_query` asked with the field `JobID` into single jobs and array
    tasks.

    Returns
    -------
    jobs, tasks
        Job id → record of the jobs that are no array task, and (array job id, task index) →
        (raw job id, record) of the array tasks (a pending range gives one entry per task).
    """
    jobs = {}
    tasks = {}
    for raw, record in records.items():
        found = array_tasks(record.get("JobID", ""))
        if found is None:
            jobs[raw] = record
            continue
        for index in found[1]:
            tasks[found[0], index] = (raw, record)
    return jobs, tasks


# Successful answers of `scontrol show config`: a step asks for the name of the default cluster
# and, after a non-zero exit code, for the requeue codes. Keyed by what selects the answer: the
# cluster, and the SLURM installation (PATH and SLURM_CONF, which a cluster module changes).
_CONFIGS: dict[tuple[str | None, str | None, str | None], CommandResult] = {}


def show_config(cluster: str | None, timeout: float) -> CommandResult:
    """SLURM's configuration (`scontrol show config`), asked once per process when it answers.

    Parameters
    ----------
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which scontrol is killed.
    """
    key = (cluster, os.environ.get("SLURM_CONF"), os.environ.get("PATH"))
    result = _CONFIGS.get(key)
    if result is None:
        args = ["scontrol", *cluster_args(cluster), "show", "config"]
        result = run_command(args, timeout=timeout)
        if result.returncode == 0:
            _CONFIGS[key] = result
    return result


def default_cluster_name(timeout: float) -> tuple[str | None, str]:
    """The ClusterName of the default cluster, asked once per process when SLURM answers.

    Returns
    -------
    name, failure
        The name, or `None` with why SLURM could not name it.
    """
    result = show_config(None, timeout)
    if result.returncode != 0:
        return None, result.describe()
    name = parse_cluster_name(result.stdout)
    return name, "" if name is not None else f"`{result.command}` names no ClusterName."


def show_records(
    kind: str, name: str | int | None, cluster: str | None, timeout: float
) -> list[dict[str, str]] | None:
    """`scontrol show KIND [NAME] -o`, one dictionary of `Key=Value` pairs per record.

    Parameters
    ----------
    kind
        `job` or `partition`.
    name
        A job id or partition name; `None` for all.
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which scontrol is killed.

    Returns
    -------
    records
        See `parsers.parse_key_values`; `None` when scontrol did not answer.
    """
    args = ["scontrol", *cluster_args(cluster), "show", kind, "-o"]
    result = run_command([*args, *([] if name is None else [str(name)])], timeout=timeout)
    return parse_key_values(result.stdout) if result.returncode == 0 else None


def requeue_exit_codes(cluster: str | None, timeout: float) -> frozenset[int] | None:
    """The exit codes of a batch script after which SLURM runs the job again.

    Parameters
    ----------
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which scontrol is killed.

    Returns
    -------
    codes
        See `parsers.parse_requeue_codes`; `None` when scontrol failed or printed a list that
        cannot be parsed.
    """
    result = show_config(cluster, timeout)
    return parse_requeue_codes(result.stdout) if result.returncode == 0 else None


def listed_submissions(
    cluster: str | None, timeout: float, arrays: bool = False
) -> dict[int, dict[str, str]] | None:
    """Every job of the user that slurmctld still holds, in the fields `SUBMISSION_FIELDS`.

    With `arrays`, an array job is listed under its array job id (its tasks are left out
    otherwise).

    Returns
    -------
    records
        Job id → {field: value}, with an empty `Comment` for a job without one; `None` when
        squeue did not answer or printed something unreadable.
    """
    form = SUBMISSION_FORMAT.replace("%i", "%F") if arrays else SUBMISSION_FORMAT
    args = ["squeue", *cluster_args(cluster), "--me", "-t", "all", "-h", "-o", form]
    result = run_command(args, timeout=timeout)
    if result.returncode != 0:
        return None
    records = readable(parse_job_records, result.stdout)
    for record in (records or {}).values():
        if record["Comment"] == "(null)":
            record["Comment"] = ""
    return records


def accounted_submissions(
    cluster: str | None, since: datetime, timeout: float, arrays: bool = False
) -> dict[int, dict[str, str]] | None:
    """The user's jobs that the accounting knows, submitted since `since` (minus CLOCK_SLACK).

    With `arrays`, the array jobs alone, each under its array job id.

    Returns
    -------
    records
        Job id → {field: value} in the fields `SUBMISSION_FIELDS`; empty without accounting
        (squeue's list has to do then); `None` when sacct should be asked again later
        (slurmdbd down) or printed something unreadable.
    """
    start = (since - CLOCK_SLACK).strftime("%Y-%m-%dT%H:%M:%S")
    args = ["sacct", *cluster_args(cluster), "-X", "-n", "-P", "-S", start]
    fields = ("JobID", *SUBMISSION_FIELDS[1:]) if arrays else SUBMISSION_FIELDS
    result = run_command([*args, "-o", ",".join(fields)], timeout=timeout)
    if result.returncode != 0:
        return None if is_transient(result) else {}
    text = result.stdout
    if arrays:
        # `ID_N|...` and `ID_[N-M]|...` as `ID|...`; other jobs are left out.
        text = "".join(
            f"{tasks[0]}|{rest}\n"
            for field, _, rest in (line.partition("|") for line in text.splitlines())
            if (tasks := array_tasks(field)) is not None
        )
    return readable(parse_job_records, text)


def array_states(
    array_ids: Iterable[int], cluster: str | None, timeout: float
) -> dict[tuple[int, int], str] | None:
    """The state of every task of some array jobs in SLURM's accounting (`sacct`).

    Returns
    -------
    states
        (array job id, task index) → state; `None` when sacct failed or printed something
        unreadable.
    """
    ids = ",".join(map(str, sorted(array_ids)))
    args = ["sacct", *cluster_args(cluster), "-X", "-n", "-P", "-a", "-j", ids, "-o", "JobID,State"]
    result = run_command(args, timeout=timeout)
    if result.returncode != 0:
        return None
    return readable(parse_array_states, result.stdout)


def max_array_size(cluster: str | None, timeout: float) -> int | None:
    """SLURM's MaxArraySize: the task indices of an array must be below it; `None` when
    scontrol did not tell."""
    result = show_config(cluster, timeout)
    return parse_max_array_size(result.stdout) if result.returncode == 0 else None

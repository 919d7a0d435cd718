"""SLURM's word on the job that a folder's log records, checked against the folder.

Every answer about the logged job passes through here: a job that only shares its id with
the logged one (ids are reused) makes the step fail, and is never waited for or cancelled.
"""

import os

from .config import Config
from .errors import JobError
from .joblog import (
    LOG_NAME,
    JobLog,
)
from .slurm.cache import Snapshot
from .slurm.identity import foreign_workdir, why_not_logged_job
from .slurm.queries import sacct_records

__all__ = (
    "on_cluster",
    "reused_error",
    "verified_account_state",
    "verified_record",
    "verified_state",
)


def verified_record(joblog: JobLog, config: Config) -> dict[str, str] | None:
    """SLURM's accounting record of the logged job, `None` when sacct does not know it.

    Raises
    ------
    JobError
        When SLURM's job only shares its id with the logged job: such a job is never waited
        for (or cancelled), and the step fails.
    """
    records = sacct_records([joblog.job_id], joblog.cluster, config.command_timeout)
    record = None if records is None else records.get(joblog.job_id)
    if record is None:
        return None
    why = why_not_logged_job(joblog.job_id, record, os.getcwd(), joblog.submitted_time)
    if why is not None:
        raise reused_error(joblog, why)
    return record


def reused_error(joblog: JobLog, why: str) -> JobError:
    return JobError(
        f"{joblog.path} records job {joblog.job_id}, but {why}. That job is not waited for "
        "and not cancelled. The logged job ended long ago: to submit it again, remove "
        f"{LOG_NAME} in this folder by hand (the job tools do not touch such a log)."
    )


def verified_account_state(joblog: JobLog, config: Config) -> str | None:
    """The logged job's state in SLURM's accounting, `None` when sacct does not know it.

    Raises a JobError as `verified_record` does.
    """
    record = verified_record(joblog, config)
    return None if record is None else record["State"]


def verified_state(joblog: JobLog, snapshot: Snapshot, config: Config) -> str | None:
    """The logged job's state in a status answer, else in the accounting database.

    A job leaves slurmctld's memory MinJobAge seconds after it ended (at once when cancelled
    while requeued); the accounting database still knows it.

    Raises
    ------
    JobError
        When the job that SLURM lists under the logged id runs in another folder, or as
        `verified_record` does.
    """
    current = snapshot.states.get(joblog.job_id)
    if current is None:
        return verified_account_state(joblog, config)
    why = foreign_workdir(
        joblog.job_id, snapshot.listing.workdirs.get(joblog.job_id, ""), os.getcwd()
    )
    if why is not None:
        raise reused_error(joblog, why)
    return current


def on_cluster(joblog: JobLog) -> str:
    return "" if joblog.cluster is None else f" on cluster {joblog.cluster}"

"""Waiting for a submitted job: poll for its exit code, follow SLURM's state through the shared
cache, cancel a job that can never start, and decide the step's exit code at the end.
"""

import os
import random
import shlex
import time
from datetime import datetime, timedelta

from path import Path

from .config import Config
from .errors import JobError, RetryError
from .joblog import (
    JobLog,
    append_record,
)
from .limits import (
    admitting_partitions,
)
from .logged_job import on_cluster, verified_account_state, verified_state
from .slurm.cache import Snapshot, StateCache
from .slurm.control import cancel
from .slurm.queries import requeue_exit_codes, show_records
from .states import FINAL_STATES, PARTITION_REASONS, SCRIPT_ENDED_STATES, hopeless_fix
from .wrapper import RET_NAME, read_ret

__all__ = ("finish", "nap", "wait_for_end")


def nap(config: Config, since: datetime | None = None):
    """Sleep a random time within `config.sleep_range`: steps that wait together look at
    different moments, and a job submitted a short while ago (`since`) is looked at more often."""
    age = None if since is None else (datetime.now() - since).total_seconds()
    time.sleep(random.uniform(*config.sleep_range(age)))


def wait_for_end(joblog: JobLog, config: Config, first_query: float) -> str | None:
    """Wait until the job script ended or SLURM says the job is over.

    Parameters
    ----------
    joblog
        The log of the submitted job.
    config
        The settings.
    first_query
        Seconds before SLURM is asked about the job for the first time.

    Returns
    -------
    state
        The last state SLURM reported, `None` when it was not asked or no longer lists the job.
    """
    cache = StateCache(config, joblog.cluster)
    submitted = joblog.submitted_time or datetime.now()
    trusted_after = submitted + timedelta(seconds=config.settle_time)
    state = joblog.last_state
    next_query = time.monotonic() + first_query
    # Since when SLURM keeps the job pending for a reason that never resolves by itself.
    hopeless_since = None
    # Since when squeue no longer lists the job while the accounting says it has not ended.
    runaway_since = None
    while True:
        if read_ret() is not None:
            return state
        if time.monotonic() >= next_query:
            next_query = time.monotonic() + config.cache_timeout + random.uniform(0, config.jitter)
            snapshot = cache.snapshot()
            if config.debug:
                print(
                    f"{snapshot.time} {cache.command()} rc={snapshot.returncode} {snapshot.error}"
                )
            if snapshot.ok and snapshot.time >= trusted_after:
                current = verified_state(joblog, snapshot, config)
                if current is not None and current != state:
                    append_record(joblog.path, current)
                    state = current
                if current is None or current in FINAL_STATES:
                    return current
                listed = joblog.job_id in snapshot.states
                runaway_since = None if listed else runaway_since or snapshot.time
                _check_runaway(joblog, current, runaway_since, snapshot.time, config)
                hopeless_since = _check_hopeless(joblog, snapshot, hopeless_since, config)
        nap(config, submitted)


def _check_runaway(
    joblog: JobLog, state: str, since: datetime | None, now: datetime, config: Config
):
    """Raise a JobError when squeue has not listed the job for too long while the accounting
    says it is pending or running: SLURM lost the job's end (a runaway job)."""
    if since is None or (now - since).total_seconds() < config.runaway_timeout:
        return
    raise JobError(
        f"Job {joblog.job_id}{on_cluster(joblog)} is {state} in SLURM's accounting (sacct), "
        f"but slurmctld has not listed it for {config.runaway_timeout:g} s "
        "(STEPUP_SBATCH_RUNAWAY_TIMEOUT): SLURM lost the end of this job, a runaway job. "
        f"`sacctmgr show runawayjobs` lists it; fixing it there (cluster administrators or "
        f"operators) records its end, and a new run of the workflow then reports it. "
        f"See {Path.cwd() / 'slurmjob.err'} for how the job went."
    )


def _check_hopeless(
    joblog: JobLog, snapshot: Snapshot, since: datetime | None, config: Config
) -> datetime | None:
    """Cancel a job that pends for a reason that never resolves, after the grace period.

    Returns
    -------
    since
        Since when the job pends for such a reason, `None` when it does not.
    """
    reason = snapshot.listing.reasons.get(joblog.job_id, "")
    pending = snapshot.states.get(joblog.job_id) == "PENDING"
    fix = hopeless_fix(reason) if pending else None
    if fix is None:
        return None
    since = since or snapshot.time
    if (snapshot.time - since).total_seconds() < config.hopeless_grace:
        return since
    if reason in PARTITION_REASONS:
        admitting = _admitting_partitions(joblog, config)
        if admitting != []:
            what = "SLURM could not be asked" if admitting is None else ", ".join(admitting)
            print(
                f"Job {joblog.job_id} pends with SLURM's reason {reason}, but it may run in "
                f"another of its partitions ({what}): not cancelled, still waiting."
            )
            # Look again after another grace period.
            return snapshot.time
    for result in cancel([joblog.job_id], joblog.cluster, config.command_timeout):
        if result.returncode != 0:
            raise JobError(
                f"Job {joblog.job_id}{on_cluster(joblog)} pends with SLURM's reason {reason}, "
                f"which does not resolve by itself, but it could not be cancelled: "
                f"{result.describe()}"
            )
    append_record(joblog.path, f"Hopeless {reason}")
    append_record(joblog.path, "CANCELLED")
    raise JobError(
        f"Job {joblog.job_id}{on_cluster(joblog)} was pending with SLURM's reason {reason}, "
        f"which does not resolve by itself, for more than {config.hopeless_grace:g} s "
        "(STEPUP_SBATCH_HOPELESS_GRACE): StepUp Queue cancelled it. Likely fix: "
        f"{fix}. Then clear the job folder (stepup removejobs --commit "
        f"{shlex.quote(os.getcwd())}) and run the "
        "workflow again."
    )


def _admitting_partitions(joblog: JobLog, config: Config) -> list[str] | None:
    """The partitions of a pending job that admit it (see `admitting_partitions`), `None`
    when SLURM did not tell."""
    jobs = show_records("job", joblog.job_id, joblog.cluster, config.command_timeout)
    partitions = show_records("partition", None, joblog.cluster, config.command_timeout)
    if not jobs or partitions is None:
        return None
    return admitting_partitions(jobs[0], partitions)


def finish(
    joblog: JobLog, state: str | None, config: Config, retried: frozenset[str] = frozenset()
) -> int:
    """Return the exit code of the job's last run, or raise a JobError saying how it ended.

    Raises a RetryError instead when SLURM ended the job (killed its script) in one of the
    `retried` states.
    """
    requeue_codes = None
    # SLURM's end state, once asked.
    end = None
    while True:
        code = read_ret()
        if code is None and (state is None or state in SCRIPT_ENDED_STATES):
            # The script ended, but its exit code may not have reached this node yet.
            deadline = time.monotonic() + config.ret_timeout
            while code is None and time.monotonic() < deadline:
                nap(config)
                code = read_ret()
        # Code 0 is always final: SLURM would run a job with RequeueExit=0 forever.
        if not isinstance(code, int) or code == 0:
            break
        if requeue_codes is None:
            requeue_codes = requeue_exit_codes(joblog.cluster, config.command_timeout)
        if requeue_codes is None or code not in requeue_codes:
            break
        print(
            f"Job {joblog.job_id} exited with code {code}, which SLURM's RequeueExit or "
            "RequeueExitHold lists: waiting for its next run (a held job runs once released, "
            f"e.g. with `scontrol release {joblog.job_id}`)"
        )
        end = _runs_again(joblog, config)
        if end is not None:
            break
        state = wait_for_end(joblog, config, 0.0)
    if isinstance(code, int):
        if code != 0:
            if end is None and code > 128:
                end = _signal_end(joblog, config)
                if end in retried:
                    raise RetryError(end)
            how = "" if end is None or end in SCRIPT_ENDED_STATES else f" (SLURM: {end})"
            print(f"Job {joblog.job_id} ended with exit code {code}{how}. See slurmjob.err.")
        return code
    if code is None and state in retried:
        raise RetryError(state)
    last = state or "no longer listed by SLURM"
    if isinstance(code, str):
        raise JobError(
            f"Job {joblog.job_id} (last state: {last}) left {code!r} in {RET_NAME} instead of "
            "an exit code. See slurmjob.err."
        )
    raise JobError(
        f"Job {joblog.job_id}{on_cluster(joblog)} ended without an exit code in {RET_NAME}. "
        f"Last state reported by SLURM: {last}. "
        f"See {Path.cwd() / 'slurmjob.err'} for what went wrong."
    )


def _runs_again(joblog: JobLog, config: Config) -> str | None:
    """After a script's exit code that SLURM requeues jobs on, wait for the job's next run.

    Returns
    -------
    end
        `None` once the next run emptied (or rewrote) `slurmjob.ret`; SLURM's final state
        when it ended the job before it ran again (e.g. CANCELLED while requeued).
    """
    written = _ret_stamp()
    if written is None:
        return None
    # Only an answer from after the script ended tells whether SLURM requeued the job.
    trusted_after = datetime.fromtimestamp(written / 1e9) + timedelta(seconds=config.settle_time)
    cache = StateCache(config, joblog.cluster)
    while True:
        nap(config)
        if read_ret() is None or _ret_stamp() != written:
            return None
        snapshot = cache.snapshot()
        if snapshot.ok and snapshot.time >= trusted_after:
            current = verified_state(joblog, snapshot, config)
            if current in FINAL_STATES:
                return current


def _ret_stamp() -> int | None:
    """When `slurmjob.ret` was last written (ns), `None` when it is gone."""
    try:
        return Path(RET_NAME).stat().st_mtime_ns
    except OSError:
        return None


def _signal_end(joblog: JobLog, config: Config) -> str | None:
    """SLURM's end state of a job whose script exited with a code above 128.

    Such a code often means a signal from outside (e.g. OUT_OF_MEMORY), which SLURM names.
    SLURM may record the end a moment after the script wrote its exit code.
    """
    deadline = time.monotonic() + config.ret_timeout
    while True:
        state = verified_account_state(joblog, config)
        if state in FINAL_STATES or time.monotonic() >= deadline:
            return state
        nap(config)

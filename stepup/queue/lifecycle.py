"""The life of one job: submit it once, reattach after a restart, wait, and report its end.

This module decides the order of things; submitting, waiting and SLURM's word on the logged
job live in their own modules, and so do the job log, the wrapper and SLURM itself.
"""

import os
import shlex

from path import Path

from .attempts import archive_attempt, earlier_attempts, read_retry_settings
from .config import Config, OnChange
from .errors import JobError, RetryError
from .joblog import (
    LOG_NAME,
    JobLog,
    append_record,
    read_log,
    start_log,
)
from .logged_job import on_cluster, verified_record
from .slurm.cache import StateCache
from .slurm.control import cancel
from .slurm.identity import find_by_token, foreign_workdir
from .slurm.queries import query_jobs
from .submission import after_rc, submit_once
from .waiting import finish, wait_for_end
from .wrapper import JobScript, read_job_script

__all__ = ("run_job",)


def run_job(ext: str, rc: str | None, digest: str, config: Config, env: dict[str, str]) -> int:
    """Submit the job in the current folder once, wait for it, and return its exit code.

    When SLURM ends the job with a state that is retried (see `attempts`), the job is
    submitted again, once per attempt, up to the number of retries.

    Parameters
    ----------
    ext
        The extension of the job script, e.g. `.sh`.
    rc
        A shell command to run before sbatch, or `None`.
    digest
        The input digest of the step (`STEPUP_STEP_INP_DIGEST`), kept in the log to notice
        changed inputs after a restart.
    config
        The settings.
    env
        The environment of sbatch (and rc), which the job inherits.

    Returns
    -------
    returncode
        The exit code of the job script, read from `slurmjob.ret`.

    Raises
    ------
    JobError, JobScriptError, JobLogError, ConfigError
        With a message that names the file, the problem and a fix.
    """
    if digest == "":
        raise JobError(
            "STEPUP_STEP_INP_DIGEST is not set: an sbatch step must run as a StepUp step "
            "(stepup >= 3.1.4), made by stepup.queue.api.sbatch() in plan.py."
        )
    # Absolute paths, so that every message names the file in full.
    log_path = Path.cwd() / LOG_NAME
    joblog = read_log(log_path) if log_path.exists() else None
    script = read_job_script(f"slurmjob{ext}", env)
    if rc is not None and joblog is not None and joblog.interrupted:
        # The interrupted submission went where rc sent sbatch: its job is looked for there.
        script = after_rc(script, rc, config, env)
    StateCache(config, None).check_writable()
    # A job of the old inputs that was cancelled just now, which SLURM may still list.
    replaced = None
    if joblog is not None and joblog.digest != digest:
        joblog, replaced = _inputs_changed(joblog, digest, config, script)
    if joblog is None:
        start_log(log_path, digest)
        joblog = JobLog(log_path, digest)
    earlier = earlier_attempts(log_path, joblog.digest)
    if earlier:
        print(f"Earlier attempts of this job: {_attempts(earlier)}")
    while True:
        try:
            return _attempt(
                joblog,
                script,
                rc=rc,
                config=config,
                env=env,
                replaced=replaced,
                retrying=bool(earlier),
            )
        except RetryError as exc:
            # The end goes into the log, so that the kept log says how the attempt ended.
            if read_log(log_path).last_state != exc.state:
                append_record(log_path, exc.state)
            joblog = read_log(log_path)
            earlier.append(joblog)
            retries = read_retry_settings(Path.cwd(), config.retries)[0]
            if len(earlier) > retries:
                raise _out_of_retries(earlier, retries) from None
            number = archive_attempt(log_path)
            print(
                f"Job {joblog.job_id}{on_cluster(joblog)} ended with {exc.state}: submitting "
                f"it again, attempt {len(earlier) + 1} of at most {retries + 1} (its files are "
                f"kept as {LOG_NAME}.{number}, slurmjob.out.{number}, slurmjob.err.{number})"
            )
            # The new attempt continues the series of the same inputs.
            start_log(log_path, joblog.digest)
            joblog = JobLog(log_path, joblog.digest)
            replaced = None


def _attempt(
    joblog: JobLog,
    script: JobScript,
    *,
    rc: str | None,
    config: Config,
    env: dict[str, str],
    replaced: int | None,
    retrying: bool,
) -> int:
    """Submit the job of the log (or reattach to it), wait for its end and return its exit code.

    Raises a RetryError when SLURM ended it with a state after which it is submitted again.
    """
    # A fresh submission gives SLURM one cache period before its state is asked.
    first_query = config.cache_timeout
    if joblog.job_id is None:
        what = submit_once(joblog, script, rc, config, env, replaced=replaced)
        joblog = read_log(joblog.path)
        print(f"{what} job {joblog.job_id}{on_cluster(joblog)}")
    elif not joblog.done:
        verified_record(joblog, config)
        print(f"Waiting for job {joblog.job_id}{on_cluster(joblog)}, submitted earlier")
        first_query = 0.0
    state = joblog.last_state if joblog.done else wait_for_end(joblog, config, first_query)
    # Read only now: a change of the settings while the job ran counts.
    retries, retried = read_retry_settings(Path.cwd(), config.retries)
    return finish(joblog, state, config, retried if retries > 0 or retrying else frozenset())


def _attempts(logs: list[JobLog]) -> str:
    return ", ".join(
        f"job {log.job_id}{on_cluster(log)} ({log.last_state or 'no end recorded'})" for log in logs
    )


def _out_of_retries(logs: list[JobLog], retries: int) -> JobError:
    return JobError(
        f"SLURM ended all {len(logs)} attempts of this job with a failure that is retried: "
        f"{_attempts(logs)}. No retry is left (retries={retries}, set by sbatch(retries=...) "
        f"in plan.py or STEPUP_QUEUE_RETRIES). See slurmjob.err (and slurmjob.err.N of the "
        f"earlier attempts) in {Path.cwd()}. To try again, "
        "raise retries and run the workflow again."
    )


def _inputs_changed(
    joblog: JobLog, digest: str, config: Config, script: JobScript
) -> tuple[JobLog | None, int | None]:
    """Decide what to do with the job of a log whose inputs changed.

    Returns
    -------
    joblog, cancelled
        The log to keep waiting for (`None`: submit afresh), and the old job that was
        cancelled, if any.
    """
    job_id, cluster = joblog.job_id, joblog.cluster
    if joblog.interrupted:
        # A submission with the old inputs that was interrupted or refused: did it reach SLURM?
        certain, job_id = find_by_token(
            joblog.token, script.clusters, joblog.submitting_time, config.command_timeout
        )
        if not certain:
            # Submitting now could leave the old job running unnoticed.
            raise JobError(
                f"The inputs changed since a job was submitted from {joblog.path}, but SLURM "
                "could not be asked whether that submission reached it, so the old job cannot "
                "be cancelled. Run the workflow again when SLURM answers."
            )
        cluster = script.cluster
    if job_id is None:
        # Nothing to cancel or wait for: a fresh log, with no question to the user.
        print("Inputs changed; no job was submitted with the old inputs: submitting afresh")
        return None, None
    if config.onchange is OnChange.IGNORE:
        print(f"Inputs changed since job {job_id} was submitted; still waiting for it (ignore)")
        return joblog, None
    if config.onchange is OnChange.RAISE:
        folder = shlex.quote(os.getcwd())
        raise JobError(
            f"The inputs of this step changed since job {job_id} was submitted from "
            f"{joblog.path}.\n"
            f"  digest in the log:  {joblog.digest}\n"
            f"  digest of the step: {digest}\n"
            "To run the job again with the new inputs, either cancel the old job if needed "
            f"(stepup canceljobs {folder}) and remove its log "
            f"(stepup removejobs --all --commit {folder}), "
            "or set STEPUP_QUEUE_ONCHANGE=resubmit to cancel and resubmit automatically "
            "(STEPUP_QUEUE_ONCHANGE=ignore keeps waiting for the old job). "
            "The older STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS=yes means the same as resubmit; "
            "when both are set, STEPUP_QUEUE_ONCHANGE wins."
        )
    if joblog.done:
        return None, None
    # Only a job that SLURM lists as the user's, live in this folder, is the old job.
    listing = query_jobs([job_id], cluster, config.command_timeout)
    if listing is None:
        raise JobError(
            f"The inputs changed since job {job_id} was submitted from {joblog.path}, but "
            "SLURM could not be asked whether that job still runs, so it cannot be cancelled. "
            "Run the workflow again when SLURM answers."
        )
    workdir = listing.workdirs.get(job_id, "")
    why = foreign_workdir(job_id, workdir, os.getcwd()) if job_id in listing.active() else None
    if job_id not in listing.active() or why is not None:
        note = "it has ended" if why is None else f"{why}, so it is not cancelled"
        print(f"Inputs changed since job {job_id} was submitted: {note}. Submitting again")
        return None, None
    for result in cancel([job_id], cluster, config.command_timeout):
        if result.returncode != 0:
            raise JobError(f"Could not cancel the old job {job_id}: {result.describe()}")
    print(f"Inputs changed: cancelled the old job {job_id}, submitting again")
    return None, job_id

"""The life of one job: submit it once, reattach after a restart, wait, and report its end.

All decisions about a job live here; the job log, the wrapper and SLURM itself are reached
through their own modules.
"""

import os
import random
import time
from contextlib import nullcontext
from datetime import datetime, timedelta

from path import Path

from .config import Config, OnChange
from .joblog import (
    FINAL_STATES,
    LOG_NAME,
    JobLog,
    append_record,
    parse_submitted,
    read_log,
    record_submitted,
    start_log,
)
from .limits import (
    PARTITION_REASONS,
    Refusal,
    admitting_partitions,
    hopeless_fix,
    refusal_fix,
    submit_refusal,
)
from .scheduler import (
    CommandResult,
    Snapshot,
    StateCache,
    cancel,
    environment_after_rc,
    find_by_token,
    foreign_workdir,
    is_transient,
    query_jobs,
    requeue_exit_codes,
    sacct_records,
    show_records,
    stranger,
    submit,
)
from .wrapper import RET_NAME, JobScript, read_job_script, read_ret, render_wrapper

__all__ = ("JobError", "SubmitInterrupted", "run_job")

# States in which the job script was running and ended by itself, so slurmjob.ret should hold
# its exit code (perhaps after a delay of the shared file system).
_SCRIPT_ENDED = frozenset({"COMPLETED", "FAILED"})


class JobError(RuntimeError):
    """The job cannot be submitted or did not end well. The message says why and what to do."""


class SubmitInterrupted(KeyboardInterrupt):
    """Interrupted before the job's id was known.

    Attributes
    ----------
    maybe_submitted
        False when no submission can have reached SLURM (e.g. while waiting for room under a
        submit limit), True when one may have (sbatch was cut off, or did not answer).
    """

    def __init__(self, maybe_submitted: bool):
        super().__init__()
        self.maybe_submitted = maybe_submitted


def run_job(ext: str, rc: str | None, digest: str, config: Config, env: dict[str, str]) -> int:
    """Submit the job in the current folder once, wait for it, and return its exit code.

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
        script = _after_rc(script, rc, config, env)
    StateCache(config, None).check_writable()
    # A job of the old inputs that was cancelled just now, which SLURM may still list.
    replaced = None
    if joblog is not None and joblog.digest != digest:
        joblog, replaced = _inputs_changed(joblog, digest, config, script)
    if joblog is None:
        start_log(log_path, digest)
        joblog = JobLog(log_path, digest)
    # A fresh submission gives SLURM one cache period before its state is asked.
    first_query = config.cache_timeout
    if joblog.job_id is None:
        what = _submit_once(joblog, script, rc, config, env, replaced=replaced)
        joblog = read_log(log_path)
        print(f"{what} job {joblog.job_id}{_on_cluster(joblog)}")
    elif not joblog.done:
        _account_record(joblog, config)
        print(f"Waiting for job {joblog.job_id}{_on_cluster(joblog)}, submitted earlier")
        first_query = 0.0
    state = joblog.last_state if joblog.done else _wait(joblog, config, first_query)
    return _finish(joblog, state, config)


def _account_record(joblog: JobLog, config: Config) -> dict[str, str] | None:
    """SLURM's accounting record of the logged job, `None` when sacct does not know it.

    Raises a JobError for a job that only shares its id with the logged job: such a job is
    never waited for (or cancelled).
    """
    records = sacct_records([joblog.job_id], joblog.cluster, config.command_timeout)
    record = None if records is None else records.get(joblog.job_id)
    if record is None:
        return None
    why = stranger(joblog.job_id, record, os.getcwd(), joblog.submitted_time)
    if why is not None:
        raise _reused(joblog, why)
    return record


def _reused(joblog: JobLog, why: str) -> JobError:
    return JobError(
        f"{joblog.path} records job {joblog.job_id}, but {why}. That job is not waited for "
        "and not cancelled. The logged job ended long ago: to submit it again, remove "
        f"{LOG_NAME} in this folder by hand (the job tools do not touch such a log)."
    )


def _account_state(joblog: JobLog, config: Config) -> str | None:
    """The logged job's state in SLURM's accounting, `None` when sacct does not know it."""
    record = _account_record(joblog, config)
    return None if record is None else record["State"]


def _current_state(joblog: JobLog, snapshot: Snapshot, config: Config) -> str | None:
    """The logged job's state in a status answer, else in the accounting database.

    A job leaves slurmctld's memory MinJobAge seconds after it ended (at once when cancelled
    while requeued); the accounting database still knows it. Raises a JobError when the job
    that SLURM lists under the logged id runs in another folder.
    """
    current = snapshot.states.get(joblog.job_id)
    if current is None:
        return _account_state(joblog, config)
    why = foreign_workdir(
        joblog.job_id, snapshot.listing.workdirs.get(joblog.job_id, ""), os.getcwd()
    )
    if why is not None:
        raise _reused(joblog, why)
    return current


def _after_rc(script: JobScript, rc: str, config: Config, env: dict[str, str]) -> JobScript:
    """The job script with the clusters that sbatch submits it to after rc.

    An rc such as `module swap cluster/NAME` sets SLURM_CLUSTERS for sbatch only, so rc runs
    once more to see the environment that sbatch got.
    """
    sbatch_env = environment_after_rc(rc, config.command_timeout, env) or env
    return read_job_script(script.path, sbatch_env)


def _on_cluster(joblog: JobLog) -> str:
    return "" if joblog.cluster is None else f" on cluster {joblog.cluster}"


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
            joblog.token, script.clusters, joblog.submitting_time, config
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
        raise JobError(
            f"The inputs of this step changed since job {job_id} was submitted from "
            f"{joblog.path}.\n"
            f"  digest in the log:  {joblog.digest}\n"
            f"  digest of the step: {digest}\n"
            "To run the job again with the new inputs, either cancel the old job if needed "
            "(stepup canceljobs) and remove its log (stepup removejobs --all --commit), "
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


def _submit_once(
    joblog: JobLog,
    script: JobScript,
    rc: str | None,
    config: Config,
    env: dict[str, str],
    *,
    replaced: int | None,
) -> str:
    """Submit the job, or find the job that an interrupted earlier attempt submitted.

    At a submit limit, wait for room in the queue and submit then. `replaced` is a job of
    this folder that was cancelled just now, which SLURM may still list.

    Returns
    -------
    what
        What happened, for the user: `Submitted`, or that the job was found.
    """
    wrapper = render_wrapper(script)
    cache = StateCache(config, script.cluster)
    token, since = joblog.token, joblog.submitting_time
    # An interrupted attempt (ours, or a bare Submitting record of the original 2.x) may have
    # reached SLURM even though its job id was never logged: look before submitting.
    lookup = since is not None
    failure = None
    retries = 0
    # The number of the user's queued jobs at which sbatch refused for a submit limit.
    limit = None
    # Refusals that are waited out with a back-off (see _pause_after_refusal).
    refusals = 0
    # Whether the clusters of the script are those that sbatch submits to after rc.
    rc_seen = rc is None or lookup
    try:
        while retries <= config.submit_retries:
            if lookup:
                certain, job_id = find_by_token(token, script.clusters, since, config)
                if job_id is not None:
                    suffix = "" if script.cluster is None else f";{script.cluster}"
                    record_submitted(joblog.path, f"{job_id}{suffix}")
                    return "Found the interrupted submission's"
                if not certain:
                    retries = _back_off(retries, config)
                    continue
            if limit is not None:
                _wait_for_room(cache, limit, config)
            with cache.submit_turn() if limit is not None else nullcontext():
                snapshot = cache.snapshot()
                if limit is not None and (
                    not snapshot.ok or len(snapshot.listing.active()) >= limit
                ):
                    # Another step took the room.
                    continue
                # Without an answer, trust the log: SLURM's answer only adds a safety check.
                if snapshot.ok:
                    _check_no_live_job(snapshot, script.cluster, {token, replaced}, config)
                if token is None:
                    token = f"stepup-queue-{os.urandom(8).hex()}"
                    since = append_record(joblog.path, f"Submitting {token}")
                lookup = True
                # An exit code left by an earlier job must never be taken for this submission's.
                Path(RET_NAME).write_text("")
                refused = datetime.now()
                result = submit(
                    wrapper, rc=rc, token=token, timeout=config.command_timeout, env=env
                )
                if result.returncode == 0:
                    submitted = _submitted_line(result)
                    record_submitted(joblog.path, submitted)
                    if limit is not None:
                        cache.record_submission(parse_submitted(submitted)[0], token)
                    return "Submitted"
            refusal = submit_refusal(result.stderr + result.stdout)
            if refusal is not None:
                # A clear refusal: no job carries the token.
                lookup = False
                if refusal[0] is Refusal.OWN_LIMIT:
                    limit = _limit_at_refusal(cache, refused, result, config)
                else:
                    limit = None
                    refusals += 1
                    where = Path.cwd() / script.path
                    _pause_after_refusal(refusal, refusals, result, where, config)
                continue
            failure = result
            if not is_transient(result):
                break
            if not rc_seen:
                # sbatch may have submitted (e.g. it timed out) where rc sent it: look there.
                script = _after_rc(script, rc, config, env)
                cache = StateCache(config, script.cluster)
                rc_seen = True
            if config.debug:
                print(f"Transient failure, retrying: {result.describe()}")
            retries = _back_off(retries, config)
    except KeyboardInterrupt:
        raise SubmitInterrupted(lookup) from None
    detail = failure.describe() if failure is not None else "SLURM could not be reached"
    raise JobError(f"Could not submit {Path.cwd() / script.path}: {detail}")


def _submitted_line(result: CommandResult) -> str:
    """The job id that sbatch printed: the last line of its output that is `ID` or `ID;CLUSTER`.

    A site's sbatch wrapper (or rc) may print other lines before or after it.
    """
    for line in reversed(result.stdout.splitlines()):
        try:
            parse_submitted(line)
        except ValueError:
            continue
        return line.strip()
    raise JobError(
        f"sbatch succeeded but printed {result.stdout!r} instead of a job id. "
        "Does the rc command print to standard output? Send its output elsewhere."
    )


def _pause_after_refusal(
    refusal: tuple[Refusal, str], count: int, result: CommandResult, where: Path, config: Config
):
    """Wait before sbatch is tried again after a policy refusal, or raise a JobError.

    Under a limit on the queued jobs of a group, account or QOS, colleagues' jobs count too:
    the user's own queue says nothing about when room appears, so sbatch is tried again after
    a pause that doubles up to `submit_backoff * 2**submit_retries`. SLURM's generic message
    without a reason code may or may not be such a limit: it is tried `submit_retries` times.
    Any other refusal fails at once: the job breaks the policy by itself.
    """
    kind, code = refusal
    if kind is Refusal.POLICY:
        raise JobError(
            f"SLURM refused {where} for its policy {code}, which the job breaks by itself, so "
            f"waiting would not help: {result.describe()}. Likely fix: {refusal_fix(code)}."
        )
    if kind is Refusal.UNNAMED and count > config.submit_retries:
        raise JobError(
            f"SLURM refused {where} {count} times for an accounting/QOS policy without naming "
            f"it: {result.describe()}. Either a limit on queued jobs stayed reached, or the job "
            f"breaks a limit by itself. Likely fix: {_UNNAMED_FIX} "
            "(STEPUP_SBATCH_SUBMIT_RETRIES sets how often such a refusal is tried again)."
        )
    if count == 1:
        if kind is Refusal.SHARED_LIMIT:
            print(
                f"SLURM refused the job: {code}, a limit on the queued jobs of your group, "
                "account or QOS, is reached (your colleagues' jobs count too). Trying again "
                "after a pause that grows with each refusal."
            )
        else:
            print(
                "SLURM refused the job for an accounting/QOS policy without naming it: "
                f"trying again up to {config.submit_retries} times (STEPUP_SBATCH_SUBMIT_RETRIES)."
            )
    time.sleep(config.submit_backoff * 2 ** min(count - 1, config.submit_retries))


# After SLURM's generic policy message alone.
_UNNAMED_FIX = (
    "compare the job's request (--time, size) with the limits of your association and QOS "
    "(`sacctmgr show assoc user=$USER`, `sacctmgr show qos`), and see how many jobs are "
    "queued (squeue)"
)


def _back_off(retries: int, config: Config) -> int:
    """Sleep before the next try of a failed submission; return the number of retries."""
    if retries < config.submit_retries:
        time.sleep(config.submit_backoff * 2**retries)
    return retries + 1


def _check_no_live_job(
    snapshot: Snapshot, cluster: str | None, known: set[str | int | None], config: Config
):
    """Raise a JobError when a job of the user still runs from this folder (its log is gone).

    `known` holds the token of this submission and the id of a job cancelled just now. The
    cached answer may be older than a job that ended: a job it shows is confirmed with a fresh
    query of that job alone.
    """
    here = os.path.realpath(os.getcwd())
    listed = [
        job_id
        for job_id in snapshot.listing.active()
        if job_id not in known
        and snapshot.comments.get(job_id, "") not in known
        and os.path.realpath(snapshot.listing.workdirs.get(job_id, "/")) == here
    ]
    if not listed:
        return
    listing = query_jobs(listed, cluster, config.command_timeout)
    live = listed if listing is None else listing.active()
    if live:
        ids = ", ".join(map(str, live))
        raise JobError(
            f"SLURM still has job(s) {ids} of yours, queued or running in {here}, but "
            f"{LOG_NAME} there does not record them (was the log removed?). A second job in the "
            "same folder would overwrite their files. Wait until they end (squeue --me), or "
            f"cancel them (scancel {ids.replace(', ', ' ')}), then run the workflow again."
        )


def _limit_at_refusal(
    cache: StateCache, refused: datetime, result: CommandResult, config: Config
) -> int:
    """The number of the user's queued jobs when sbatch refused for a submit limit.

    Raises a JobError when the user has no job queued: then waiting would not help.
    """
    while True:
        snapshot = cache.snapshot()
        if snapshot.ok and snapshot.time > refused:
            break
        _nap(config)
    queued = len(snapshot.listing.active())
    if queued == 0:
        raise JobError(
            f"sbatch refused {Path.cwd()} for a submit limit, while you have no job queued: "
            f"{result.describe()}. Your limit on queued jobs (of your user in your association "
            "or QOS) is probably 0: ask your cluster's administrators, or submit under another "
            "account or QOS (#SBATCH -A / --qos in the job script)."
        )
    print(
        f"SLURM refused the job: a submit limit is reached with {queued} of your jobs queued. "
        "Waiting until one of them leaves the queue."
    )
    return queued


def _wait_for_room(cache: StateCache, limit: int, config: Config):
    """Wait until fewer than `limit` of the user's jobs are queued."""
    while True:
        # Random naps: steps that wait for room look at different moments.
        _nap(config)
        snapshot = cache.snapshot()
        if snapshot.ok and len(snapshot.listing.active()) < limit:
            return


def _nap(config: Config, since: datetime | None = None):
    age = None if since is None else (datetime.now() - since).total_seconds()
    time.sleep(random.uniform(*config.sleep_range(age)))


def _wait(joblog: JobLog, config: Config, first_query: float) -> str | None:
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
    trusted_after = submitted + timedelta(seconds=config.time_margin)
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
            next_query = (
                time.monotonic() + config.cache_timeout + random.uniform(0, config.time_margin)
            )
            snapshot = cache.snapshot()
            if config.debug:
                print(
                    f"{snapshot.time} {cache.command()} rc={snapshot.returncode} {snapshot.error}"
                )
            if snapshot.ok and snapshot.time >= trusted_after:
                current = _current_state(joblog, snapshot, config)
                if current is not None and current != state:
                    append_record(joblog.path, current)
                    state = current
                if current is None or current in FINAL_STATES:
                    return current
                listed = joblog.job_id in snapshot.states
                runaway_since = None if listed else runaway_since or snapshot.time
                _check_runaway(joblog, current, runaway_since, snapshot.time, config)
                hopeless_since = _check_hopeless(joblog, snapshot, hopeless_since, config)
        _nap(config, submitted)


def _check_runaway(
    joblog: JobLog, state: str, since: datetime | None, now: datetime, config: Config
):
    """Raise a JobError when squeue has not listed the job for too long while the accounting
    says it is pending or running: SLURM lost the job's end (a runaway job)."""
    if since is None or (now - since).total_seconds() < config.runaway_timeout:
        return
    raise JobError(
        f"Job {joblog.job_id}{_on_cluster(joblog)} is {state} in SLURM's accounting (sacct), "
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
                f"Job {joblog.job_id}{_on_cluster(joblog)} pends with SLURM's reason {reason}, "
                f"which does not resolve by itself, but it could not be cancelled: "
                f"{result.describe()}"
            )
    append_record(joblog.path, f"Hopeless {reason}")
    append_record(joblog.path, "CANCELLED")
    raise JobError(
        f"Job {joblog.job_id}{_on_cluster(joblog)} was pending with SLURM's reason {reason}, "
        f"which does not resolve by itself, for more than {config.hopeless_grace:g} s "
        "(STEPUP_SBATCH_HOPELESS_GRACE): StepUp Queue cancelled it. Likely fix: "
        f"{fix}. Then clear the job folder (stepup removejobs --commit) and run the "
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


def _finish(joblog: JobLog, state: str | None, config: Config) -> int:
    """Return the exit code of the job's last run, or raise a JobError saying how it ended."""
    requeue_codes = None
    # SLURM's end state, once asked.
    end = None
    while True:
        code = read_ret()
        if code is None and (state is None or state in _SCRIPT_ENDED):
            # The script ended, but its exit code may not have reached this node yet.
            deadline = time.monotonic() + config.ret_timeout
            while code is None and time.monotonic() < deadline:
                _nap(config)
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
        state = _wait(joblog, config, 0.0)
    if isinstance(code, int):
        if code != 0:
            if end is None and code > 128:
                end = _signal_end(joblog, config)
            how = "" if end is None or end in _SCRIPT_ENDED else f" (SLURM: {end})"
            print(f"Job {joblog.job_id} ended with exit code {code}{how}. See slurmjob.err.")
        return code
    last = state or "no longer listed by SLURM"
    if isinstance(code, str):
        raise JobError(
            f"Job {joblog.job_id} (last state: {last}) left {code!r} in {RET_NAME} instead of "
            "an exit code. See slurmjob.err."
        )
    raise JobError(
        f"Job {joblog.job_id}{_on_cluster(joblog)} ended without an exit code in {RET_NAME}. "
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
    trusted_after = datetime.fromtimestamp(written / 1e9) + timedelta(seconds=config.time_margin)
    cache = StateCache(config, joblog.cluster)
    while True:
        _nap(config)
        if read_ret() is None or _ret_stamp() != written:
            return None
        snapshot = cache.snapshot()
        if snapshot.ok and snapshot.time >= trusted_after:
            current = _current_state(joblog, snapshot, config)
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
        state = _account_state(joblog, config)
        if state in FINAL_STATES or time.monotonic() >= deadline:
            return state
        _nap(config)

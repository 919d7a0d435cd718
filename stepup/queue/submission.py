"""Submitting a job exactly once: find an interrupted submission's job first, wait for room at a
submit limit, tell refusals apart, and never leave a second job in a folder.
"""

import os
import time
from contextlib import nullcontext
from datetime import datetime

from path import Path

from .config import Config
from .errors import JobError, SubmitInterrupted
from .joblog import (
    LOG_NAME,
    JobLog,
    append_record,
    parse_submitted,
    record_submitted,
)
from .limits import (
    Refusal,
    refusal_fix,
    submit_refusal,
)
from .slurm.cache import Snapshot, StateCache
from .slurm.commands import CommandResult, is_transient
from .slurm.control import environment_after_rc, submit
from .slurm.identity import find_by_token
from .slurm.locks import submit_turn
from .slurm.queries import query_jobs
from .waiting import nap
from .wrapper import RET_NAME, JobScript, read_job_script, render_wrapper

__all__ = ("after_rc", "submit_once")


def submit_once(
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
                certain, job_id = find_by_token(
                    token, script.clusters, since, config.command_timeout
                )
                if job_id is not None:
                    suffix = "" if script.cluster is None else f";{script.cluster}"
                    record_submitted(joblog.path, f"{job_id}{suffix}")
                    return "Found the interrupted submission's"
                if not certain:
                    retries = _back_off(retries, config)
                    continue
            if limit is not None:
                _wait_for_room(cache, limit, config)
            with _submit_turn(cache, config) if limit is not None else nullcontext():
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
                script = after_rc(script, rc, config, env)
                cache = StateCache(config, script.cluster)
                rc_seen = True
            if config.debug:
                print(f"Transient failure, retrying: {result.describe()}")
            retries = _back_off(retries, config)
    except KeyboardInterrupt:
        raise SubmitInterrupted(lookup) from None
    detail = failure.describe() if failure is not None else "SLURM could not be reached"
    raise JobError(f"Could not submit {Path.cwd() / script.path}: {detail}")


def after_rc(script: JobScript, rc: str, config: Config, env: dict[str, str]) -> JobScript:
    """The job script with the clusters that sbatch submits it to after rc.

    An rc such as `module swap cluster/NAME` sets SLURM_CLUSTERS for sbatch only, so rc runs
    once more to see the environment that sbatch got.
    """
    sbatch_env = environment_after_rc(rc, config.command_timeout, env) or env
    return read_job_script(script.path, sbatch_env)


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
        nap(config)
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


def _submit_turn(cache: StateCache, config: Config):
    """The turn at a submit limit, shared by the steps that submit to the cache's cluster."""
    return submit_turn(cache.path if cache.locate() is None else None, config.lock_timeout)


def _wait_for_room(cache: StateCache, limit: int, config: Config):
    """Wait until fewer than `limit` of the user's jobs are queued."""
    while True:
        # Random naps: steps that wait for room look at different moments.
        nap(config)
        snapshot = cache.snapshot()
        if snapshot.ok and len(snapshot.listing.active()) < limit:
            return

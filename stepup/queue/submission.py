"""Submitting a job exactly once: find an interrupted submission's job first, wait for room at a
submit limit, tell refusals apart, and never leave a second job in a folder.
"""

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
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
from .wrapper import JobScript, clear_ret, read_job_script, render_wrapper

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

    Raises
    ------
    JobError
        When the job cannot be submitted, with SLURM's reason.
    SubmitInterrupted
        On Ctrl-C, saying whether a job may have reached SLURM.
    """
    submission = _Submission(joblog, script, rc, config, env, replaced)
    try:
        return submission.run()
    except KeyboardInterrupt:
        raise SubmitInterrupted(submission.lookup) from None


@dataclass
class _Submission:
    """The state of one job's submission, through retries, refusals and waits for room."""

    joblog: JobLog
    script: JobScript
    rc: str | None
    config: Config
    env: dict[str, str]
    # A job of this folder that was cancelled just now, which SLURM may still list.
    replaced: int | None
    cache: StateCache = field(init=False)
    token: str | None = field(init=False)
    since: datetime | None = field(init=False)
    # Whether a job with the token may exist: an interrupted attempt (ours, or a bare
    # Submitting record of the original 2.x) may have reached SLURM, although its job id was
    # never logged. Such a job is looked for before anything is submitted.
    lookup: bool = field(init=False)
    # Whether the clusters of the script are those that sbatch submits to after rc.
    rc_seen: bool = field(init=False)
    # The number of the user's queued jobs at which sbatch refused for a submit limit.
    limit: int | None = None
    # Refusals that are waited out with a back-off (see pause_after_refusal).
    refusals: int = 0
    retries: int = 0
    failure: CommandResult | None = None
    # When sbatch last ran: the queue of a refusal at a submit limit is counted after it.
    sbatch_time: datetime | None = None

    def __post_init__(self):
        self.cache = StateCache(self.config, self.script.cluster)
        self.token, self.since = self.joblog.token, self.joblog.submitting_time
        self.lookup = self.since is not None
        self.rc_seen = self.rc is None or self.lookup

    def run(self) -> str:
        """Try until the job is submitted or found; see `submit_once`."""
        while self.retries <= self.config.submit_retries:
            if self.lookup:
                found = self._find_interrupted()
                if found:
                    return "Found the interrupted submission's"
                if found is None:
                    self.retries = back_off(self.retries, self.config)
                    continue
            if self.limit is not None:
                wait_for_room(self.cache, self.limit, self.config)
            result = self._submit_in_turn()
            if result is None:
                # Another step took the room.
                continue
            if result.returncode == 0:
                return "Submitted"
            if self._refused(result):
                continue
            self.failure = result
            if not is_transient(result):
                break
            self._before_retry(result)
        detail = self.failure.describe() if self.failure else "SLURM could not be reached"
        raise JobError(f"Could not submit {Path.cwd() / self.script.path}: {detail}")

    def _find_interrupted(self) -> bool | None:
        """Log the job of an interrupted attempt when SLURM has it.

        Returns
        -------
        found
            True when found and logged, False when SLURM has no such job, `None` when SLURM
            could not be asked.
        """
        certain, job_id = find_by_token(
            self.token, self.script.clusters, self.since, self.config.command_timeout
        )
        if job_id is not None:
            suffix = "" if self.script.cluster is None else f";{self.script.cluster}"
            record_submitted(self.joblog.path, f"{job_id}{suffix}")
            return True
        return False if certain else None

    def _submit_in_turn(self) -> CommandResult | None:
        """Run sbatch once, in turn with other steps at a submit limit, and log the job.

        Returns
        -------
        result
            What sbatch did; `None` when another step took the room in the queue first.
        """
        config = self.config
        with _submit_turn(self.cache, config) if self.limit is not None else nullcontext():
            snapshot = self.cache.snapshot()
            if self.limit is not None and (
                not snapshot.ok or snapshot.listing.queued() >= self.limit
            ):
                return None
            # Without an answer, trust the log: SLURM's answer only adds a safety check.
            if snapshot.ok:
                known = {self.token, self.replaced}
                _check_no_live_job(snapshot, self.script.cluster, known, config)
            if self.token is None:
                self.token = f"stepup-queue-{os.urandom(8).hex()}"
                self.since = append_record(self.joblog.path, f"Submitting {self.token}")
            self.lookup = True
            # An exit code left by an earlier job must never be taken for this submission's:
            # after the log was rewritten, and under the wrapper's lock, see wrapper.sh.
            clear_ret()
            self.sbatch_time = datetime.now()
            result = submit(
                render_wrapper(self.script, self.token),
                rc=self.rc,
                token=self.token,
                timeout=config.command_timeout,
                env=self.env,
            )
            if result.returncode == 0:
                submitted = submitted_line(result)
                record_submitted(self.joblog.path, submitted)
                if self.limit is not None:
                    self.cache.record_submission(parse_submitted(submitted)[0], self.token)
            return result

    def _refused(self, result: CommandResult) -> bool:
        """After a clear refusal of SLURM's policy, wait as the refusal asks (or raise).

        Returns
        -------
        refused
            False when sbatch failed for another reason.
        """
        refusal = submit_refusal(result.stderr + result.stdout)
        if refusal is None:
            return False
        # A clear refusal: no job carries the token.
        self.lookup = False
        if refusal[0] is Refusal.OWN_LIMIT:
            self.limit = limit_at_refusal(self.cache, self.sbatch_time, result, self.config)
        else:
            self.limit = None
            self.refusals += 1
            where = Path.cwd() / self.script.path
            pause_after_refusal(refusal, self.refusals, result, where, self.config)
        return True

    def _before_retry(self, result: CommandResult):
        """Back off after a transient failure of sbatch."""
        if not self.rc_seen:
            # sbatch may have submitted (e.g. it timed out) where rc sent it: look there.
            self.script = after_rc(self.script, self.rc, self.config, self.env)
            self.cache = StateCache(self.config, self.script.cluster)
            self.rc_seen = True
        if self.config.debug:
            print(f"Transient failure, retrying: {result.describe()}")
        self.retries = back_off(self.retries, self.config)


def after_rc(script: JobScript, rc: str, config: Config, env: dict[str, str]) -> JobScript:
    """The job script with the clusters that sbatch submits it to after rc.

    An rc such as `module swap cluster/NAME` sets SLURM_CLUSTERS for sbatch only, so rc runs
    once more to see the environment that sbatch got.
    """
    sbatch_env = environment_after_rc(rc, config.command_timeout, env) or env
    # Its late #SBATCH lines were warned about when it was first read.
    return read_job_script(script.path, sbatch_env, warn=False)


def submitted_line(result: CommandResult) -> str:
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


def pause_after_refusal(
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


def back_off(retries: int, config: Config) -> int:
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


def limit_at_refusal(
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
    queued = snapshot.listing.queued()
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


def wait_for_room(cache: StateCache, limit: int, config: Config):
    """Wait until fewer than `limit` of the user's jobs are queued."""
    while True:
        # Random naps: steps that wait for room look at different moments.
        nap(config)
        snapshot = cache.snapshot()
        if snapshot.ok and snapshot.listing.queued() < limit:
            return

"""The life of an `sbatch_array()` step: many job folders, submitted as SLURM job arrays.

Every folder stays a job folder of its own (`slurmjob.log`, `.out`, `.err`, `.ret`); its log
records its array task as `Submitted ID_N`. The folders that need a job are grouped by their
`#SBATCH` lines (and cluster) and submitted in chunks, each one array of at most MaxArraySize
tasks (indices 0..k-1) and at most the room under the user's submit limit. Before sbatch, the
`Submitting TOKEN` record of the chunk is flushed to every folder of the chunk, so that a
restart finds the array by its token instead of submitting again. SLURM writes each task's
output into its folder through symlinks, `.stepup-queue/arrays/NAME/TOKEN/N -> FOLDER`,
which also tells a restart which folder had which task.

Waiting costs one status query per cluster per cache period (the shared cache), and sacct
only for tasks that squeue no longer lists; a folder's `slurmjob.ret` is read once SLURM says
that its task ended, or, for the last `TAIL_TASKS` tasks, at every nap.
"""

import dataclasses
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from path import Path

from .arraymanifest import Manifest, folder_digest
from .config import Config, OnChange
from .errors import JobError
from .joblog import LOG_NAME, JobLog, append_record, read_log, record_submitted, start_log
from .limits import Refusal, admitting_partitions, submit_refusal
from .slurm.cache import Snapshot, StateCache
from .slurm.commands import is_transient
from .slurm.control import cancel, environment_after_rc, submit
from .slurm.identity import find_by_token
from .slurm.queries import array_states, max_array_size, show_records
from .states import FINAL_STATES, PARTITION_REASONS, SCRIPT_ENDED_STATES, hopeless_fix
from .submission import (
    _back_off,
    _limit_at_refusal,
    _pause_after_refusal,
    _submitted_line,
    _wait_for_room,
)
from .waiting import nap
from .wrapper import JobScript, clear_ret, read_job_script, read_ret, render_array_wrapper

__all__ = ("ARRAYS_DIR", "run_array")

# Below the folder of plan.py: per step and submission (`ARRAYS_DIR/NAME/TOKEN/N`), the
# symlinks through which SLURM writes the output of each task into its job folder. Hidden, so
# the job tools do not search it. Removed once every task of the step ended.
ARRAYS_DIR = Path(".stepup-queue/arrays")
# MaxArraySize when scontrol does not tell: SLURM's default.
_DEFAULT_MAX_ARRAY_SIZE = 1001


@dataclass
class _Folder:
    """One job folder of the step."""

    path: Path
    digest: str
    script: JobScript
    joblog: JobLog | None = None
    # The end: the exit code, or SLURM's state when the script left none.
    code: int | None = None
    state: str | None = None
    # Until when a missing exit code of a script that ended is waited for.
    ret_deadline: float | None = None
    # Since when neither squeue nor sacct knows the task.
    unknown_since: datetime | None = None
    # The pending reason for which StepUp Queue cancelled the task, and its likely fix.
    hopeless: tuple[str, str] | None = None

    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAME

    @property
    def key(self) -> tuple[int, int]:
        return self.joblog.job_id, self.joblog.task


def run_array(
    manifest: Manifest, name: str, config: Config, env: dict[str, str], rerun: str
) -> int:
    """Submit the job folders of the manifest once as job arrays, wait, return 0 when all
    succeeded.

    Parameters
    ----------
    manifest
        The manifest of the step (the current folder is that of plan.py).
    name
        The name of the step (its manifest file without `.json`): its symlinks are kept in
        `ARRAYS_DIR / name`.
    config
        The settings.
    env
        The environment of sbatch (and rc), which the jobs inherit.
    rerun
        The command that runs the workflow again, for messages.

    Raises
    ------
    JobError
        When a folder failed (naming each failed folder), or cannot be submitted.
    """
    if manifest.onchange is not None:
        config = _with_onchange(config, manifest.onchange)
    # sbatch runs after rc, which may change its cluster (`module swap cluster/NAME`).
    sbatch_env = env
    if manifest.rc is not None:
        sbatch_env = environment_after_rc(manifest.rc, config.command_timeout, env) or env
    folders = [_read_folder(Path.cwd() / f, manifest, sbatch_env) for f in manifest.folders]
    StateCache(config, None).check_writable()
    links = Path.cwd() / ARRAYS_DIR / name
    _resolve_interrupted(folders, links, config)
    _check_inputs(folders, config)
    todo = [f for f in folders if f.joblog is None or f.joblog.job_id is None]
    waiting = [f for f in folders if f.joblog is not None and f.joblog.job_id is not None]
    for folder in waiting:
        if folder.joblog.task is None and not folder.joblog.done:
            raise JobError(
                f"{folder.log_path} records job {folder.joblog.job_id}, a single job, not an "
                "array task (was the folder an sbatch() step before?). Wait until it ends "
                "(squeue --me) or cancel it, then remove that log "
                f"(stepup removejobs --all --commit {folder.path}) and run the workflow again."
            )
    running = sum(1 for folder in waiting if not folder.joblog.done)
    if running:
        print(f"Waiting for {running} array task(s) submitted earlier")
    submitted = _submit_all(todo, manifest, links, config, env)
    _wait(waiting + submitted, config)
    # Every task ended: SLURM writes no more output through the symlinks.
    links.rmtree_p()
    return _report(folders, rerun)


def _with_onchange(config: Config, onchange: str) -> Config:
    return dataclasses.replace(
        config, onchange=OnChange(onchange), onchange_source="sbatch_array(onchange=...)"
    )


def _read_folder(path: Path, manifest: Manifest, env: Mapping[str, str]) -> _Folder:
    with path:
        # In the folder: the command that runs the script is relative to it.
        script = read_job_script(f"slurmjob{manifest.ext}", env)
    digest = folder_digest(path, manifest, env)
    log_path = path / LOG_NAME
    joblog = read_log(log_path) if log_path.exists() else None
    return _Folder(path, digest, script, joblog)


def _resolve_interrupted(folders: list[_Folder], links: Path, config: Config):
    """Log the task of every folder whose submission was interrupted, when SLURM has it."""
    by_token: dict[str, list[_Folder]] = {}
    for folder in folders:
        if folder.joblog is not None and folder.joblog.interrupted:
            by_token.setdefault(folder.joblog.token or "", []).append(folder)
    for token, group in by_token.items():
        first = group[0]
        certain, job_id = (True, None)
        if token:
            certain, job_id = find_by_token(
                token,
                first.script.clusters,
                first.joblog.submitting_time,
                config.command_timeout,
                arrays=True,
            )
        if not certain:
            raise JobError(
                f"The submission of an array to which {first.path} belongs was interrupted, "
                "and SLURM could not be asked whether it reached it. Run the workflow again "
                "when SLURM answers: the array is never submitted twice."
            )
        tasks = _task_indices(links / token)
        for folder in group:
            if job_id is None:
                # No job carries the token: the folder is submitted afresh.
                folder.joblog = None
                continue
            index = tasks.get(os.path.realpath(folder.path))
            if index is None:
                raise JobError(
                    f"The interrupted submission of {folder.path} reached SLURM as array job "
                    f"{job_id}, but {links / token} no longer tells its task. Cancel that array "
                    f"if needed (scancel {job_id}), remove {folder.log_path} and run the "
                    "workflow again."
                )
            suffix = "" if first.script.cluster is None else f";{first.script.cluster}"
            record_submitted(folder.log_path, f"{job_id}_{index}{suffix}")
            folder.joblog = read_log(folder.log_path)
            print(f"Found the interrupted submission's task {job_id}_{index} for {folder.path}")


def _task_indices(links: Path) -> dict[str, int]:
    """Job folder (real path) → task index, from the symlinks of a submission."""
    indices = {}
    if links.is_dir():
        for link in links.iterdir():
            if link.name.isdigit():
                indices[os.path.realpath(link)] = int(link.name)
    return indices


def _check_inputs(folders: list[_Folder], config: Config) -> list[_Folder]:
    """Apply the onchange rules to the folders whose inputs changed since their submission.

    Returns
    -------
    todo
        The folders to submit again (their old task, when live, was cancelled).
    """
    changed = [
        f
        for f in folders
        if f.joblog is not None and f.joblog.job_id is not None and f.joblog.digest != f.digest
    ]
    if not changed:
        return []
    if config.onchange is OnChange.IGNORE:
        for folder in changed:
            print(f"Inputs of {folder.path} changed since its job was submitted; still using it")
        return []
    if config.onchange is OnChange.RAISE:
        lines = "\n".join(f"  {f.path} (job {f.joblog.job_name})" for f in changed)
        raise JobError(
            f"The inputs of {len(changed)} job folder(s) of this sbatch_array() step changed "
            f"since their jobs were submitted:\n{lines}\n"
            "To run them again with the new inputs, either cancel the old jobs if needed "
            "(stepup canceljobs FOLDER) and remove their logs "
            "(stepup removejobs --all --commit FOLDER), or set STEPUP_QUEUE_ONCHANGE=resubmit "
            "(or sbatch_array(onchange='resubmit')) to cancel and resubmit automatically "
            "(STEPUP_QUEUE_ONCHANGE=ignore keeps the old jobs)."
        )
    live = [f.joblog.job_name for f in changed if f.joblog.job_id is not None and not f.joblog.done]
    if live:
        # scancel of an ended task does nothing.
        cluster = changed[0].joblog.cluster
        for result in cancel(live, cluster, config.command_timeout):
            if result.returncode != 0 and "already completing" not in result.stderr:
                raise JobError(f"Could not cancel old array tasks: {result.describe()}")
    for folder in changed:
        print(f"Inputs of {folder.path} changed: submitting it again")
        folder.joblog = None
    return changed


def _submit_all(
    todo: list[_Folder], manifest: Manifest, links: Path, config: Config, env: dict[str, str]
) -> list[_Folder]:
    """Submit the folders without a job, grouped by their `#SBATCH` lines and cluster."""
    groups: dict[tuple, list[_Folder]] = {}
    for folder in todo:
        script = folder.script
        groups.setdefault((script.directives, script.cluster), []).append(folder)
    done = []
    for (_, cluster), group in groups.items():
        size = max_array_size(cluster, config.command_timeout) or _DEFAULT_MAX_ARRAY_SIZE
        done += _ArraySubmission(group, manifest, links, config, env, size).run()
    return done


@dataclass
class _ArraySubmission:
    """The submission of one group of folders with the same `#SBATCH` lines, in chunks."""

    folders: list[_Folder]
    manifest: Manifest
    # The folder of the symlinks of this step's submissions.
    links: Path
    config: Config
    env: dict[str, str]
    max_size: int
    # At most this many tasks per sbatch: halved at each refusal for a submit limit.
    chunk: int = field(init=False)
    cache: StateCache = field(init=False)

    def __post_init__(self):
        self.chunk = self.max_size
        self.cache = StateCache(self.config, self.folders[0].script.cluster)

    def run(self) -> list[_Folder]:
        left = list(self.folders)
        while left:
            chunk = left[: self.chunk]
            if self._submit_chunk(chunk):
                left = left[len(chunk) :]
        return self.folders

    def _submit_chunk(self, chunk: list[_Folder]) -> bool:
        """Submit one array for the chunk; False when it was refused for a submit limit."""
        config = self.config
        token = f"stepup-queue-{os.urandom(8).hex()}"
        links = self.links / token
        links.makedirs_p()
        for index, folder in enumerate(chunk):
            (links / str(index)).remove_p()
            folder.path.symlink(links / str(index))
        # The token in every folder before sbatch: a restart finds the array by it.
        for folder in chunk:
            start_log(folder.log_path, folder.digest)
            append_record(folder.log_path, f"Submitting {token}")
            clear_ret(folder.path)
        since = datetime.now()
        wrapper = render_array_wrapper(
            chunk[0].script.directives,
            [str(folder.path) for folder in chunk],
            [folder.script.command for folder in chunk],
            token,
        )
        throttle = "" if self.manifest.max_running is None else f"%{self.manifest.max_running}"
        retries = 0
        refusals = 0
        while True:
            sbatch_time = datetime.now()
            result = submit(
                wrapper,
                rc=self.manifest.rc,
                token=token,
                timeout=config.command_timeout,
                env=self.env,
                array=f"0-{len(chunk) - 1}{throttle}",
                outputs=(f"{links}/%a/slurmjob.out", f"{links}/%a/slurmjob.err"),
            )
            if result.returncode == 0:
                submitted = _submitted_line(result)
                break
            refusal = submit_refusal(result.stderr + result.stdout)
            if refusal is not None and refusal[0] is Refusal.OWN_LIMIT:
                if len(chunk) > 1:
                    self.chunk = max(1, len(chunk) // 2)
                else:
                    limit = _limit_at_refusal(self.cache, sbatch_time, result, config)
                    _wait_for_room(self.cache, limit, config)
                    snapshot = self.cache.snapshot()
                    self.chunk = max(1, limit - snapshot.listing.queued())
                _forget(chunk, links)
                return False
            if refusal is not None:
                refusals += 1
                _pause_after_refusal(refusal, refusals, result, chunk[0].path, config)
                continue
            if not is_transient(result) or retries >= config.submit_retries:
                _forget(chunk, links)
                raise JobError(
                    f"Could not submit a job array of {len(chunk)} task(s): {result.describe()}"
                )
            # sbatch may have submitted (e.g. it timed out): look before trying again.
            _, job_id = find_by_token(
                token, chunk[0].script.clusters, since, config.command_timeout, arrays=True
            )
            if job_id is not None:
                suffix = "" if chunk[0].script.cluster is None else f";{chunk[0].script.cluster}"
                submitted = f"{job_id}{suffix}"
                break
            retries = _back_off(retries, config)
        job_id, _, cluster = submitted.partition(";")
        suffix = f";{cluster}" if cluster else ""
        for index, folder in enumerate(chunk):
            record_submitted(folder.log_path, f"{job_id}_{index}{suffix}")
            folder.joblog = read_log(folder.log_path)
        print(f"Submitted array job {job_id} with {len(chunk)} task(s)")
        return True


def _forget(chunk: list[_Folder], links: Path):
    """After a clear refusal, no job carries the token: the folders have no job."""
    for folder in chunk:
        folder.log_path.remove_p()
    links.rmtree_p()


# When this few tasks are left, their exit code files are read at every nap, so that the step
# ends as soon as the last task ends, not one cache period later, at a bounded cost.
TAIL_TASKS = 32


def _wait(folders: list[_Folder], config: Config):
    """Wait until every folder's task ended; record the end in each folder."""
    pending = []
    for folder in folders:
        if folder.joblog.done:
            _end(folder, folder.joblog.last_state, config, final=True)
        else:
            pending.append(folder)
    caches: dict[str | None, StateCache] = {}
    # Array job id → since when its tasks pend for a reason that never resolves by itself.
    hopeless: dict[int, datetime] = {}
    next_query = time.monotonic()
    while pending:
        if time.monotonic() >= next_query:
            next_query = time.monotonic() + config.cache_timeout + random.uniform(0, config.jitter)
            _look(pending, caches, hopeless, config)
        tail = len(pending) <= TAIL_TASKS
        pending = [f for f in pending if not _ended(f, config, tail)]
        if pending:
            nap(config, min(f.joblog.submitted_time or datetime.now() for f in pending))


def _look(
    pending: list[_Folder],
    caches: dict[str | None, StateCache],
    hopeless: dict[int, datetime],
    config: Config,
):
    """Ask SLURM (through the shared cache) about the tasks; note those that ended, and cancel
    those that pend for a reason that never resolves by itself (see `_check_hopeless`)."""
    by_cluster: dict[str | None, list[_Folder]] = {}
    for folder in pending:
        if folder.state is None:
            by_cluster.setdefault(folder.joblog.cluster, []).append(folder)
    for cluster, group in by_cluster.items():
        cache = caches.setdefault(cluster, StateCache(config, cluster))
        snapshot = cache.snapshot()
        if not snapshot.ok:
            continue
        unlisted = []
        waiting: dict[int, list[_Folder]] = {}
        for folder in group:
            trusted = (folder.joblog.submitted_time or datetime.min) + timedelta(
                seconds=config.settle_time
            )
            if snapshot.time < trusted:
                continue
            state = snapshot.listing.tasks.get(folder.key)
            if state is None:
                unlisted.append(folder)
            else:
                _note(folder, state)
                if state == "PENDING":
                    waiting.setdefault(folder.joblog.job_id, []).append(folder)
        for array_id, tasks in waiting.items():
            _check_hopeless(array_id, tasks, snapshot, hopeless, config)
        if unlisted:
            # Ended longer ago than MinJobAge: the accounting knows how.
            ids = {folder.joblog.job_id for folder in unlisted}
            states = array_states(ids, cluster, config.command_timeout)
            for folder in [] if states is None else unlisted:
                state = states.get(folder.key)
                if state is not None:
                    _note(folder, state)
                else:
                    _check_unknown(folder, snapshot.time, config)


def _check_hopeless(
    array_id: int,
    folders: list[_Folder],
    snapshot: Snapshot,
    hopeless: dict[int, datetime],
    config: Config,
):
    """Cancel the pending tasks of an array that pend for a reason that never resolves by
    itself, after the grace period (STEPUP_SBATCH_HOPELESS_GRACE), as for a single job."""
    reason = snapshot.listing.reasons.get(array_id, "")
    fix = hopeless_fix(reason)
    if fix is None:
        hopeless.pop(array_id, None)
        return
    since = hopeless.setdefault(array_id, snapshot.time)
    if (snapshot.time - since).total_seconds() < config.hopeless_grace:
        return
    cluster = folders[0].joblog.cluster
    if reason in PARTITION_REASONS:
        # The tasks of an array share their partitions, time and size: ask about the array.
        jobs = show_records("job", array_id, cluster, config.command_timeout)
        partitions = show_records("partition", None, cluster, config.command_timeout)
        admitting = (
            None if not jobs or partitions is None else admitting_partitions(jobs[0], partitions)
        )
        if admitting != []:
            what = "SLURM could not be asked" if admitting is None else ", ".join(admitting)
            print(
                f"Array job {array_id} pends with SLURM's reason {reason}, but it may run in "
                f"another of its partitions ({what}): not cancelled, still waiting."
            )
            hopeless[array_id] = snapshot.time
            return
    names = [folder.joblog.job_name for folder in folders]
    for result in cancel(names, cluster, config.command_timeout):
        if result.returncode != 0:
            raise JobError(
                f"Tasks of array job {array_id} pend with SLURM's reason {reason}, which does "
                f"not resolve by itself, but they could not be cancelled: {result.describe()}"
            )
    for folder in folders:
        append_record(folder.log_path, f"Hopeless {reason}")
        _note(folder, "CANCELLED")
        folder.hopeless = (reason, fix)


def _check_unknown(folder: _Folder, now: datetime, config: Config):
    """Raise a JobError when SLURM has not known the logged task for too long."""
    folder.unknown_since = folder.unknown_since or now
    if (now - folder.unknown_since).total_seconds() < config.runaway_timeout:
        return
    raise JobError(
        f"{folder.log_path} records array task {folder.joblog.job_name}, but neither squeue nor "
        f"sacct has known it for {config.runaway_timeout:g} s (STEPUP_SBATCH_RUNAWAY_TIMEOUT). "
        "Make sure no job of this folder is still queued (squeue --me), then remove that log "
        "(stepup removejobs --all --commit FOLDER) and run the workflow again."
    )


def _note(folder: _Folder, state: str):
    """Record a new state of a folder's task; keep a final one as its end."""
    if state != folder.joblog.last_state:
        append_record(folder.log_path, state)
        folder.joblog.states.append((datetime.now(), state))
    if state in FINAL_STATES:
        folder.state = state


def _ended(folder: _Folder, config: Config, tail: bool) -> bool:
    """True once a folder's end is known: from SLURM's answer, or in the tail, from the exit
    code that the task's script left before SLURM's next answer."""
    if folder.state is not None:
        return _finished(folder, config)
    return tail and isinstance(read_ret(folder.path), int) and _finished(folder, config)


def _finished(folder: _Folder, config: Config) -> bool:
    """Read the exit code of a task that ended: True once its end is known."""
    return _end(folder, folder.state, config, final=False)


def _end(folder: _Folder, state: str | None, config: Config, final: bool) -> bool:
    code = read_ret(folder.path)
    if code is None and state in SCRIPT_ENDED_STATES and not final:
        # The script ended, but its exit code may not have reached this node yet.
        if folder.ret_deadline is None:
            folder.ret_deadline = time.monotonic() + config.ret_timeout
        if time.monotonic() < folder.ret_deadline:
            return False
    folder.state = state
    folder.code = code if isinstance(code, int) else None
    return True


def _report(folders: list[_Folder], rerun: str) -> int:
    """Return 0 when every folder's job succeeded, else raise a JobError naming the others."""
    failed = []
    for folder in folders:
        if folder.code == 0:
            continue
        if folder.code is not None:
            how = f"exit code {folder.code}"
            if folder.state not in (None, *SCRIPT_ENDED_STATES):
                how += f" (SLURM: {folder.state})"
        elif folder.hopeless is not None:
            reason, fix = folder.hopeless
            how = (
                f"cancelled by StepUp Queue after pending with SLURM's reason {reason}, which "
                f"does not resolve by itself (STEPUP_SBATCH_HOPELESS_GRACE). Likely fix: {fix}"
            )
        else:
            how = f"{folder.state or 'no state known'}, no exit code"
        failed.append(f"  {folder.path} (job {folder.joblog.job_name}): {how}")
    print(f"{len(folders) - len(failed)} of {len(folders)} array task(s) succeeded")
    if not failed:
        return 0
    raise JobError(
        f"{len(failed)} of {len(folders)} job folders of this sbatch_array() step failed:\n"
        + "\n".join(failed)
        + "\nSee slurmjob.err in each folder. To run them again, fix the cause, clear them "
        f"(stepup removejobs --commit FOLDER ...) and run `{rerun}` again: only those are "
        "submitted."
    )

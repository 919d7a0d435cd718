"""Wait for the tasks of an `sbatch_array()` step and record the end of each in its folder.

Waiting costs one status query per cluster per cache period (the shared cache), and sacct
only for tasks that squeue no longer lists; a folder's `slurmjob.ret` is read once SLURM says
that its task ended, or once the task's wrapper says so: each task, as it ends, makes an empty
file named `ARRAYID_N` in the step's folder of ended tasks, which the step lists at every nap
(when its time stamp changed), so that it notices an end within a nap, reading only the exit
codes of the tasks that ended.
"""

import os
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from path import Path

from .arrayfolder import ArrayFolder
from .config import Config
from .errors import JobError
from .joblog import append_record
from .limits import admitting_partitions
from .slurm.cache import Snapshot, StateCache
from .slurm.control import cancel
from .slurm.queries import array_states, show_records
from .states import FINAL_STATES, PARTITION_REASONS, SCRIPT_ENDED_STATES, hopeless_fix
from .waiting import nap
from .wrapper import read_ret

__all__ = ("wait_for_tasks",)


def wait_for_tasks(folders: list[ArrayFolder], config: Config, ended: Path):
    """Wait until every folder's task ended; record the end in each folder.

    Parameters
    ----------
    folders
        The folders whose task is waited for.
    config
        The settings.
    ended
        The folder in which each task's wrapper makes an empty file `ARRAYID_N` as it ends.
    """
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
    marks = _EndMarks(ended)
    while pending:
        if time.monotonic() >= next_query:
            next_query = time.monotonic() + config.cache_timeout + random.uniform(0, config.jitter)
            _look(pending, caches, hopeless, config)
        marked = marks.names()
        pending = [f for f in pending if not _ended(f, config, f.name in marked)]
        if pending:
            nap(config, min(f.joblog.submitted_time or datetime.now() for f in pending))


def _look(
    pending: list[ArrayFolder],
    caches: dict[str | None, StateCache],
    hopeless: dict[int, datetime],
    config: Config,
):
    """Ask SLURM (through the shared cache) about the tasks; note those that ended, and cancel
    those that pend for a reason that never resolves by itself (see `_check_hopeless`)."""
    by_cluster: dict[str | None, list[ArrayFolder]] = {}
    for folder in pending:
        if folder.state is None:
            by_cluster.setdefault(folder.joblog.cluster, []).append(folder)
    for cluster, group in by_cluster.items():
        cache = caches.setdefault(cluster, StateCache(config, cluster))
        snapshot = cache.snapshot()
        if not snapshot.ok:
            continue
        unlisted = []
        waiting: dict[int, list[ArrayFolder]] = {}
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
    folders: list[ArrayFolder],
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


def _check_unknown(folder: ArrayFolder, now: datetime, config: Config):
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


def _note(folder: ArrayFolder, state: str):
    """Record a new state of a folder's task; keep a final one as its end."""
    if state != folder.joblog.last_state:
        append_record(folder.log_path, state)
        folder.joblog.states.append((datetime.now(), state))
    if state in FINAL_STATES:
        folder.state = state


@dataclass
class _EndMarks:
    """The names of the files that ended tasks made in the folder `ended`, listed again only
    when the folder's time stamp changed."""

    ended: Path
    _stamp: float | None = None
    _names: frozenset[str] = frozenset()

    def names(self) -> frozenset[str]:
        try:
            stamp = self.ended.stat().st_mtime
            if stamp != self._stamp:
                self._names = frozenset(os.listdir(self.ended))
                self._stamp = stamp
        except OSError:
            # No folder (e.g. the tasks of an older version): SLURM's answer tells the end.
            pass
        return self._names


def _ended(folder: ArrayFolder, config: Config, marked: bool) -> bool:
    """True once a folder's end is known: from SLURM's answer, or when its task marked its end,
    from the exit code that its script left before SLURM's next answer."""
    if folder.state is not None:
        return _finished(folder, config)
    return marked and isinstance(read_ret(folder.path), int) and _finished(folder, config)


def _finished(folder: ArrayFolder, config: Config) -> bool:
    """Read the exit code of a task that ended: True once its end is known."""
    return _end(folder, folder.state, config, final=False)


def _end(folder: ArrayFolder, state: str | None, config: Config, final: bool) -> bool:
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

"""Submit the folders of an `sbatch_array()` step as job arrays, exactly once.

The folders that need a job are grouped by their `#SBATCH` lines (and cluster) and submitted
in chunks, each one array of at most MaxArraySize tasks (indices 0..k-1) and at most the room
under the user's submit limit. Before sbatch, the `Submitting TOKEN` record of the chunk is
flushed to every folder of the chunk, so that a restart finds the array by its token instead
of submitting again. SLURM writes each task's output into its folder through symlinks,
`ARRAYS_DIR/NAME/TOKEN/N -> FOLDER`, which also tell a restart which folder had which task.
"""

import os
from dataclasses import dataclass, field
from datetime import datetime

from path import Path

from .arrayfolder import ENDED_DIR, ArrayFolder
from .arraymanifest import Manifest
from .config import Config, OnChange
from .errors import JobError
from .joblog import append_record, read_log, record_submitted, start_log
from .limits import Refusal, submit_refusal
from .slurm.cache import StateCache
from .slurm.commands import is_transient
from .slurm.control import cancel, submit
from .slurm.identity import find_by_token
from .slurm.queries import max_array_size
from .submission import (
    back_off,
    limit_at_refusal,
    pause_after_refusal,
    submitted_line,
    wait_for_room,
)
from .wrapper import clear_ret, render_array_wrapper

__all__ = ("check_inputs", "resolve_interrupted", "submit_all")

# MaxArraySize when scontrol does not tell: SLURM's default.
_DEFAULT_MAX_ARRAY_SIZE = 1001


def resolve_interrupted(folders: list[ArrayFolder], links: Path, config: Config):
    """Log the task of every folder whose submission was interrupted, when SLURM has it."""
    by_token: dict[str, list[ArrayFolder]] = {}
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


def check_inputs(folders: list[ArrayFolder], config: Config) -> list[ArrayFolder]:
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


def submit_all(
    todo: list[ArrayFolder], manifest: Manifest, links: Path, config: Config, env: dict[str, str]
) -> list[ArrayFolder]:
    """Submit the folders without a job, grouped by their `#SBATCH` lines and cluster."""
    groups: dict[tuple, list[ArrayFolder]] = {}
    for folder in todo:
        script = folder.script
        groups.setdefault((script.directives, script.cluster), []).append(folder)
    if len(groups) > 1:
        print(_split_note(list(groups.values())))
    done = []
    for (_, cluster), group in groups.items():
        size = max_array_size(cluster, config.command_timeout) or _DEFAULT_MAX_ARRAY_SIZE
        done += _ArraySubmission(group, manifest, links, config, env, size).run()
    return done


def _split_note(groups: list[list[ArrayFolder]]) -> str:
    """Why the folders go into several arrays: a per-folder `--job-name` is easily overlooked."""
    first, second = groups[0][0].script, groups[1][0].script
    only_first = [line for line in first.directives if line not in second.directives]
    only_second = [line for line in second.directives if line not in first.directives]
    if only_first or only_second:
        how = (
            f"{groups[0][0].path} has {only_first or 'no other lines'} where "
            f"{groups[1][0].path} has {only_second or 'no other lines'}"
        )
    else:
        how = f"{groups[0][0].path} and {groups[1][0].path} go to different clusters"
    return (
        f"Note: the {sum(map(len, groups))} folders to submit go into {len(groups)} job arrays, "
        f"one per set of #SBATCH lines (and cluster): {how}. Folders whose #SBATCH lines are "
        "the same share one array and one sbatch call (a --job-name per folder prevents that)."
    )


@dataclass
class _ArraySubmission:
    """The submission of one group of folders with the same `#SBATCH` lines, in chunks."""

    folders: list[ArrayFolder]
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

    def run(self) -> list[ArrayFolder]:
        left = list(self.folders)
        while left:
            chunk = left[: self.chunk]
            if self._submit_chunk(chunk):
                left = left[len(chunk) :]
        return self.folders

    def _submit_chunk(self, chunk: list[ArrayFolder]) -> bool:
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
        ended = self.links / ENDED_DIR
        ended.makedirs_p()
        wrapper = render_array_wrapper(
            chunk[0].script.directives,
            [str(folder.path) for folder in chunk],
            [folder.script.command for folder in chunk],
            token,
            str(ended),
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
                submitted = submitted_line(result)
                break
            refusal = submit_refusal(result.stderr + result.stdout)
            if refusal is not None and refusal[0] is Refusal.OWN_LIMIT:
                if len(chunk) > 1:
                    self.chunk = max(1, len(chunk) // 2)
                else:
                    limit = limit_at_refusal(self.cache, sbatch_time, result, config)
                    wait_for_room(self.cache, limit, config)
                    snapshot = self.cache.snapshot()
                    self.chunk = max(1, limit - snapshot.listing.queued())
                _forget(chunk, links)
                return False
            if refusal is not None:
                refusals += 1
                pause_after_refusal(refusal, refusals, result, chunk[0].path, config)
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
            retries = back_off(retries, config)
        job_id, _, cluster = submitted.partition(";")
        suffix = f";{cluster}" if cluster else ""
        for index, folder in enumerate(chunk):
            record_submitted(folder.log_path, f"{job_id}_{index}{suffix}")
            folder.joblog = read_log(folder.log_path)
        print(f"Submitted array job {job_id} with {len(chunk)} task(s)")
        return True


def _forget(chunk: list[ArrayFolder], links: Path):
    """After a clear refusal, no job carries the token: the folders have no job."""
    for folder in chunk:
        folder.log_path.remove_p()
    links.rmtree_p()

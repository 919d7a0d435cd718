"""The life of an `sbatch_array()` step: many job folders, submitted as SLURM job arrays.

Every folder stays a job folder of its own (`slurmjob.log`, `.out`, `.err`, `.ret`); its log
records its array task as `Submitted ID_N`. This module decides the order of things;
submitting (`arraysubmission`) and waiting (`arraywaiting`) live in their own modules.
"""

import dataclasses
from collections.abc import Mapping

from path import Path

from .arrayfolder import ARRAYS_DIR, ENDED_DIR, ArrayFolder
from .arraymanifest import Manifest, folder_digest
from .arraysubmission import check_inputs, resolve_interrupted, submit_all
from .arraywaiting import wait_for_tasks
from .config import Config, OnChange
from .errors import JobError
from .joblog import LOG_NAME, read_log
from .slurm.cache import StateCache
from .slurm.control import environment_after_rc
from .states import SCRIPT_ENDED_STATES
from .wrapper import read_job_script

__all__ = ("run_array",)


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
    resolve_interrupted(folders, links, config)
    check_inputs(folders, config)
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
    submitted = submit_all(todo, manifest, links, config, env)
    wait_for_tasks(waiting + submitted, config, links / ENDED_DIR)
    # Every task ended: SLURM writes no more output through the symlinks.
    links.rmtree_p()
    return _report(folders, rerun)


def _with_onchange(config: Config, onchange: str) -> Config:
    return dataclasses.replace(
        config, onchange=OnChange(onchange), onchange_source="sbatch_array(onchange=...)"
    )


def _read_folder(path: Path, manifest: Manifest, env: Mapping[str, str]) -> ArrayFolder:
    with path:
        # In the folder: the command that runs the script is relative to it.
        script = read_job_script(f"slurmjob{manifest.ext}", env)
    digest = folder_digest(path, manifest, env)
    log_path = path / LOG_NAME
    joblog = read_log(log_path) if log_path.exists() else None
    return ArrayFolder(path, digest, script, joblog)


def _report(folders: list[ArrayFolder], rerun: str) -> int:
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

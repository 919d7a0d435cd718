"""The workflow API of StepUp Queue: `sbatch()` in a `plan.py`, on StepUp 3 and StepUp 4.

The installed StepUp Core decides at run time how the step is made: StepUp 3 runs the action
`sbatch`, StepUp 4 the console script `sq-sbatch-and-wait`. Both strings are part of a step's
identity and input digest, so they are exactly those of the original StepUp Queue 1.x (for
StepUp 3) and 2.x (for StepUp 4): a workflow started with those resumes under this package.
"""

import functools
import shlex
from collections.abc import Collection
from importlib.metadata import version

from path import Path
from stepup.core import api as core
from stepup.core.stepinfo import StepInfo

from .arraymanifest import Manifest, write_manifest
from .attempts import write_retry_settings
from .entry import check_open_files
from .states import retried_states

__all__ = ("sbatch", "sbatch_array")

_RESERVED_EXTS = (".log", ".out", ".err", ".ret", ".retries")
_ONCHANGE_VALUES = ("raise", "resubmit", "ignore")
# StepUp 4 replaced `block=True` by a resource that no build offers.
BLOCK_RESOURCE = "stepup-queue-blocked"
# Once per plan: the director's limit and -j do not change while it runs.
_check_open_files_once = functools.cache(check_open_files)


def stepup_major() -> int:
    """The major version of the installed StepUp Core: 3 or 4."""
    return int(version("stepup").split(".")[0])


def step_command(major: int, ext: str, rc: str | None, onchange: str | None) -> str:
    """The action (StepUp 3) or command (StepUp 4) of an sbatch step, byte for byte.

    Parameters
    ----------
    major
        The major version of StepUp Core.
    ext
        The normalized extension of the job script, e.g. `.sh`.
    rc
        The rc command, or `None`.
    onchange
        The `onchange` argument of `sbatch()`, or `None`.
    """
    command = "sbatch" if major < 4 else "sq-sbatch-and-wait"
    if ext != ".sh":
        # Quoting changes no extension that needs none, so the bytes stay those of 2.0.x.
        command += f" {shlex.quote(ext)}"
    if rc is not None:
        command += f" --rc={shlex.quote(rc)}"
    if onchange is not None:
        command += f" --onchange={onchange}"
    return command


def _as_list(paths: Collection[str] | str) -> list[str]:
    return [paths] if isinstance(paths, str) else list(paths)


def sbatch(
    workdir: str,
    *,
    ext: str = ".sh",
    rc: str | None = None,
    inp: Collection[str] | str = (),
    env: Collection[str] | str = (),
    out: Collection[str] | str = (),
    vol: Collection[str] | str = (),
    onchange: str | None = None,
    optional: bool = False,
    pool: str | None = None,
    block: bool = False,
    resources: dict[str, int] | str | None = None,
    duration: float | None = None,
    retries: int | None = None,
    retry_on: Collection[str] | str = (),
) -> StepInfo:
    """Add a step that submits a SLURM job once and waits for it to finish.

    The job folder `workdir` holds the job script `slurmjob{ext}`. The step submits it with
    `sbatch` (only once: a restarted workflow finds the job again in `slurmjob.log`), waits
    until SLURM is done with it, and then succeeds or fails with the script's exit code.
    Interrupting the workflow never cancels the job; `stepup canceljobs` does.

    A waiting step holds one of StepUp's slots for running steps all the time its job is
    queued or running: `stepup build -j N` (StepUp 4, default one per core) or
    `stepup boot -n N` (StepUp 3) must be at least the number of jobs you want queued at once.

    The job folder gets these files:

    - `slurmjob{ext}`: the job script, written by you (or rendered by an earlier step).
      It must start with a shebang line (e.g. `#!/usr/bin/env bash`); `#SBATCH` lines right
      below it set the job's resources. It needs no execute permission: a script without it
      is run by the interpreter named on its shebang line.
      `-o/--output`, `-e/--error`, `-a/--array`, `-D/--chdir` and `--comment` are refused:
      StepUp Queue sets them itself or cannot support them.
    - `slurmjob.log`: StepUp Queue's record of the submission and the states of the job.
    - `slurmjob.out`, `slurmjob.err`: the job's standard output and error, written by SLURM.
    - `slurmjob.ret`: the exit code of the job script.
    - `slurmjob.retries`: the `retries` and `retry_on` arguments, when given (see below).
    - `slurmjob.log.N`, `slurmjob.out.N`, `slurmjob.err.N`: the files of earlier attempts,
      when the job was submitted again after an infrastructure failure.

    Parameters
    ----------
    workdir
        The job folder, relative to the folder of the `plan.py` that calls this function.
    ext
        The extension of the job script, `.sh` by default. An empty string means `.sh`
        and a missing leading dot is added, so `"py"` is `.py`.
        `.log`, `.out`, `.err` and `.ret` are not allowed: those names are taken.
    rc
        A bash command run before `sbatch` in the same shell, e.g. to load modules or
        activate an environment: `sbatch` runs only when it succeeds.
    inp
        Extra inputs of the step (relative to `workdir`), e.g. files the job reads.
        The job script is always an input.
    env
        Environment variables to which the step is sensitive.
    out
        Extra outputs of the step (relative to `workdir`), e.g. files the job writes.
    vol
        Extra volatile outputs (relative to `workdir`), not checked by StepUp.
    onchange
        What to do when the step's inputs changed since its job was submitted: `"raise"`
        (fail with an explanation), `"resubmit"` (cancel the old job, submit again) or
        `"ignore"` (keep waiting for the old job). Overrides `STEPUP_QUEUE_ONCHANGE` and
        `STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS` for this step. `None` leaves them in charge.
    optional
        When True, the job is only submitted when another step needs its outputs.
    pool
        StepUp 3 only: the pool in which the step runs, to limit how many jobs wait at once.
        On StepUp 4, use `resources` instead.
    block
        When True, the step stays pending and the job is not submitted. On StepUp 4 this
        requires a resource that no build offers (StepUp 4's replacement of blocked steps).
    resources
        StepUp 4 only: the resources the step holds while it waits, e.g. `"slurm:1"` with
        `stepup build --resources slurm:50` to limit how many jobs wait at once.
    duration
        StepUp 4 only: an estimate of the step's duration in seconds, for scheduling.
    retries
        How often the job is submitted again when SLURM ends it with an infrastructure
        failure (NODE_FAIL, BOOT_FAIL, PREEMPTED), before the step fails. `None` follows
        `STEPUP_QUEUE_RETRIES` (default 0). A job that SLURM requeues itself is not retried
        by StepUp Queue. The setting is kept in `slurmjob.retries`, not in the step's
        command, so changing it never counts as a change of the job's inputs: a job that
        finished is not submitted again.
    retry_on
        More end states after which the job is submitted again: `"TIMEOUT"` and/or
        `"OUT_OF_MEMORY"` (sensible for a job that continues from a checkpoint).

    Returns
    -------
    step_info : StepInfo
        What StepUp's `step()` (StepUp 3) or `run()` (StepUp 4) returns, to define
        follow-up steps.

    Raises
    ------
    ValueError
        When `ext` names one of the files StepUp Queue writes itself, `onchange` has an unknown
        value, or an argument is given that the installed StepUp does not support.
    stepup.queue.openfiles.OpenFileLimitError
        At the first call in a plan, when StepUp's director has too few open files for the
        steps that may wait at once (`-j`): it would die halfway with jobs left in the queue.

    Examples
    --------
    In `plan.py` (StepUp 4, run with `stepup build -j 10` to have up to 10 jobs queued):

    ```python
    from stepup.core.api import static
    from stepup.queue.api import sbatch

    static("compute/slurmjob.sh")
    sbatch("compute/", out="result.txt")
    ```
    """
    ext = _normalize_ext(ext)
    _check_onchange(onchange)
    _check_retries(workdir, retries, retry_on)
    major = stepup_major()
    # Before the first step of the plan exists: a refusal leaves nothing submitted.
    _check_open_files_once("stepup boot -n" if major < 4 else "stepup build -j")
    command = step_command(major, ext, rc, onchange)
    paths = {
        "inp": [f"slurmjob{ext}", *_as_list(inp)],
        "env": _as_list(env),
        "out": ["slurmjob.out", "slurmjob.err", "slurmjob.ret", *_as_list(out)],
        "vol": ["slurmjob.log", *_as_list(vol)],
    }
    if major < 4:
        for name, value in ("resources", resources), ("duration", duration):
            if value is not None:
                raise ValueError(
                    f"sbatch({workdir!r}, {name}=...) needs StepUp 4; this is StepUp "
                    f"{version('stepup')}. Remove the argument, or use pool= on StepUp 3."
                )
        # Before the step exists, so that it cannot run without its settings.
        write_retry_settings(Path(workdir), retries, tuple(_as_list(retry_on)))
        return core.step(
            command, **paths, workdir=workdir, optional=optional, pool=pool, block=block
        )
    if pool is not None:
        raise ValueError(
            f"sbatch({workdir!r}, pool={pool!r}): StepUp 4 has no pools. Use "
            f'resources="{pool}" and offer it with `stepup build --resources {pool}:N`.'
        )
    if block:
        resources = _resources(resources) | {BLOCK_RESOURCE: 1}
    write_retry_settings(Path(workdir), retries, tuple(_as_list(retry_on)))
    return core.run(
        command,
        **paths,
        workdir=workdir,
        optional=optional,
        resources=resources,
        duration=duration,
    )


# The names of the sbatch_array() steps of this plan: each has a manifest file of its own.
_ARRAY_NAMES: set[str] = set()


def sbatch_array(
    workdirs: Collection[str],
    *,
    ext: str = ".sh",
    rc: str | None = None,
    inp: Collection[str] | str = (),
    env: Collection[str] | str = (),
    out: Collection[str] | str = (),
    vol: Collection[str] | str = (),
    onchange: str | None = None,
    max_running: int | None = None,
    optional: bool = False,
    name: str = "slurmarray",
    pool: str | None = None,
    block: bool = False,
    resources: dict[str, int] | str | None = None,
    duration: float | None = None,
) -> StepInfo:
    """Add ONE step that submits the job scripts of many job folders as SLURM job arrays.

    Each folder in `workdirs` is a job folder as for `sbatch()`: its own `slurmjob{ext}`,
    `slurmjob.log` (which records its array task, `Submitted ID_N`), `slurmjob.out`, `.err`
    and `.ret`. The folders that need a job are grouped by the `#SBATCH` lines of their
    scripts (the scripts may differ otherwise) and submitted as few arrays as SLURM allows:
    at most MaxArraySize tasks each, and no more than fit under your submit limit. The step
    waits for all of them in one process, with one status query per cache period, and
    succeeds when every folder's script exited with 0; otherwise it fails with a message that
    names each failed folder and its exit code or SLURM state.

    Each folder is submitted once: a restarted workflow finds the arrays again; a folder that
    succeeded is never run again; a failed one is submitted again only after
    `stepup removejobs` cleared it, or when its inputs changed (see `onchange`).

    `plan.py` writes the manifest `{name}.json` next to itself (the folders and settings), so
    that the step's command stays short: `sq-sbatch-array {name}.json` on StepUp 4, the action
    `sbatcharray {name}.json` on StepUp 3.

    Parameters
    ----------
    workdirs
        The job folders, relative to the folder of plan.py.
    ext
        The extension of the job scripts, as for `sbatch()`.
    rc
        A bash command run before each `sbatch`, as for `sbatch()`.
    inp
        Extra inputs of every folder, relative to each folder.
    env
        Environment variables to which the jobs are sensitive.
    out
        Extra outputs of every folder, relative to each folder.
    vol
        Extra volatile outputs of every folder, relative to each folder.
    onchange
        What to do with a folder whose inputs (script, `inp` files, `env` values) changed since
        its job was submitted, as for `sbatch()`: `"raise"`, `"resubmit"` or `"ignore"`.
    max_running
        At most this many tasks of each array run at once (`sbatch --array=...%N`).
    optional
        When True, the step runs only when another step needs its outputs.
    name
        The name of the manifest file (`{name}.json`), unique among the sbatch_array() steps
        of a plan.
    pool, block, resources, duration
        As for `sbatch()`.

    Returns
    -------
    step_info : StepInfo
        What StepUp's `step()` (StepUp 3) or `run()` (StepUp 4) returns.

    Raises
    ------
    ValueError
        For an empty or repeated list of folders, a name used twice in one plan, or the
        arguments that `sbatch()` refuses.

    Examples
    --------
    ```python
    from stepup.core.api import static
    from stepup.queue.api import sbatch_array

    folders = [f"run{i:03d}" for i in range(100)]
    static(*[f"{folder}/slurmjob.sh" for folder in folders])
    sbatch_array(folders, out="result.txt", max_running=20)
    ```
    """
    ext = _normalize_ext(ext)
    _check_onchange(onchange)
    folders = [str(Path(workdir).normpath()) for workdir in _as_list(workdirs)]
    if not folders:
        raise ValueError("sbatch_array() needs at least one job folder in workdirs.")
    if len(set(folders)) != len(folders):
        raise ValueError(f"sbatch_array() got a job folder more than once: {folders}.")
    if max_running is not None and (
        isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1
    ):
        raise ValueError(f"sbatch_array(max_running={max_running!r}): use a whole number >= 1.")
    if name in _ARRAY_NAMES:
        raise ValueError(
            f"sbatch_array(name={name!r}) is called twice in this plan: each call writes its "
            f"own manifest {name}.json. Give each call another name=."
        )
    _ARRAY_NAMES.add(name)
    major = stepup_major()
    manifest = Manifest(
        tuple(folders),
        ext,
        rc,
        onchange,
        max_running,
        tuple(_as_list(inp)),
        tuple(_as_list(env)),
    )
    manifest_path = f"{name}.json"
    write_manifest(manifest_path, manifest)
    core.static(manifest_path)
    command = f"{'sbatcharray' if major < 4 else 'sq-sbatch-array'} {shlex.quote(manifest_path)}"
    each = {
        "inp": [f"slurmjob{ext}", *_as_list(inp)],
        "out": ["slurmjob.out", "slurmjob.err", "slurmjob.ret", *_as_list(out)],
        "vol": ["slurmjob.log", *_as_list(vol)],
    }
    paths = {kind: [f"{f}/{p}" for f in folders for p in names] for kind, names in each.items()}
    paths["inp"].insert(0, manifest_path)
    paths["env"] = _as_list(env)
    if major < 4:
        for label, value in ("resources", resources), ("duration", duration):
            if value is not None:
                raise ValueError(
                    f"sbatch_array({label}=...) needs StepUp 4; this is StepUp "
                    f"{version('stepup')}. Remove the argument, or use pool= on StepUp 3."
                )
        return core.step(command, **paths, optional=optional, pool=pool, block=block)
    if pool is not None:
        raise ValueError(
            f"sbatch_array(pool={pool!r}): StepUp 4 has no pools. Use "
            f'resources="{pool}" and offer it with `stepup build --resources {pool}:N`.'
        )
    if block:
        resources = _resources(resources) | {BLOCK_RESOURCE: 1}
    return core.run(command, **paths, optional=optional, resources=resources, duration=duration)


def _normalize_ext(ext: str) -> str:
    if ext == "":
        ext = ".sh"
    elif not ext.startswith("."):
        ext = f".{ext}"
    if ext in _RESERVED_EXTS:
        raise ValueError(
            f"ext={ext!r} is not allowed: slurmjob{ext} is written by StepUp Queue. "
            "Use another extension for the job script, e.g. '.sh' (the default) or '.py'."
        )
    return ext


def _check_onchange(onchange: str | None):
    if onchange is not None and onchange not in _ONCHANGE_VALUES:
        raise ValueError(
            f"onchange={onchange!r} is not allowed: use one of {', '.join(_ONCHANGE_VALUES)}, "
            "or None to follow STEPUP_QUEUE_ONCHANGE."
        )


def _check_retries(workdir: str, retries: int | None, retry_on: Collection[str] | str):
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        raise ValueError(
            f"sbatch({workdir!r}, retries={retries!r}): use a whole number >= 0, or None to "
            "follow STEPUP_QUEUE_RETRIES."
        )
    if retries is not None and retries < 0:
        raise ValueError(f"sbatch({workdir!r}, retries={retries}): use a whole number >= 0.")
    try:
        retried_states(_as_list(retry_on))
    except ValueError as exc:
        raise ValueError(
            f"sbatch({workdir!r}, retry_on={retry_on!r}) is not allowed: {exc}"
        ) from None


def _resources(resources: dict[str, int] | str | None) -> dict[str, int]:
    # Parsed as StepUp 4 parses them, to add one.
    if resources is None:
        return {}
    if isinstance(resources, str):
        from stepup.core.utils import parse_resources

        return parse_resources(resources)
    return dict(resources)

"""The workflow API of StepUp Queue: `sbatch()` in a `plan.py`."""

import shlex
from collections.abc import Collection

from stepup.core.api import step
from stepup.core.stepinfo import StepInfo
from stepup.core.utils import string_to_list

__all__ = ("sbatch",)

_RESERVED_EXTS = (".log", ".out", ".err", ".ret")


def sbatch(
    workdir: str,
    *,
    ext: str = ".sh",
    rc: str | None = None,
    inp: Collection[str] | str = (),
    env: Collection[str] | str = (),
    out: Collection[str] | str = (),
    vol: Collection[str] | str = (),
    optional: bool = False,
    pool: str | None = None,
    block: bool = False,
) -> StepInfo:
    """Add a step that submits a SLURM job once and waits for it to finish.

    The job folder `workdir` holds the job script `slurmjob{ext}`. The step submits it with
    `sbatch` (only once: a restarted workflow finds the job again in `slurmjob.log`), waits
    until SLURM is done with it, and then succeeds or fails with the script's exit code.
    Interrupting the workflow never cancels the job; `stepup canceljobs` does.

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

    Parameters
    ----------
    workdir
        The job folder, relative to the folder of the `plan.py` that calls this function.
    ext
        The extension of the job script, `.sh` by default. An empty string means `.sh`
        and a missing leading dot is added, so `"py"` is `.py`.
        `.log`, `.out`, `.err` and `.ret` are not allowed: those names are taken.
    rc
        A shell command run before `sbatch` in the same shell, e.g. to load modules or
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
    optional
        When True, the job is only submitted when another step needs its outputs.
    pool
        The StepUp pool in which the step runs, to limit how many jobs wait at once.
    block
        When True, the step stays pending and the job is not submitted.

    Returns
    -------
    step_info : StepInfo
        What `stepup.core.api.step()` returns, to define follow-up steps.

    Raises
    ------
    ValueError
        When `ext` names one of the files StepUp Queue writes itself.

    Examples
    --------
    In `plan.py`:

    ```python
    from stepup.core.api import static
    from stepup.queue.api import sbatch

    static("compute/", "compute/slurmjob.sh")
    sbatch("compute/", out="result.txt")
    ```
    """
    if ext == "":
        ext = ".sh"
    elif not ext.startswith("."):
        ext = f".{ext}"
    if ext in _RESERVED_EXTS:
        raise ValueError(
            f"ext={ext!r} is not allowed: slurmjob{ext} is written by StepUp Queue. "
            "Use another extension for the job script, e.g. '.sh' (the default) or '.py'."
        )
    action = "sbatch"
    if ext != ".sh":
        action += f" {shlex.quote(ext)}"
    if rc is not None:
        action += f" --rc={shlex.quote(rc)}"
    return step(
        action,
        inp=[f"slurmjob{ext}", *string_to_list(inp)],
        env=env,
        out=["slurmjob.out", "slurmjob.err", "slurmjob.ret", *string_to_list(out)],
        vol=["slurmjob.log", *string_to_list(vol)],
        workdir=workdir,
        optional=optional,
        pool=pool,
        block=block,
    )

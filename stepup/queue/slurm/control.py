"""The commands that change SLURM's queue: sbatch (after the user's rc) and scancel."""

import os
import shlex
from collections.abc import Iterable, Iterator

from .commands import CommandResult, cluster_args, run_command

__all__ = ("MAX_SCANCEL_IDS", "cancel", "environment_after_rc", "id_order", "submit")

MAX_SCANCEL_IDS = 100


def submit(
    wrapper: str,
    *,
    rc: str | None,
    token: str,
    timeout: float,
    env: dict[str, str],
    array: str | None = None,
    outputs: tuple[str, str] = ("slurmjob.out", "slurmjob.err"),
) -> CommandResult:
    """Submit a wrapper script with `sbatch --parsable`, tagged with a token as its comment.

    Parameters
    ----------
    wrapper
        The job script, passed to sbatch on standard input.
    rc
        A bash command to run before sbatch (e.g. to load modules), or `None`. Whatever
        folder it changes to, sbatch runs in the current (job) folder after it.
    token
        The unique tag of this submission, stored as the job's comment.
    timeout
        Seconds after which sbatch is killed.
    env
        The environment of sbatch (and rc); the job inherits it (see `commands.run_command`).
    array
        The task indices of a job array (`--array`), e.g. `0-9%2`; `None` for a single job.
    outputs
        The files of the job's standard output and error (sbatch's `-o` and `-e`).
    """
    args = ["sbatch", "--parsable", "-o", outputs[0], "-e", outputs[1]]
    if array is not None:
        args.append(f"--array={array}")
    args.append(f"--comment={token}")
    if rc is None:
        return run_command(args, stdin=wrapper, timeout=timeout, env=env)
    return run_command(_after_rc(rc, shlex.join(args)), stdin=wrapper, timeout=timeout, env=env)


def _after_rc(rc: str, command: str, rc_output: str = "") -> str:
    """A bash command line that runs `command` in the job folder after rc.

    `rc_output` redirects the output of rc, e.g. `> /dev/null`.
    """
    # The braces keep every command of rc away from the wrapper on stdin, not just the last.
    # The job runs, and writes its files, where sbatch runs: back to the job folder after rc.
    folder = shlex.quote(os.getcwd())
    return f"{{ {rc}\n}} < /dev/null {rc_output}&& cd -- {folder} && {command}"


def environment_after_rc(rc: str, timeout: float, env: dict[str, str]) -> dict[str, str] | None:
    """The environment in which sbatch runs after rc, e.g. with the `SLURM_CLUSTERS` that a
    `module swap cluster/NAME` sets; `None` when rc fails.

    Parameters
    ----------
    rc
        The bash command that runs before sbatch.
    timeout
        Seconds after which rc is killed.
    env
        The environment of rc.
    """
    command = _after_rc(rc, "env -0", "> /dev/null ")
    result = run_command(command, timeout=timeout, env=env)
    if result.returncode != 0:
        return None
    return dict(item.split("=", 1) for item in result.stdout.split("\0") if "=" in item)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def id_order(job_id: int | str) -> tuple[bool, int | str]:
    """The order in which `cancel` passes ids to scancel: job ids, then array tasks (`ID_N`)."""
    return isinstance(job_id, str), job_id


def cancel(
    job_ids: Iterable[int | str], cluster: str | None, timeout: float
) -> list[CommandResult]:
    """Cancel jobs with scancel, at most 100 job ids per call, in the order of `id_order`.

    Array tasks are named `ID_N` (scancel cancels that task alone).

    Returns
    -------
    results
        One result per scancel call.
    """
    ids = sorted(job_ids, key=id_order)
    return [
        run_command(["scancel", *cluster_args(cluster), *map(str, chunk)], timeout=timeout)
        for chunk in _chunks(ids, MAX_SCANCEL_IDS)
    ]

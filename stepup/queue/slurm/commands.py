"""Running SLURM's commands: one place that sets the environment and time-out of every call.

Every command runs in an environment without the user's settings that change what it prints
(see `run_command`), so a line in a shell profile cannot hide jobs or change the times we read.
A test or a benchmark can count and reason about every call through this module.
"""

import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass

from path import Path

__all__ = ("KILL_GRACE", "CommandResult", "cluster_args", "is_transient", "run_command")

# Parts of SLURM client errors that mean "try again later", not "your request is wrong".
_TRANSIENT_ERRORS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "connection reset",
    "zero bytes were transmitted",
    "resource temporarily unavailable",
    "slurm backup controller in standby mode",
    "timed out after",
    "slurmctld is not responding",
    "problem talking to database",
    "can't be reached now",
)

# The input variables of the query commands (ENVIRONMENT VARIABLES in their man pages), which
# a user's shell may set: SQUEUE_PARTITION or SQUEUE_NAMES filter what `squeue --me` lists,
# SLURM_TIME_FORMAT changes every time stamp, SLURM_CLUSTERS the cluster asked. Only the
# matching option overrides them, so the queries run without them and give every option.
_QUERY_COMMANDS = frozenset({"squeue", "sacct", "scontrol", "scancel"})
_QUERY_PREFIXES = ("SQUEUE_", "SACCT_", "SCONTROL_", "SCANCEL_")
_QUERY_VARIABLES = frozenset(
    {"SLURM_BITSTR_LEN", "SLURM_CLUSTERS", "SLURM_DEBUG_FLAGS", "SLURM_TIME_FORMAT"}
)


@dataclass(frozen=True)
class CommandResult:
    """The outcome of a SLURM command.

    Attributes
    ----------
    command
        The command as a user could type it.
    returncode
        The exit code; -9 when it was killed after its timeout, 127 when it was not found.
    stdout, stderr
        What it printed.
    """

    command: str
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """A short description of a failed command, for error messages."""
        details = self.stderr.strip() or self.stdout.strip() or "(nothing printed)"
        return f"`{self.command}` exited with code {self.returncode}: {details}"


def run_command(
    args: list[str] | str,
    *,
    timeout: float,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run a command without a shell (or with bash, when `args` is a string).

    A command that runs longer than `timeout` seconds is killed with its process group,
    so a hanging SLURM client never blocks a step forever. `env` (by default that of this
    process) replaces the environment, without the user's settings that change what SLURM's
    commands print, see `_environment`.
    """
    shell = isinstance(args, str)
    command = args if shell else shlex.join(args)
    program = None if shell else Path(args[0]).name
    try:
        proc = subprocess.Popen(
            args,
            shell=shell,
            # Users write rc commands for bash (source, module), not for a POSIX sh.
            executable="/bin/bash" if shell else None,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=_environment(program, env),
            start_new_session=True,
        )
    except FileNotFoundError:
        return CommandResult(command, 127, "", f"command not found: {args[0]}")
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop(proc)
        return CommandResult(command, -9, stdout, f"{stderr}timed out after {timeout:g} s")
    return CommandResult(command, proc.returncode, stdout, stderr)


# Seconds a command that timed out gets to end after SIGTERM, and then after SIGKILL.
KILL_GRACE = 2.0


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    """End a command that timed out: SIGTERM to its process group, SIGKILL after a grace period.

    Never waits longer than twice the grace period: a process that left the group (e.g. a
    daemon that rc started) may keep the pipes open, and then the rest of the output is lost.

    Returns
    -------
    stdout, stderr
        What the command printed, as far as it could be read.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            return proc.communicate(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with suppress(OSError):
                pipe.close()
    with suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE)
    return "", "(the rest of its output was lost: a process it started holds it) "


def _environment(program: str | None, env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment of a command: `env` (by default ours) without the user's settings that
    change what StepUp Queue reads.

    Parameters
    ----------
    program
        The name of the command; `None` for a bash command line (rc and sbatch).
    env
        The environment to start from.

    Returns
    -------
    environment
        For a query (squeue, sacct, scontrol, scancel): without the input variables of these
        commands, and with standard time stamps. For anything else (sbatch, perhaps after rc):
        the user's variables, whose SBATCH_* are the job options that the user chose and which
        the job inherits, but without SBATCH_WAIT, which would keep sbatch waiting until the
        job ends.
    """
    environment = dict(os.environ if env is None else env)
    if program in _QUERY_COMMANDS:
        environment = {
            name: value
            for name, value in environment.items()
            if not name.startswith(_QUERY_PREFIXES) and name not in _QUERY_VARIABLES
        }
        environment["SLURM_TIME_FORMAT"] = "standard"
    else:
        environment.pop("SBATCH_WAIT", None)
    return environment


def is_transient(result: CommandResult) -> bool:
    """True when a failed command is worth trying again later."""
    if result.returncode == -9:
        return True
    text = (result.stderr + result.stdout).lower()
    if "known by database" in text:
        # A misspelled -M cluster: SLURM adds "can't be reached now", but retrying won't help.
        return False
    return any(part in text for part in _TRANSIENT_ERRORS)


def cluster_args(cluster: str | None) -> list[str]:
    """The option that selects a cluster (`-M NAME`); none for the default cluster."""
    return [] if cluster is None else ["-M", cluster]

"""The job script checks and the bash wrapper that StepUp Queue submits in its place.

The wrapper carries the `#SBATCH` lines of the user's script, runs the script, and writes its
exit code to `slurmjob.ret`. The user's script is never modified: it is an input of the step.
The wrapper is the bash template `wrapper.sh` next to this module, whose comments explain it;
`render_wrapper` fills its slots.

The wrapper, not the script, is SLURM's batch shell; the script runs in its process group.
Signals that SLURM sends to the batch shell alone (`#SBATCH --signal=B:USR1@60`,
`scancel -b -s USR1`) are passed on to the script, so that it can checkpoint as it would when
submitted with plain sbatch. SIGTERM is passed on unless SLURM says that the job no longer
runs: SLURM also sends it to every process of a job that it ends (scancel, time limit,
requeue), the script included, and the job then leaves no exit code. The exit code is written
only while the job log names the job (`clear_ret` holds the other end of that bargain).
"""

import contextlib
import fcntl
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from path import Path

from .joblog import LOG_NAME

__all__ = (
    "RET_NAME",
    "JobScript",
    "JobScriptError",
    "clear_ret",
    "read_job_script",
    "read_ret",
    "render_array_wrapper",
    "render_wrapper",
)

RET_NAME = "slurmjob.ret"

# Options of sbatch that StepUp Queue sets itself or cannot support, and why.
_FORBIDDEN_OPTIONS = {
    "--output": ("-o", "StepUp Queue sends the job's standard output to slurmjob.out"),
    "--error": ("-e", "StepUp Queue sends the job's standard error to slurmjob.err"),
    "--array": ("-a", "job arrays are not supported: use one sbatch() step per job"),
    "--chdir": ("-D", "the job must run in its own folder, where StepUp Queue expects its files"),
    "--comment": (None, "StepUp Queue tags each job with a comment to find it after a crash"),
    "--wait": ("-W", "the step itself waits for the job; sbatch must return once it is queued"),
    "--test-only": (None, "it makes sbatch check the script without submitting a job"),
}
_OTHER_SCHEDULERS = {"#PBS": "PBS/Torque", "#BSUB": "LSF", "#COBALT": "Cobalt", "#$": "SGE"}


class JobScriptError(ValueError):
    """A job script cannot be submitted. The message names the file, the problem and a fix."""


@dataclass(frozen=True)
class JobScript:
    """What StepUp Queue needs to know of a job script.

    Attributes
    ----------
    path
        The script, relative to the job folder (e.g. `slurmjob.sh`).
    directives
        The `#SBATCH` lines, as they are in the script.
    clusters
        The value of the `-M`/`--clusters` option, `None` when absent.
    command
        The shell command that runs the script in the wrapper.
    """

    path: Path
    directives: tuple[str, ...]
    clusters: str | None
    command: str

    @property
    def cluster(self) -> str | None:
        """The cluster sbatch submits to: with several in `-M`, the first is recorded."""
        return self.clusters.split(",")[0] if self.clusters else None


def read_job_script(
    path: str | Path, env: Mapping[str, str] | None = None, *, warn: bool = True
) -> JobScript:
    """Read and check a job script before anything is submitted.

    Parameters
    ----------
    path
        The job script, relative to the current (job) folder.
    env
        The environment in which sbatch will run. Its `SBATCH_CLUSTERS` or `SLURM_CLUSTERS`
        overrides the script's `-M`, as in sbatch.
    warn
        Print a warning for each `#SBATCH` line after the first command, which SLURM ignores
        (the step's output, which StepUp shows). `False` when the script was read before.

    Returns
    -------
    script
        The directives and the command to run it.

    Raises
    ------
    JobScriptError
        When the script is missing, has no shebang line, or has a directive that
        StepUp Queue cannot honour.
    """
    path = Path(path)
    where = Path.cwd() / path
    if not path.is_file():
        raise JobScriptError(f"The job script {where} does not exist. Create it, or fix the path.")
    try:
        # Bytes first: read_text would turn CRLF line breaks into LF unseen.
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise JobScriptError(
            f"The job script {where} is not UTF-8 text. Save it as UTF-8, "
            f"e.g. with `iconv -f latin1 -t utf-8`."
        ) from None
    if "\r" in text:
        # Plain sbatch refuses these too; in the wrapper they would break the shebang line.
        raise JobScriptError(
            f"The job script {where} has DOS/Windows line breaks (CRLF). "
            "Convert it to Unix line breaks, e.g. with `dos2unix`."
        )
    if text.startswith("\ufeff"):
        raise JobScriptError(
            f"The job script {where} starts with a byte order mark, which hides its shebang "
            "line. Save it as UTF-8 without a byte order mark."
        )
    lines = text.splitlines()
    if len(lines) == 0 or not lines[0].startswith("#!") or lines[0][2:].strip() == "":
        raise JobScriptError(
            f"The job script {where} does not start with a shebang line naming its "
            "interpreter. Add one as its first line, e.g. '#!/usr/bin/env bash' or "
            "'#!/usr/bin/env python3'."
        )
    directives = []
    clusters = None
    first_command = None
    for lineno, line in enumerate(lines[1:], 2):
        stripped = line.strip()
        # sbatch reads directives only up to the first command.
        if first_command is None and stripped != "" and not stripped.startswith("#"):
            first_command = lineno
        if first_command is not None:
            if warn and line.startswith("#SBATCH"):
                print(
                    f"Warning: the job script {where} has an #SBATCH line after its first "
                    f"command (line {first_command}), on line {lineno}: {line!r}. SLURM "
                    "ignores it: move it up, into the block of #SBATCH lines below the shebang "
                    "line."
                )
            continue
        for prefix, name in _OTHER_SCHEDULERS.items():
            if stripped.startswith(prefix) and (prefix != "#$" or stripped[2:3] in (" ", "")):
                raise JobScriptError(
                    f"The job script {where} has a {name} directive on line {lineno}: "
                    f"{stripped!r}. StepUp Queue submits to SLURM only: translate it to an "
                    "#SBATCH line or remove it."
                )
        # Like sbatch, ignore indented directives.
        if line.startswith("#SBATCH"):
            options = _check_directive(where, lineno, line)
            clusters = _find_clusters(options) or clusters
            directives.append(line)
    if env is not None:
        # sbatch(1): environment variables override the options in the batch script.
        clusters = env.get("SBATCH_CLUSTERS") or env.get("SLURM_CLUSTERS") or clusters
    return JobScript(path, tuple(directives), clusters, _run_command(path, lines[0]))


def _check_directive(where: Path, lineno: int, line: str) -> list[str]:
    try:
        words = shlex.split(line[len("#SBATCH") :], comments=True)
    except ValueError as exc:
        raise JobScriptError(
            f"The job script {where} has an #SBATCH line that cannot be parsed on line "
            f"{lineno}: {line!r} ({exc}). Fix its quotes."
        ) from None
    for word in words:
        for long, (short, why) in _FORBIDDEN_OPTIONS.items():
            name = word.split("=", 1)[0]
            is_long = name.startswith("--") and len(name) >= 4 and long.startswith(name)
            if is_long or (short is not None and word.startswith(short)):
                raise JobScriptError(
                    f"The job script {where} sets {long} on line {lineno}: {line!r}. "
                    f"Remove that option: {why}."
                )
    return words


def _find_clusters(words: list[str]) -> str | None:
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if name in ("--clusters", "--cluster"):
            return value if eq else (words[i + 1] if i + 1 < len(words) else None)
        if word == "-M":
            return words[i + 1] if i + 1 < len(words) else None
        if word.startswith("-M"):
            return word[2:]
    return None


def _run_command(path: Path, shebang: str) -> str:
    if os.access(path, os.X_OK):
        return f"./{shlex.quote(str(path))}"
    # Not executable (e.g. rendered from a template): run it with its interpreter, as the
    # kernel would, which passes the rest of the shebang line as one argument.
    interpreter, _, argument = shebang[2:].strip().partition(" ")
    words = [interpreter] + ([argument.strip()] if argument.strip() else []) + [str(path)]
    return shlex.join(words)


def render_wrapper(script: JobScript, token: str | None = None) -> str:
    """Return the bash wrapper that is submitted instead of the user's script.

    The wrapper is the template `wrapper.sh` of this package with its slots filled.

    Parameters
    ----------
    script
        The checked job script.
    token
        The token of the submission (the job's comment), which the job log records in its
        `Submitting` record until it records the job id. `None` for a wrapper run by hand.

    Returns
    -------
    wrapper
        The text of the wrapper, to be passed to sbatch on standard input.
    """
    return _render(script.directives, token, "", script.command)


def render_array_wrapper(
    directives: tuple[str, ...], folders: list[str], commands: list[str], token: str, ended: str
) -> str:
    """Return the bash wrapper of a job array (`sbatch_array`): task N runs in `folders[N]`.

    Each task changes to its job folder and runs that folder's script there, as the wrapper
    of a single job does, with the same exit code file, log check and signal forwarding.

    Parameters
    ----------
    directives
        The `#SBATCH` lines, the same in the scripts of all folders.
    folders
        The absolute job folder of each task, by task index.
    commands
        The command that runs the script of each folder (`JobScript.command`), by task index.
    token
        The token of the submission (the array job's comment).
    ended
        The folder in which each task, as it ends, makes an empty file named as SLURM names
        the task (`ARRAYID_N`): the step lists it to notice the end of a task without asking
        SLURM or reading the exit code file of every folder.
    """
    prelude = (
        "# The job folder of this array task and the command that runs its script.\n"
        f"folders=({' '.join(map(shlex.quote, folders))})\n"
        f"commands=({' '.join(map(shlex.quote, commands))})\n"
        'cd -- "${folders[SLURM_ARRAY_TASK_ID]}" || exit 1\n'
        'eval "set -- ${commands[SLURM_ARRAY_TASK_ID]}"\n'
    )
    epilogue = (
        f"# This task ended: the step notices it at its next look at {ended}.\n"
        f': > {shlex.quote(ended)}/"${{SLURM_ARRAY_JOB_ID:-}}_${{SLURM_ARRAY_TASK_ID:-}}" '
        "2> /dev/null\n"
    )
    return _render(directives, token, prelude, '"$@"', epilogue)


def _render(
    directives: tuple[str, ...], token: str | None, prelude: str, command: str, epilogue: str = ""
) -> str:
    slots = {
        "#@DIRECTIVES@\n": "".join(f"{line}\n" for line in directives),
        "@RET@": shlex.quote(RET_NAME),
        "@LOG@": shlex.quote(LOG_NAME),
        "@TOKEN@": shlex.quote(token or ""),
        "#@PRELUDE@\n": prelude,
        "@COMMAND@": command,
        "#@EPILOGUE@\n": epilogue,
    }
    template = resources.files(__package__).joinpath("wrapper.sh").read_text(encoding="utf-8")
    # One pass, so that a slot's value is never searched for slots.
    return re.sub("|".join(map(re.escape, slots)), lambda match: slots[match[0]], template)


def clear_ret(folder: str | Path = "."):
    """Empty `slurmjob.ret` under the lock that the wrapper takes to write it.

    Call it after the job log was rewritten for a new submission: a job that the log no longer
    names then cannot write its exit code into the file afterwards (see `wrapper.sh`).

    Parameters
    ----------
    folder
        The job folder.
    """
    with open(Path(folder) / RET_NAME, "a", encoding="utf-8") as fh:
        # On a file system without locks, the wrapper writes without a lock too.
        with contextlib.suppress(OSError):
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.truncate(0)


def read_ret(folder: str | Path = ".") -> int | str | None:
    """Read the exit code that the wrapper wrote in a job folder.

    Parameters
    ----------
    folder
        The job folder.

    Returns
    -------
    code
        The exit code; `None` when `slurmjob.ret` is absent or empty (the job did not end,
        or ended without running the script to its end); the text when it is no integer.
    """
    try:
        text = (Path(folder) / RET_NAME).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return text

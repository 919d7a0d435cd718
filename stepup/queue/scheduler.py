"""Everything that talks to SLURM: sbatch, scancel, squeue, scontrol and sacct.

Job states are asked through a cache file shared by all waiting steps of all workflows of a
user, one file per cluster, guarded by an exclusive file lock. Whoever finds the cached answer
older than `STEPUP_SBATCH_CACHE_TIMEOUT` runs the query and writes the new answer, so the
number of status queries per timeout does not grow with the number of waiting jobs.

A cache file starts with the header line
``v1 datetime=<26-character ISO datetime> returncode=<+NNN>``
followed by the command's standard output.
"""

import fcntl
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from path import Path

from .config import Config, ConfigError, QueryMethod

__all__ = (
    "CommandResult",
    "Snapshot",
    "StateCache",
    "cancel",
    "find_by_token",
    "format_cache",
    "is_transient",
    "match_submission",
    "parse_cache",
    "parse_sacct",
    "parse_scontrol",
    "parse_squeue",
    "run_command",
    "sacct_state",
    "squeue_command",
    "submit",
)

SQUEUE_FORMAT = "%i|%T|%k"
# WorkDir last: it is the one field of our jobs that may contain a `|`.
SACCT_FIELDS = ("JobIDRaw", "State", "Submit", "Comment", "WorkDir")
# How much earlier than our Submitting record sacct may date the job's submission: it shows
# whole seconds, and the controller's clock may be a little behind. Short, so that an older
# job from the same folder is not taken for this one.
CLOCK_SLACK = timedelta(seconds=10)
MAX_SCANCEL_IDS = 100

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

_RE_HEADER = re.compile(r"v1 datetime=(\S{26}) returncode=([+-][0-9]{3,})")


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
    env: dict[str, str] | None = None,
) -> CommandResult:
    """Run a command without a shell (or with bash, when `args` is a string).

    A command that runs longer than `timeout` seconds is killed with its process group,
    so a hanging SLURM client never blocks a step forever. `env` replaces the environment.
    """
    shell = isinstance(args, str)
    command = args if shell else shlex.join(args)
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
            env=env,
            start_new_session=True,
        )
    except FileNotFoundError:
        return CommandResult(command, 127, "", f"command not found: {args[0]}")
    try:
        stdout, stderr = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return CommandResult(command, -9, stdout, f"{stderr}timed out after {timeout:g} s")
    return CommandResult(command, proc.returncode, stdout, stderr)


def is_transient(result: CommandResult) -> bool:
    """True when a failed command is worth trying again later."""
    if result.returncode == -9:
        return True
    text = (result.stderr + result.stdout).lower()
    if "known by database" in text:
        # A misspelled -M cluster: SLURM adds "can't be reached now", but retrying won't help.
        return False
    return any(part in text for part in _TRANSIENT_ERRORS)


def submit(
    wrapper: str, *, rc: str | None, token: str, timeout: float, env: dict[str, str]
) -> CommandResult:
    """Submit a wrapper script with `sbatch --parsable`, tagged with a token as its comment.

    Parameters
    ----------
    wrapper
        The job script, passed to sbatch on standard input.
    rc
        A shell command to run before sbatch (e.g. to load modules), or `None`.
    token
        The unique tag of this submission, stored as the job's comment.
    timeout
        Seconds after which sbatch is killed.
    env
        The environment of sbatch (and rc); the job inherits it.
    """
    args = ["sbatch", "--parsable", "-o", "slurmjob.out", "-e", "slurmjob.err"]
    args.append(f"--comment={token}")
    if rc is None:
        return run_command(args, stdin=wrapper, timeout=timeout, env=env)
    # The braces keep every command of rc away from the wrapper on stdin, not just the last.
    command = f"{{ {rc}\n}} < /dev/null && {shlex.join(args)}"
    return run_command(command, stdin=wrapper, timeout=timeout, env=env)


def _cluster_args(cluster: str | None) -> list[str]:
    return [] if cluster is None else ["-M", cluster]


def squeue_command(cluster: str | None) -> list[str]:
    """The query for the states and comments of all of this user's jobs SLURM still knows."""
    return ["squeue", *_cluster_args(cluster), "--me", "-t", "all", "-h", "-o", SQUEUE_FORMAT]


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cancel(job_ids: Iterable[int], cluster: str | None, timeout: float) -> list[CommandResult]:
    """Cancel jobs with scancel, at most 100 job ids per call.

    Returns
    -------
    results
        One result per scancel call.
    """
    ids = sorted(job_ids)
    return [
        run_command(["scancel", *_cluster_args(cluster), *map(str, chunk)], timeout=timeout)
        for chunk in _chunks(ids, MAX_SCANCEL_IDS)
    ]


@dataclass
class Snapshot:
    """What SLURM said about the jobs at one moment.

    Attributes
    ----------
    time
        When the query ran (local time).
    returncode
        The exit code of the query; the states are only meaningful when it is zero.
    states
        Job id → SLURM state, for every job listed.
    comments
        Job id → comment, for jobs that have one.
    error
        What the command printed on standard error.
    """

    time: datetime
    returncode: int
    states: dict[int, str] = field(default_factory=dict)
    comments: dict[int, str] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def parse_squeue(text: str) -> tuple[dict[int, str], dict[int, str]]:
    """Parse `squeue -h -o '%i|%T|%k'` output (a `CLUSTER:` line from -M is skipped).

    Returns
    -------
    states, comments
        Job id → state and job id → comment. Array and het-job entries are skipped.
    """
    states = {}
    comments = {}
    for line in text.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        job_id = int(parts[0])
        states[job_id] = parts[1]
        if parts[2] not in ("", "(null)"):
            comments[job_id] = parts[2]
    return states, comments


_RE_SCONTROL_JOB = re.compile(r"^JobId=([0-9]+)\s", re.MULTILINE)
_RE_SCONTROL_STATE = re.compile(r"\bJobState=([A-Z_]+)")
_RE_SCONTROL_COMMENT = re.compile(r"\bComment=(\S+)")


def parse_scontrol(text: str) -> tuple[dict[int, str], dict[int, str]]:
    """Parse `scontrol show job` output, in the multi-line or the one-line (-o) format.

    Returns
    -------
    states, comments
        Job id → state and job id → comment.
    """
    states = {}
    comments = {}
    matches = list(_RE_SCONTROL_JOB.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        block = text[match.start() : end]
        job_id = int(match.group(1))
        state = _RE_SCONTROL_STATE.search(block)
        if state is not None:
            states[job_id] = state.group(1)
        comment = _RE_SCONTROL_COMMENT.search(block)
        if comment is not None:
            comments[job_id] = comment.group(1)
    return states, comments


def parse_sacct(text: str, fields: tuple[str, ...] = SACCT_FIELDS) -> dict[int, dict[str, str]]:
    """Parse `sacct -X -n -P -o <fields>` output; the first field must be `JobIDRaw`.

    The last field takes the rest of the line, so it may contain `|`. Fields missing at the
    end of a line are empty. A state like `CANCELLED by 0` becomes `CANCELLED`, an empty one
    `UNKNOWN`. Lines of job steps or array tasks, and headers, are skipped.

    Returns
    -------
    jobs
        Job id → {field name: value} for the fields after `JobIDRaw`.
    """
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|", len(fields) - 1)
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        parts += [""] * (len(fields) - len(parts))
        record = dict(zip(fields[1:], parts[1:], strict=True))
        if "State" in record:
            record["State"] = record["State"].split()[0] if record["State"].strip() else "UNKNOWN"
        jobs[int(parts[0])] = record
    return jobs


def format_cache(time: datetime, returncode: int, output: str) -> str:
    """Return the contents of a cache file: header line and command output."""
    stamp = time.isoformat(timespec="microseconds")
    return f"v1 datetime={stamp} returncode={returncode:+04d}\n{output}"


def parse_cache(text: str) -> tuple[datetime, int, str] | None:
    """Parse the contents of a cache file.

    Returns
    -------
    cached
        (time, returncode, output), or `None` when the header is missing or invalid
        (empty, truncated or corrupt file, or a format this version does not know).
    """
    header, newline, output = text.partition("\n")
    match = _RE_HEADER.fullmatch(header)
    if match is None or newline == "":
        return None
    try:
        time = datetime.fromisoformat(match.group(1))
    except ValueError:
        return None
    return time, int(match.group(2)), output


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class StateCache:
    """The shared, file-based cache of SLURM's answer about job states, for one cluster.

    Parameters
    ----------
    config
        The settings: cache folder, timeout, query method and command timeout.
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    """

    def __init__(self, config: Config, cluster: str | None):
        self.config = config
        self.cluster = cluster
        stem = "sbatch_wait" if config.query is QueryMethod.SCONTROL else "squeue_me"
        suffix = "" if cluster is None else f".{cluster}"
        self.path = config.cache_dir / f"{stem}{suffix}.out"

    def check_writable(self):
        """Raise a ConfigError with a fix when the cache folder cannot be used."""
        try:
            self.config.cache_dir.makedirs_p()
            with _locked(self.path + ".lock"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"Cannot use the shared scheduler cache in {self.config.cache_dir}: {exc}. "
                "Make that folder writable, or set STEPUP_QUEUE_CACHE_DIR (or XDG_CACHE_HOME) "
                "to a writable folder."
            ) from None

    def command(self) -> list[str]:
        """The status query this cache holds the answer of."""
        if self.config.query is QueryMethod.SCONTROL:
            cluster = [] if self.cluster is None else [f"--cluster={self.cluster}"]
            return ["scontrol", "show", "job", *cluster]
        return squeue_command(self.cluster)

    def snapshot(self) -> Snapshot:
        """Return SLURM's answer, from the cache when it is younger than the timeout."""
        self.config.cache_dir.makedirs_p()
        with _locked(self.path + ".lock"):
            cached = self._read()
            now = datetime.now()
            if cached is None or not (
                timedelta(0) <= now - cached[0] <= timedelta(seconds=self.config.cache_timeout)
            ):
                cached = self._query()
        time, returncode, output = cached
        if self.config.query is QueryMethod.SCONTROL:
            states, comments = parse_scontrol(output)
        else:
            states, comments = parse_squeue(output)
        error = "" if returncode == 0 else output
        return Snapshot(time, returncode, states, comments, error)

    def _read(self) -> tuple[datetime, int, str] | None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        return parse_cache(text)

    def _query(self) -> tuple[datetime, int, str]:
        time = datetime.now()
        result = run_command(self.command(), timeout=self.config.command_timeout)
        # A failed query is cached as well: its stderr replaces the output, so that all
        # waiting steps back off instead of hammering a struggling controller.
        output = result.stdout if result.returncode == 0 else result.stderr
        tmp = self.path + f".{os.getpid()}.tmp"
        tmp.write_text(format_cache(time, result.returncode, output), encoding="utf-8")
        # Atomic replacement: a reader never sees a half-written answer.
        tmp.replace(self.path)
        return time, result.returncode, output


def sacct_state(job_id: int, cluster: str | None, timeout: float) -> str | None:
    """Ask the accounting database for one job's state; `None` when it cannot tell."""
    args = ["sacct", *_cluster_args(cluster), "-X", "-n", "-P", "-j", str(job_id)]
    result = run_command([*args, "-o", "JobIDRaw,State"], timeout=timeout)
    if result.returncode != 0:
        return None
    entry = parse_sacct(result.stdout, ("JobIDRaw", "State")).get(job_id)
    return None if entry is None else entry["State"]


def find_by_token(
    token: str | None, clusters: str | None, since: datetime, config: Config
) -> tuple[bool, int | None]:
    """Look for the job of an interrupted submission, first in squeue, then in sacct.

    squeue shows the token (the job's comment) of every job that slurmctld still holds.
    sacct shows comments only where the accounting stores them
    (`AccountingStoreFlags=job_comment`, not SLURM's default); elsewhere the job is the one,
    with no comment, submitted from the current folder after the `Submitting` record.

    Parameters
    ----------
    token
        The comment given to the job at submission; `None` for a bare `Submitting` record of
        the original StepUp Queue 2.x, which tags no job: then only the folder and the time
        tell the job.
    clusters
        The value of the script's `-M` option, `None` when it has none.
    since
        The time of the `Submitting` record.
    config
        The settings (for the command timeout).

    Returns
    -------
    certain, job_id
        `certain` is False when SLURM could not be asked; `job_id` is None when
        SLURM answered and no job carries the token.

    Raises
    ------
    ValueError
        When sacct lists several jobs without comment that may be this submission's.
    """
    squeue = run_command(squeue_command(clusters), timeout=config.command_timeout)
    if squeue.returncode != 0:
        return False, None
    listed, comments = parse_squeue(squeue.stdout)
    for job_id, comment in comments.items():
        if comment == token:
            return True, job_id
    # squeue shows the comment of every job it lists, so none of those carries our token.
    # A submission without token can only rule out the listed jobs that have a comment.
    excluded = set(listed) if token is not None else set(comments)
    start = (since - CLOCK_SLACK).strftime("%Y-%m-%dT%H:%M:%S")
    args = ["sacct", *_cluster_args(clusters), "-X", "-n", "-P", "-S", start]
    sacct = run_command([*args, "-o", ",".join(SACCT_FIELDS)], timeout=config.command_timeout)
    if sacct.returncode != 0:
        # slurmdbd down: ask again later. No accounting at all: squeue's list has to do.
        return not is_transient(sacct), None
    records = {
        job_id: record
        for job_id, record in parse_sacct(sacct.stdout).items()
        if job_id not in excluded
    }
    candidates = match_submission(records, token, os.getcwd(), since)
    if len(candidates) > 1:
        listed = ", ".join(map(str, candidates))
        ended = ", all ended" if token is not None else ""
        raise ValueError(
            f"sacct lists several jobs without a comment submitted from {os.getcwd()} "
            f"since {since - CLOCK_SLACK:%Y-%m-%dT%H:%M:%S} ({listed}){ended}; StepUp "
            "Queue cannot tell which one its interrupted submission made. Make sure none of "
            "them is still needed (scancel), then remove slurmjob.log in this folder to submit "
            "the job afresh."
        )
    return True, candidates[0] if candidates else None


def match_submission(
    records: dict[int, dict[str, str]], token: str | None, workdir: str, since: datetime
) -> list[int]:
    """Select the jobs in sacct records that a submission tagged with `token` made.

    Parameters
    ----------
    records
        Parsed `sacct` output with the fields of `SACCT_FIELDS`.
    token
        The comment given to the job at submission.
    workdir
        The folder sbatch was run from.
    since
        The time of the `Submitting` record.

    Returns
    -------
    job_ids
        The jobs whose comment is the token; if there are none, the jobs without comment
        submitted from `workdir` no earlier than `since` minus `CLOCK_SLACK`.
    """
    tagged = [job_id for job_id, record in records.items() if token and record["Comment"] == token]
    if tagged:
        return tagged
    earliest = since - CLOCK_SLACK
    return sorted(
        job_id
        for job_id, record in records.items()
        if record["Comment"] == ""
        and record["WorkDir"] == workdir
        and _parse_time(record["Submit"]) >= earliest
    )


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return datetime.min

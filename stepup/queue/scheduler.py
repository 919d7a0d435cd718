"""Everything that talks to SLURM: sbatch, scancel, squeue, scontrol and sacct.

Every command runs in an environment without the user's settings that change what it prints
(see `run_command`), so a line in a shell profile cannot hide jobs or change the times we read.

Job states are asked through a cache file shared by all waiting steps of all workflows of a
user, one file per cluster (named as SLURM names it), guarded by an exclusive file lock.
Whoever finds the cached answer older than `STEPUP_SBATCH_CACHE_TIMEOUT` runs the query and
writes the new answer, so the number of status queries per timeout does not grow with the
number of waiting jobs.

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
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, TypeVar

from path import Path

from .config import Config, ConfigError, QueryMethod
from .states import is_active

_Parsed = TypeVar("_Parsed")

__all__ = (
    "CommandResult",
    "Listing",
    "Snapshot",
    "StateCache",
    "UnreadableOutputError",
    "cancel",
    "environment_after_rc",
    "find_by_token",
    "foreign_workdir",
    "format_cache",
    "is_transient",
    "last_run",
    "match_submission",
    "parse_cache",
    "parse_sacct",
    "parse_sacct_runs",
    "parse_scontrol",
    "parse_squeue",
    "query_jobs",
    "requeue_exit_codes",
    "run_command",
    "sacct_records",
    "show_config",
    "show_records",
    "squeue_command",
    "stranger",
    "submit",
)

# Comment first, as in the cache files of StepUp Queue 1.1.0 (see parse_squeue).
SQUEUE_FORMAT = "%i|%T|%k|%r|%Z"
# WorkDir last: it is the one field of our jobs that may contain a `|`.
SACCT_FIELDS = ("JobIDRaw", "State", "Submit", "Comment", "WorkDir")
# How much earlier than our Submitting record sacct may date the job's submission: it shows
# whole seconds, and the controller's clock may be a little behind. Short, so that an older
# job from the same folder is not taken for this one.
CLOCK_SLACK = timedelta(seconds=10)
MAX_SCANCEL_IDS = 100
# The SACCT_FIELDS of the jobs that squeue lists. slurmctld knows a job as soon as sbatch
# returns, sacct only once slurmctld has sent it to the accounting database (a second later
# here, much later on a busy cluster).
_SQUEUE_AS_SACCT = "%i|%T|%V|%k|%Z"

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
_RE_CLUSTER_NAME = re.compile(r"^ClusterName\s*=\s*(\S+)\s*$", re.MULTILINE)

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


def submit(
    wrapper: str, *, rc: str | None, token: str, timeout: float, env: dict[str, str]
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
        The environment of sbatch (and rc); the job inherits it (see `_environment`).
    """
    args = ["sbatch", "--parsable", "-o", "slurmjob.out", "-e", "slurmjob.err"]
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


class Listing(NamedTuple):
    """What a status query says about each job it lists, job id → value.

    Attributes
    ----------
    states
        The SLURM state of every job listed.
    comments
        The comment of jobs that have one.
    reasons
        Why a pending job waits (squeue's `%r`, e.g. `Priority`, `PartitionTimeLimit`).
    workdirs
        The folder each job runs in.
    """

    states: dict[int, str]
    comments: dict[int, str]
    reasons: dict[int, str]
    workdirs: dict[int, str]

    @classmethod
    def empty(cls) -> "Listing":
        return cls({}, {}, {}, {})

    def active(self) -> list[int]:
        """The jobs listed that have not ended: those that count against a submit limit."""
        return sorted(job_id for job_id, state in self.states.items() if is_active(state))


@dataclass
class Snapshot:
    """What SLURM said about the jobs at one moment.

    Attributes
    ----------
    time
        When the query ran (local time).
    returncode
        The exit code of the query; the listing is only meaningful when it is zero.
    listing
        What SLURM said about each job it listed.
    error
        What the command printed on standard error.
    """

    time: datetime
    returncode: int
    listing: Listing = field(default_factory=Listing.empty)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def states(self) -> dict[int, str]:
        return self.listing.states

    @property
    def comments(self) -> dict[int, str]:
        return self.listing.comments


class UnreadableOutputError(ValueError):
    """SLURM printed a line that StepUp Queue cannot read: the answer is no proof of anything."""

    def __init__(self, line: str):
        super().__init__(f"SLURM printed a line that StepUp Queue cannot read: {line!r}")


def _job_id(line: str, field: str) -> int | None:
    """The job of a line of squeue or sacct, from its job id field.

    The components `ID+N` of a heterogeneous job count as job `ID`. Array tasks (`ID_N`,
    `ID_[N-M]`), no job of StepUp Queue, job steps (`ID.batch`) and a header line give `None`.
    Anything else raises UnreadableOutputError.
    """
    if field in ("JOBID", "JobIDRaw"):
        return None
    match = _RE_JOB_ID.fullmatch(field)
    if match is None:
        raise UnreadableOutputError(line)
    return None if match.group(2) else int(match.group(1))


_RE_JOB_ID = re.compile(r"([0-9]+)(?:\+[0-9]+)?((?:_[0-9\[]|\.)[^|]*)?")


def _readable(parse: Callable[..., _Parsed], text: str, *args) -> _Parsed | None:
    """`parse(text, *args)`; `None` when SLURM printed a line that cannot be read."""
    try:
        return parse(text, *args)
    except UnreadableOutputError:
        return None


def parse_squeue(text: str) -> Listing:
    """Parse `squeue -h -o '%i|%T|%k|%r|%Z'` output (a `CLUSTER:` line from -M is skipped).

    A comment or a work directory may contain `|`, a pending reason never does: the work
    directory starts at the first `|REASON|/`. Lines with only `%i|%T|%k` (the cache files of
    StepUp Queue 1.1.0) give no reason or work directory. The components `ID+N` of a
    heterogeneous job count as job `ID`, which has not ended while one of them has not. Array
    tasks are skipped.

    Raises
    ------
    UnreadableOutputError
        For any other line: a job it hides must not be taken for a job that ended.
    """
    listing = Listing.empty()
    for line in map(str.strip, text.splitlines()):
        if line == "" or line.startswith("CLUSTER: "):
            continue
        match = _RE_SQUEUE_LINE.fullmatch(line)
        if match is not None:
            job, state, comment, reason, workdir = match.groups()
        else:
            job, _, rest = line.partition("|")
            state, bar, comment = rest.partition("|")
            reason = workdir = ""
            if bar == "" or state == "":
                raise UnreadableOutputError(line)
        job_id = _job_id(line, job)
        if job_id is None:
            continue
        if not is_active(listing.states.get(job_id)):
            listing.states[job_id] = state
            if reason not in ("", "None"):
                listing.reasons[job_id] = reason
        if comment not in ("", "(null)"):
            listing.comments[job_id] = comment
        if workdir != "":
            listing.workdirs[job_id] = workdir
    return listing


_RE_SQUEUE_LINE = re.compile(r"([^|]*)\|([^|]*)\|(.*?)\|([^|]*)\|(/.*)")


_RE_SCONTROL_JOB = re.compile(r"^JobId=([0-9]+)\s", re.MULTILINE)
_RE_SCONTROL_UID = re.compile(r"\bUserId=\S*?\(([0-9]+)\)")
_RE_SCONTROL_FIELDS = {
    "states": re.compile(r"\bJobState=([A-Z_]+)"),
    "comments": re.compile(r"\bComment=(\S+)"),
    "reasons": re.compile(r"\bReason=([A-Za-z0-9_]+)"),
    "workdirs": re.compile(r"\bWorkDir=(\S+)"),
}


def parse_scontrol(text: str) -> Listing:
    """Parse `scontrol show job` output, in the multi-line or the one-line (-o) format.

    The jobs of other users (`UserId`) are left out, as `squeue --me` leaves them out: they
    must not count against the user's submit limit.

    Raises
    ------
    UnreadableOutputError
        When the text before the first job is not empty or `No jobs in the system`, or when
        a job has no state.
    """
    listing = Listing.empty()
    matches = list(_RE_SCONTROL_JOB.finditer(text))
    head = text[: matches[0].start()] if matches else text
    if head.strip() not in ("", "No jobs in the system"):
        raise UnreadableOutputError(head.strip().splitlines()[0])
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        block = text[match.start() : end]
        job_id = int(match.group(1))
        if _RE_SCONTROL_FIELDS["states"].search(block) is None:
            raise UnreadableOutputError(block.splitlines()[0])
        user = _RE_SCONTROL_UID.search(block)
        if user is not None and int(user.group(1)) != os.getuid():
            continue
        for name, pattern in _RE_SCONTROL_FIELDS.items():
            found = pattern.search(block)
            if found is not None and found.group(1) != "None":
                getattr(listing, name)[job_id] = found.group(1)
    return listing


def parse_sacct(text: str, fields: tuple[str, ...] = SACCT_FIELDS) -> dict[int, dict[str, str]]:
    """Parse `sacct -X -n -P -o <fields>` output; the first field must be `JobIDRaw`.

    Also reads squeue's output in the same fields, where the job id field is squeue's `%i`.
    Of a job with several records (`sacct -D`), the last one is kept: see `parse_sacct_runs`.

    Returns
    -------
    jobs
        Job id → {field name: value} for the fields after `JobIDRaw`.
    """
    return {job_id: runs[-1] for job_id, runs in parse_sacct_runs(text, fields).items()}


def parse_sacct_runs(
    text: str, fields: tuple[str, ...] = SACCT_FIELDS
) -> dict[int, list[dict[str, str]]]:
    """Parse `sacct -X -n -P -o <fields>` output, with every record of a job id (`-D`).

    The first field must be `JobIDRaw`. The last field takes the rest of the line, so it may
    contain `|`. Fields missing at the end of a line are empty. A state like `CANCELLED by 0`
    becomes `CANCELLED`, an empty one `UNKNOWN`. Array tasks are skipped (see `parse_squeue`).

    Returns
    -------
    jobs
        Job id → the records of that id in the order printed, each {field name: value} for
        the fields after `JobIDRaw`.

    Raises
    ------
    UnreadableOutputError
        For a line that holds no job id and a field after it.
    """
    jobs: dict[int, list[dict[str, str]]] = {}
    for line in map(str.strip, text.splitlines()):
        if line == "":
            continue
        parts = line.split("|", len(fields) - 1)
        if len(parts) < 2:
            raise UnreadableOutputError(line)
        job_id = _job_id(line, parts[0])
        if job_id is None:
            continue
        parts += [""] * (len(fields) - len(parts))
        record = dict(zip(fields[1:], parts[1:], strict=True))
        if "State" in record:
            record["State"] = record["State"].split()[0] if record["State"].strip() else "UNKNOWN"
        jobs.setdefault(job_id, []).append(record)
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
def _locked(path: Path, timeout: float) -> Iterator[bool]:
    """Hold an exclusive lock on `path`, waiting for it at most `timeout` seconds.

    Yields whether the lock is held. A blocking flock takes no timeout, and only the main
    thread could interrupt it with a signal (StepUp 3 runs steps in other threads): the lock
    is tried at growing intervals instead.
    """
    with open(path, "a") as fh:
        locked = _try_lock(fh.fileno(), timeout)
        try:
            yield locked
        finally:
            if locked:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _try_lock(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.5)


class StateCache:
    """The shared, file-based cache of SLURM's answer about job states, for one cluster.

    The file is named after the cluster as SLURM names it: the `-M` value, or the ClusterName
    of the default cluster, which SLURM is asked once (see `locate`). So SLURM installations
    that share a home folder, or cluster modules that change the default cluster, never
    take each other's answers.

    Parameters
    ----------
    config
        The settings: cache folder, timeout, query method and command timeout.
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.

    Attributes
    ----------
    path
        The cache file; `None` until the name of the default cluster is known.
    """

    def __init__(self, config: Config, cluster: str | None):
        self.config = config
        self.cluster = cluster
        self._stem = "sbatch_wait" if config.query is QueryMethod.SCONTROL else "squeue_me"
        self.path = None if cluster is None else config.cache_dir / f"{self._stem}.{cluster}.out"

    def locate(self) -> str | None:
        """Set `path`; for the default cluster, ask SLURM its name the first time.

        Returns
        -------
        failure
            Why SLURM could not name the default cluster, `None` once `path` is set.
        """
        if self.path is None:
            result = show_config(None, self.config.command_timeout)
            if result.returncode != 0:
                return result.describe()
            match = _RE_CLUSTER_NAME.search(result.stdout)
            if match is None:
                return f"`{result.command}` names no ClusterName."
            self.path = self.config.cache_dir / f"{self._stem}.default.{match.group(1)}.out"
        return None

    def check_writable(self):
        """Raise a ConfigError with a fix when the cache folder cannot be used."""
        try:
            self.config.cache_dir.makedirs_p()
            # A file of its own, which no other process locks and which leaves nothing behind.
            with tempfile.TemporaryFile(dir=self.config.cache_dir) as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
        """Return SLURM's answer, from the cache when it is younger than the timeout.

        A fresh answer is read without the lock: the file is replaced atomically. A stale one
        is renewed under the lock, whose holder queries at most the command timeout long.
        A process stopped while it holds the lock (e.g. with Ctrl-Z) must not stop every step
        of the user: after waiting that long, the step asks SLURM without the lock.
        """
        failure = self.locate()
        if failure is not None:
            # Without the cluster's name, the answer could be filed as another cluster's.
            return Snapshot(datetime.now(), 1, error=failure)
        self.config.cache_dir.makedirs_p()
        cached = self._fresh()
        if cached is None:
            lock = self.path + ".lock"
            timeout = self.config.command_timeout
            with _locked(lock, timeout) as locked:
                if not locked and self.config.debug:
                    print(f"{lock} stayed locked for {timeout:g} s: asking SLURM without the lock")
                cached = self._fresh() or self._query()
        stamp, returncode, output = cached
        if returncode != 0:
            return Snapshot(stamp, returncode, error=output)
        parse = parse_scontrol if self.config.query is QueryMethod.SCONTROL else parse_squeue
        try:
            return Snapshot(stamp, returncode, parse(output))
        except UnreadableOutputError as exc:
            return Snapshot(stamp, 1, error=str(exc))

    @contextmanager
    def submit_turn(self) -> Iterator[None]:
        """Take turns with the other steps that wait for room under a submit limit.

        The lock is held while a step checks for room and submits, so that one freed slot
        is taken by one step, not raced for by all.
        """
        if self.locate() is not None:
            yield
            return
        self.config.cache_dir.makedirs_p()
        with _locked(self.path + ".submit.lock", self.config.command_timeout):
            yield

    def record_submission(self, job_id: int, token: str):
        """Add a job just submitted to the cached answer, as pending in the current folder.

        The steps that wait for room count it at once, instead of one cache period later.
        """
        if self.locate() is not None:
            return
        with _locked(self.path + ".lock", self.config.command_timeout) as locked:
            cached = self._fresh() if locked else None
            if cached is None or cached[1] != 0:
                return
            stamp, returncode, output = cached
            if self.config.query is QueryMethod.SCONTROL:
                line = f"JobId={job_id} JobState=PENDING Comment={token} WorkDir={os.getcwd()}"
            else:
                line = f"{job_id}|PENDING|{token}|None|{os.getcwd()}"
            self._write(stamp, returncode, f"{output}{line}\n")

    def _fresh(self) -> tuple[datetime, int, str] | None:
        """The cached answer, when it is younger than the cache timeout."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        cached = parse_cache(text)
        if cached is None:
            return None
        age = datetime.now() - cached[0]
        max_age = timedelta(seconds=self.config.cache_timeout)
        return cached if timedelta(0) <= age <= max_age else None

    def _query(self) -> tuple[datetime, int, str]:
        stamp = datetime.now()
        result = run_command(self.command(), timeout=self.config.command_timeout)
        # A failed query is cached as well: its stderr replaces the output, so that all
        # waiting steps back off instead of hammering a struggling controller.
        output = result.stdout if result.returncode == 0 else result.stderr
        self._write(stamp, result.returncode, output)
        return stamp, result.returncode, output

    def _write(self, stamp: datetime, returncode: int, output: str):
        tmp = self.path + f".{os.getpid()}.tmp"
        tmp.write_text(format_cache(stamp, returncode, output), encoding="utf-8")
        # Atomic replacement: a reader never sees a half-written answer.
        tmp.replace(self.path)


def query_jobs(job_ids: Iterable[int], cluster: str | None, timeout: float) -> Listing | None:
    """Ask squeue now, not through the cache, about some of the user's jobs.

    Returns
    -------
    listing
        What squeue lists of these jobs; `None` when it failed.
    """
    ids = ",".join(map(str, sorted(job_ids)))
    result = run_command([*squeue_command(cluster), "-j", ids], timeout=timeout)
    # squeue fails for ids it no longer knows at all, which is an answer as well.
    if result.returncode != 0 and "invalid job id" not in result.stderr.lower():
        return None
    return _readable(parse_squeue, result.stdout)


# User before WorkDir, the field that takes the rest of the line; End tells the runs of a
# requeued job (see `last_run`).
ACCOUNT_FIELDS = ("JobIDRaw", "State", "Submit", "End", "User", "WorkDir")
# The fields `stepup jobs` shows: those of ACCOUNT_FIELDS (for `stranger`), times and exit code.
HISTORY_FIELDS = ("JobIDRaw", "State", "ExitCode", "Submit", "Start", "End", "User", "WorkDir")


def sacct_records(
    job_ids: Iterable[int],
    cluster: str | None,
    timeout: float,
    fields: tuple[str, ...] = ACCOUNT_FIELDS,
) -> dict[int, dict[str, str]] | None:
    """Ask the accounting database about jobs of any user, in one call.

    Every run of a requeued job has a record of its own, each with the time of its requeue as
    its `Submit` (sacct -D lists them all). A job's record is that of its last run, with the
    `Submit` of its first run added as `FirstSubmit`: that time does not change on requeue.

    Parameters
    ----------
    job_ids
        The jobs to look up.
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which sacct is killed.
    fields
        The fields to ask, `JobIDRaw` first and `WorkDir` last: `ACCOUNT_FIELDS`, or
        `HISTORY_FIELDS` (also times as `YYYY-MM-DDTHH:MM:SS`, or `Unknown`/`None` when not yet
        known, and the exit code).

    Returns
    -------
    records
        Job id → the fields after `JobIDRaw` and `FirstSubmit`, for the jobs sacct knows;
        `None` when sacct failed.
    """
    ids = ",".join(map(str, sorted(job_ids)))
    args = ["sacct", *_cluster_args(cluster), "-X", "-D", "-n", "-P", "-a", "-j", ids]
    result = run_command([*args, "-o", ",".join(fields)], timeout=timeout)
    if result.returncode != 0:
        return None
    runs = _readable(parse_sacct_runs, result.stdout, fields)
    return None if runs is None else {job_id: last_run(rs) for job_id, rs in runs.items()}


def last_run(runs: list[dict[str, str]]) -> dict[str, str]:
    """The record of a job's last run, with `FirstSubmit`: the `Submit` of its first run.

    A run that SLURM requeued ends when the next one is submitted. An earlier record of the
    same id that ended at another time (or in another folder) is an older job whose id was
    reused: it is no run of this job.

    Parameters
    ----------
    runs
        The records of one job id (`sacct -D`, with `Submit`, `End` and `WorkDir`), in any
        order.
    """
    runs = sorted(runs, key=lambda run: _parse_time(run["Submit"]))
    first = len(runs) - 1
    while first > 0:
        earlier, later = runs[first - 1], runs[first]
        gap = abs(_parse_time(later["Submit"]) - _parse_time(earlier["End"]))
        if gap > CLOCK_SLACK or earlier["WorkDir"] != later["WorkDir"]:
            break
        first -= 1
    return runs[-1] | {"FirstSubmit": runs[first]["Submit"]}


def foreign_workdir(job_id: int, workdir: str, folder: str) -> str | None:
    """Why SLURM's job with a logged id is not the job of `folder`: it ran elsewhere.

    Returns
    -------
    why
        `None` when `workdir` (SLURM's work directory of the job) is empty or the folder.
    """
    if workdir != "" and os.path.realpath(workdir) != os.path.realpath(folder):
        return f"SLURM's job {job_id} ran in {workdir}: the id was reused"
    return None


def stranger(
    job_id: int, record: dict[str, str], folder: str, submitted: datetime | None
) -> str | None:
    """Tell why SLURM's job with a logged id is not the logged job, `None` when it may be.

    Job ids are reused (a reinstalled SLURM starts again at 1, ids wrap at MaxJobId): the id
    counts only when SLURM's record of the job has the job folder as its work directory and
    was first submitted no later than the log's `Submitted` record. The first submission, not
    the last: SLURM resets the submit time on every requeue. No earliest time is checked: the
    `Submitted` record of a job found after an interrupted submission is written when the job
    is found, perhaps long after SLURM's submit time.

    Parameters
    ----------
    job_id
        The job id in the log.
    record
        SLURM's record of that job from `sacct_records`.
    folder
        The job folder.
    submitted
        When the log's `Submitted` record was written, `None` when unknown.
    """
    why = foreign_workdir(job_id, record["WorkDir"], folder)
    if why is not None:
        return why
    first = record.get("FirstSubmit", record["Submit"])
    when = _parse_time(first)
    if submitted is not None and when != datetime.min and when > submitted + CLOCK_SLACK:
        return (
            f"SLURM's job {job_id} was submitted at {first}, after the log's Submitted record "
            f"({submitted:%Y-%m-%dT%H:%M:%S}): the id was reused"
        )
    return None


def find_by_token(
    token: str | None, clusters: str | None, since: datetime, config: Config
) -> tuple[bool, int | None]:
    """Look for the job of an interrupted submission, first in squeue, then in sacct.

    squeue shows the token (the job's comment), the folder and the submission time of every
    job that slurmctld still holds. sacct shows comments only where the accounting stores
    them (`AccountingStoreFlags=job_comment`, not SLURM's default); elsewhere the job is the
    one, with no comment, submitted from the current folder after the `Submitting` record.

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
        When SLURM lists several jobs without comment that may be this submission's.
    """
    args = ["squeue", *_cluster_args(clusters), "--me", "-t", "all", "-h", "-o", _SQUEUE_AS_SACCT]
    squeue = run_command(args, timeout=config.command_timeout)
    if squeue.returncode != 0:
        return False, None
    listed = _readable(parse_sacct, squeue.stdout)
    if listed is None:
        return False, None
    for job_id, record in listed.items():
        if token is not None and record["Comment"] == token:
            return True, job_id
        if record["Comment"] == "(null)":
            record["Comment"] = ""
    # squeue shows the comment of every job it lists, so none of those carries our token.
    # A submission without token (2.x) is told by folder and time, here as in sacct.
    found = [] if token is not None else match_submission(listed, None, os.getcwd(), since)
    start = (since - CLOCK_SLACK).strftime("%Y-%m-%dT%H:%M:%S")
    args = ["sacct", *_cluster_args(clusters), "-X", "-n", "-P", "-S", start]
    sacct = run_command([*args, "-o", ",".join(SACCT_FIELDS)], timeout=config.command_timeout)
    if sacct.returncode != 0 and is_transient(sacct):
        # slurmdbd down: ask again later.
        return False, None
    # No accounting at all: squeue's list has to do.
    records = _readable(parse_sacct, sacct.stdout) if sacct.returncode == 0 else {}
    if records is None:
        return False, None
    unlisted = {job_id: record for job_id, record in records.items() if job_id not in listed}
    candidates = found + match_submission(unlisted, token, os.getcwd(), since)
    if len(candidates) > 1:
        ids = ", ".join(map(str, candidates))
        ended = ", all ended" if token is not None else ""
        raise ValueError(
            f"SLURM lists several jobs without a comment submitted from {os.getcwd()} "
            f"since {since - CLOCK_SLACK:%Y-%m-%dT%H:%M:%S} ({ids}){ended}; StepUp "
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
        Parsed `sacct` output with the fields of `SACCT_FIELDS` (or squeue's, in the same
        fields).
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


# Successful answers of `scontrol show config`: a step asks for the name of the default cluster
# and, after a non-zero exit code, for the requeue codes. Keyed by what selects the answer: the
# cluster, and the SLURM installation (PATH and SLURM_CONF, which a cluster module changes).
_CONFIGS: dict[tuple[str | None, str | None, str | None], CommandResult] = {}


def show_config(cluster: str | None, timeout: float) -> CommandResult:
    """SLURM's configuration (`scontrol show config`), asked once per process when it answers.

    Parameters
    ----------
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which scontrol is killed.
    """
    key = (cluster, os.environ.get("SLURM_CONF"), os.environ.get("PATH"))
    result = _CONFIGS.get(key)
    if result is None:
        args = ["scontrol", *_cluster_args(cluster), "show", "config"]
        result = run_command(args, timeout=timeout)
        if result.returncode == 0:
            _CONFIGS[key] = result
    return result


_RE_KEY_VALUE = re.compile(r"(\w+)=(\S*)")


def show_records(
    kind: str, name: str | int | None, cluster: str | None, timeout: float
) -> list[dict[str, str]] | None:
    """`scontrol show KIND [NAME] -o`, one dictionary of `Key=Value` pairs per record.

    Values that hold spaces (a job's Command or Comment) are cut at the first space: the
    callers read only limits, counts, states and names.

    Parameters
    ----------
    kind
        `job` or `partition`.
    name
        A job id or partition name; `None` for all.
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which scontrol is killed.

    Returns
    -------
    records
        `None` when scontrol did not answer.
    """
    args = ["scontrol", *_cluster_args(cluster), "show", kind, "-o"]
    result = run_command([*args, *([] if name is None else [str(name)])], timeout=timeout)
    if result.returncode != 0:
        return None
    return [
        dict(_RE_KEY_VALUE.findall(line))
        for line in result.stdout.splitlines()
        if "=" in line and not line.startswith("CLUSTER:")
    ]


_RE_REQUEUE_EXIT = re.compile(r"^(RequeueExit|RequeueExitHold)\s*=\s*(\S*)\s*$", re.MULTILINE)


def requeue_exit_codes(cluster: str | None, timeout: float) -> frozenset[int] | None:
    """The exit codes of a batch script after which SLURM runs the job again.

    Parameters
    ----------
    cluster
        The cluster name (as in `sbatch -M`), `None` for the default cluster.
    timeout
        Seconds after which scontrol is killed.

    Returns
    -------
    codes
        The codes in `RequeueExit` and `RequeueExitHold` of slurm.conf (lists of codes and
        ranges, e.g. `1-9,18`); `None` when scontrol failed or printed a list it cannot parse.
    """
    result = show_config(cluster, timeout)
    if result.returncode != 0:
        return None
    codes = set()
    for _, value in _RE_REQUEUE_EXIT.findall(result.stdout):
        if value == "(null)":
            continue
        for part in value.split(","):
            first, _, last = part.partition("-")
            if not (first.isdigit() and (last == "" or last.isdigit())):
                return None
            codes.update(range(int(first), int(last or first) + 1))
    return frozenset(codes)

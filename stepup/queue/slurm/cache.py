"""The shared, file-based cache of SLURM's answer about the states of a user's jobs.

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
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..config import Config, ConfigError, QueryMethod
from .commands import run_command
from .locks import locked
from .parsers import Listing, UnreadableOutputError, parse_scontrol, parse_squeue
from .queries import default_cluster_name, squeue_command

__all__ = ("Snapshot", "StateCache", "format_cache", "parse_cache")

_RE_HEADER = re.compile(r"v1 datetime=(\S{26}) returncode=([+-][0-9]{3,})")


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
            name, failure = default_cluster_name(self.config.command_timeout)
            if name is None:
                return failure
            self.path = self.config.cache_dir / f"{self._stem}.default.{name}.out"
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
            timeout = self.config.lock_timeout
            with locked(lock, timeout) as held:
                if not held and self.config.debug:
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

    def record_submission(self, job_id: int, token: str):
        """Add a job just submitted to the cached answer, as pending in the current folder.

        The steps that wait for room count it at once, instead of one cache period later.
        """
        if self.locate() is not None:
            return
        with locked(self.path + ".lock", self.config.lock_timeout) as held:
            cached = self._fresh() if held else None
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

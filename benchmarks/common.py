"""Shared tools of the benchmarks: workflow folders, timed `stepup boot` runs, sacct, sdiag, /proc.

Every workflow gets its own folder, its own cold scheduler cache (`STEPUP_QUEUE_CACHE_DIR`) and
a folder of small wrappers, first on its `PATH`, that log every call of the SLURM commands
(time, working directory, arguments) before running the real command. Everything else is the
default configuration of StepUp Queue.
"""

import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from path import Path

__all__ = (
    "LOGGED_COMMANDS",
    "STATUS_RPCS",
    "BootRun",
    "Call",
    "JobRecord",
    "ProcSample",
    "SdiagSnapshot",
    "Workflow",
    "bench_folder",
    "cancel_leftovers",
    "default_stepup",
    "diff_counts",
    "max_in_window",
    "median",
    "percentile",
    "sdiag_counts",
    "tests_running",
    "worker_samples",
)

# Variables of the caller that would change how StepUp (Queue) behaves in the benchmark.
CLEARED_ENV = (
    "STEPUP_QUEUE_ONCHANGE",
    "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS",
    "STEPUP_QUEUE_CACHE_DIR",
    "STEPUP_SBATCH_CACHE_TIMEOUT",
    "STEPUP_SBATCH_POLLING_INTERVAL",
    "STEPUP_SBATCH_TIME_MARGIN",
    "STEPUP_SBATCH_RET_TIMEOUT",
    "STEPUP_SBATCH_SUBMIT_BACKOFF",
    "STEPUP_SBATCH_SUBMIT_RETRIES",
    "STEPUP_SBATCH_COMMAND_TIMEOUT",
    "STEPUP_SBATCH_DEBUG",
    "STEPUP_SBATCH_QUERY",
    "STEPUP_ROOT",
    "STEPUP_DIRECTOR_SOCKET",
)

# SLURM commands whose calls are logged in every benchmark workflow.
LOGGED_COMMANDS = ("sbatch", "squeue", "scontrol", "sacct", "scancel")

# RPCs of slurmctld that ask for job (or related) information, as named by sdiag.
STATUS_RPCS = (
    "REQUEST_JOB_INFO",
    "REQUEST_JOB_USER_INFO",
    "REQUEST_JOB_INFO_SINGLE",
    "REQUEST_JOB_STEP_INFO",
    "REQUEST_PARTITION_INFO",
    "REQUEST_FED_INFO",
    "REQUEST_NODE_INFO",
)

_RE_REPORT = re.compile(r"\|\s+([A-Z]+) │ (.*)$")
_RE_WORKDIR = re.compile(r"# wd=(\S+)$")
_RE_SDIAG = re.compile(r"^\s+([A-Z_]+)\s+\(\s*\d+\)\s+count:(\d+)")


@dataclass(frozen=True)
class Call:
    """One logged call of a SLURM command.

    Attributes
    ----------
    time
        When it was called (seconds since the epoch).
    cwd
        The working directory of the call.
    args
        The arguments, without the command itself.
    """

    time: float
    cwd: Path
    args: tuple[str, ...]


@dataclass(frozen=True)
class JobRecord:
    """A job as recorded by SLURM's accounting (`sacct`); times in seconds since the epoch.

    SLURM records times in whole seconds: the true moment lies in `[t, t + 1)`.
    """

    job_id: int
    state: str
    submit: float
    start: float
    end: float
    workdir: Path


@dataclass
class BootRun:
    """A `stepup boot` running in the background, with each line of its output time-stamped.

    Attributes
    ----------
    proc
        The `stepup boot` process, leader of its own process group.
    t_start
        When it was started (seconds since the epoch).
    lines
        (time of arrival, line) for every line printed so far.
    t_end
        When it exited, `None` while it runs.
    """

    proc: subprocess.Popen
    t_start: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    t_end: float | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def _wait_exit(self):
        self.proc.wait()
        self.t_end = time.time()

    def wait(self, timeout: float) -> int:
        """Wait until `stepup boot` exits and return its exit code.

        Raises
        ------
        TimeoutError
            When it still runs after `timeout` seconds; it is then killed.
        RuntimeError
            When StepUp reports an internal error (e.g. a worker that could not start);
            it is then killed, because such a `stepup boot` may never exit.
        """
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if self.reports("ERROR"):
                time.sleep(2)
                self.kill()
                raise RuntimeError(f"StepUp reported an error: {self.error()}\n{self.text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"stepup boot did not finish within {timeout:g} s")
            time.sleep(0.2)
        for thread in self._threads:
            thread.join()
        return self.proc.returncode

    def kill(self):
        """Kill `stepup boot` with its director and workers (its own process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def wall(self) -> float:
        """Seconds from start to exit."""
        if self.t_end is None:
            raise RuntimeError("stepup boot has not finished yet")
        return self.t_end - self.t_start

    def reports(self, action: str) -> dict[str, float]:
        """Time of the first line with the given action (e.g. `SUCCESS`), per step folder.

        Returns
        -------
        times
            Step folder as StepUp prints it (e.g. `job01/`, `./` for the top folder) → time.
        """
        result = {}
        for stamp, line in self.lines:
            match = _RE_REPORT.search(line)
            if match is None or match.group(1) != action:
                continue
            wd = _RE_WORKDIR.search(match.group(2))
            result.setdefault("./" if wd is None else wd.group(1), stamp)
        return result

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def error(self) -> str:
        """The last exception line of a traceback that StepUp printed, if any."""
        found = ""
        for _, line in self.lines:
            if re.match(r"^[\w.]+(Error|Exception)\b", line):
                found = line
        return found


@dataclass
class Workflow:
    """A StepUp workflow in a benchmark folder, run with the `stepup` of a given install.

    Parameters
    ----------
    root
        The workflow's folder.
    stepup
        The `stepup` executable to run.
    env
        The environment of `stepup boot`.
    calls_dir
        Where the logging wrappers of the SLURM commands write.
    """

    root: Path
    stepup: Path
    env: dict[str, str]
    calls_dir: Path

    @classmethod
    def create(
        cls,
        parent: Path,
        name: str,
        stepup: Path,
        cold_home: bool = False,
        cache_dir: Path | None = None,
    ) -> "Workflow":
        """Make a workflow folder `parent/name` with a cold cache and logged SLURM commands.

        Parameters
        ----------
        parent
            The folder in which the workflow folder is made.
        name
            The name of the workflow folder.
        stepup
            The `stepup` executable to run.
        cold_home
            Also give the workflow an empty home folder, for StepUp Queue installs that keep
            their cache in `~/.cache/stepup-queue` without `STEPUP_QUEUE_CACHE_DIR` (<= 1.0.2).
        cache_dir
            The scheduler cache folder, to share one between workflows. By default, the
            workflow gets a new one of its own.
        """
        root = parent / name
        bindir = parent / f"{name}.bin"
        calls_dir = parent / f"{name}.calls"
        for folder in (root, bindir, calls_dir):
            folder.makedirs_p()
        for command in LOGGED_COMMANDS:
            real = shutil.which(command)
            if real is None:
                raise RuntimeError(f"{command} not found: is SLURM installed?")
            wrapper = bindir / command
            log = shlex.quote(str(calls_dir / f"{command}.txt"))
            wrapper.write_text(
                "#!/usr/bin/env bash\n"
                f'printf "%s\\t%s\\t%s\\n" "$(date +%s.%N)" "$PWD" "$*" >> {log}\n'
                f'exec {shlex.quote(real)} "$@"\n'
            )
            wrapper.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        env["STEPUP_QUEUE_CACHE_DIR"] = str(cache_dir or parent / f"{name}.cache")
        env["PATH"] = f"{bindir}:{stepup.parent}:{env['PATH']}"
        if cold_home:
            home = parent / f"{name}.home"
            home.makedirs_p()
            env["HOME"] = str(home)
            env.pop("XDG_CACHE_HOME", None)
        return cls(root, stepup, env, calls_dir)

    def write(self, relpath: str, text: str, mode: int = 0o644) -> Path:
        """Write a (dedented) file in the workflow folder."""
        path = self.root / relpath
        path.parent.makedirs_p()
        path.write_text(textwrap.dedent(text).lstrip())
        path.chmod(mode)
        return path

    def plan(self, body: str):
        """Write an executable plan.py with the given (dedented) body."""
        self.write("plan.py", "#!/usr/bin/env python3\n" + textwrap.dedent(body), 0o755)

    def start(self, workers: int) -> BootRun:
        """Start `stepup boot -n WORKERS` in the background."""
        t_start = time.time()
        proc = subprocess.Popen(
            [self.stepup, "boot", "-n", str(workers)],
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        run = BootRun(proc, t_start)
        run._threads = [
            threading.Thread(target=run._read, daemon=True),
            threading.Thread(target=run._wait_exit, daemon=True),
        ]
        for thread in run._threads:
            thread.start()
        return run

    def boot(self, workers: int, timeout: float = 600) -> BootRun:
        """Run `stepup boot -n WORKERS` to the end.

        Raises
        ------
        RuntimeError
            When the workflow does not succeed; the message has StepUp's output.
        """
        run = self.start(workers)
        returncode = run.wait(timeout)
        if returncode != 0 or run.reports("FAIL"):
            raise RuntimeError(
                f"stepup boot failed in {self.root} (exit code {returncode}):\n{run.text()}"
            )
        return run

    def calls(self, command: str) -> list[Call]:
        """All logged calls of a SLURM command (e.g. `squeue`) from this workflow."""
        path = self.calls_dir / f"{command}.txt"
        if not path.exists():
            return []
        result = []
        for line in path.read_text().splitlines():
            stamp, cwd, args = line.split("\t", 2)
            result.append(Call(float(stamp), Path(cwd), tuple(shlex.split(args))))
        return result

    def jobs(self, expected: int, timeout: float = 60) -> list[JobRecord]:
        """The accounting records of this workflow's jobs, once all `expected` have ended.

        slurmdbd records a job's end a moment after slurmctld knows it, hence the waiting.
        """
        deadline = time.monotonic() + timeout
        while True:
            records = [r for r in sacct_records() if r.workdir.startswith(self.root)]
            ended = [r for r in records if r.end > 0]
            if len(ended) >= expected or time.monotonic() > deadline:
                return sorted(ended, key=lambda r: r.job_id)
            time.sleep(1)


def _sacct_time(text: str) -> float:
    if text in ("", "Unknown", "None"):
        return 0.0
    return datetime.fromisoformat(text).timestamp()


def sacct_records(since: str = "now-1hours", timeout: float = 120) -> list[JobRecord]:
    """All jobs in SLURM's accounting database submitted since `since` (all users).

    Raises
    ------
    RuntimeError
        When sacct keeps failing (e.g. slurmdbd is down) for `timeout` seconds.
    """
    fields = "JobIDRaw,State,Submit,Start,End,WorkDir"
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-a", "-S", since, "-o", fields],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"sacct keeps failing: {result.stderr.strip()}")
        time.sleep(2)
    records = []
    for line in result.stdout.splitlines():
        parts = line.split("|", 5)
        if len(parts) != 6 or not parts[0].isdigit():
            continue
        job_id, state, submit, start, end, workdir = parts
        records.append(
            JobRecord(
                int(job_id),
                state.split()[0] if state else "UNKNOWN",
                _sacct_time(submit),
                _sacct_time(start),
                _sacct_time(end),
                Path(workdir),
            )
        )
    return records


def cancel_leftovers(parent: Path):
    """Cancel the jobs submitted from folders below `parent` that slurmctld still runs."""
    result = subprocess.run(
        ["squeue", "-h", "-t", "PENDING,RUNNING", "-o", "%i|%Z"], capture_output=True, text=True
    )
    ids = []
    for line in result.stdout.splitlines():
        job_id, _, workdir = line.partition("|")
        if job_id.isdigit() and Path(workdir).startswith(parent):
            ids.append(job_id)
    if ids:
        subprocess.run(["scancel", *ids], check=False)


@contextmanager
def bench_folder(keep: bool = False) -> Iterator[Path]:
    """A temporary folder for benchmark workflows; its unfinished jobs are cancelled at exit.

    Parameters
    ----------
    keep
        When True, the folder is not removed at exit (its path is printed).
    """
    parent = Path(tempfile.mkdtemp(prefix="stepup-queue-bench-"))
    try:
        yield parent
    finally:
        cancel_leftovers(parent)
        if keep:
            print(f"Kept the benchmark folder {parent}")
        else:
            parent.rmtree_p()


@dataclass(frozen=True)
class SdiagSnapshot:
    """slurmctld's RPC counts by message type at one moment.

    Attributes
    ----------
    since
        When slurmctld started counting (started, or `sdiag --reset`), seconds since the epoch.
    counts
        RPC name (e.g. `REQUEST_JOB_INFO`) → count since then.
    """

    since: int
    counts: dict[str, int]


_RE_SDIAG_SINCE = re.compile(r"^Data since\s+.*\((\d+)\)", re.MULTILINE)


def sdiag_counts(timeout: float = 120) -> SdiagSnapshot:
    """The RPC counts of slurmctld, waiting up to `timeout` seconds while it does not answer."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(["sdiag"], capture_output=True, text=True)
        match = _RE_SDIAG_SINCE.search(result.stdout)
        if result.returncode == 0 and match is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"sdiag keeps failing: {result.stderr.strip()}")
        time.sleep(2)
    section = result.stdout.partition("by message type")[2].partition("by user")[0]
    counts = {}
    for line in section.splitlines():
        found = _RE_SDIAG.match(line)
        if found is not None:
            counts[found.group(1)] = int(found.group(2))
    return SdiagSnapshot(int(match.group(1)), counts)


def diff_counts(before: SdiagSnapshot, after: SdiagSnapshot) -> dict[str, int] | None:
    """RPCs counted between two sdiag snapshots.

    Returns
    -------
    counts
        RPC name → number of RPCs in between (only those that changed), or `None` when
        slurmctld restarted or its counts were reset in between.
    """
    if before.since != after.since:
        return None
    old, new = before.counts, after.counts
    return {
        name: new.get(name, 0) - old.get(name, 0)
        for name in sorted(set(old) | set(new))
        if new.get(name, 0) != old.get(name, 0)
    }


def tests_running() -> bool:
    """True when some pytest runs on this machine: sdiag and timings are then noisy."""
    result = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True)
    return result.stdout.strip() != ""


@dataclass(frozen=True)
class ProcSample:
    """CPU time and memory of one process at one moment.

    Attributes
    ----------
    pid
        The process id.
    cwd
        Its working directory (a StepUp worker's is the folder of the step it runs).
    cpu
        User and system CPU seconds, including those of its children that it waited for.
    rss
        Resident set size in MiB (VmRSS).
    """

    pid: int
    cwd: Path
    cpu: float
    rss: float


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        table[int(entry)] = (ppid, cmdline.decode(errors="replace"))
    return table


def worker_samples(pids: Iterable[int]) -> list[ProcSample]:
    """Sample the StepUp workers below the given processes (e.g. `stepup boot` processes)."""
    table = _proc_table()
    tops = set(pids)
    ticks = os.sysconf("SC_CLK_TCK")
    samples = []
    for pid, (_, cmdline) in table.items():
        if "stepup.core.worker" not in cmdline:
            continue
        ancestor = pid
        while ancestor in table and ancestor not in tops:
            ancestor = table[ancestor][0]
        if ancestor not in tops:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            status = Path(f"/proc/{pid}/status").read_text()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        # Fields 14-17 of /proc/PID/stat (utime, stime, cutime, cstime) are 11-14 here.
        cpu = sum(int(value) for value in fields[11:15]) / ticks
        rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1))
        samples.append(ProcSample(pid, cwd, cpu, rss_kb / 1024))
    return samples


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly as NumPy does by default."""
    if len(values) == 0:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if len(values) > 0 else float("nan")


def max_in_window(times: Sequence[float], width: float) -> int:
    """The largest number of `times` in any half-open interval `[t, t + width)`."""
    ordered = sorted(times)
    best = 0
    first = 0
    for last, stamp in enumerate(ordered):
        while stamp - ordered[first] >= width:
            first += 1
        best = max(best, last - first + 1)
    return best


def default_stepup() -> Path:
    """The `stepup` of the Python that runs the benchmarks."""
    return Path(sys.executable).parent / "stepup"

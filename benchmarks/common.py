"""Shared tools of the benchmarks: hosts, workflow folders, timed runs, sacct, sdiag, /proc.

A host is one install of StepUp Core with StepUp Queue, given by its `stepup` executable:
StepUp 3 runs a workflow with `stepup boot -n N` and each step in a worker process
(`stepup.core.worker`); StepUp 4 runs it with `stepup build -j N` and each console-script step
(StepUp Queue's `sq-sbatch-and-wait`) in a child of its forkserver.
Every workflow gets its own folder, its own cold scheduler cache (`STEPUP_QUEUE_CACHE_DIR`) and
a folder of small wrappers, first on its `PATH`, that log every call of the SLURM commands
(time, working directory, arguments) before running the real command. Everything else is the
default configuration of StepUp Queue.
"""

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime

from path import Path

from tests.proctree import kill_tree

__all__ = (
    "LOGGED_COMMANDS",
    "STATUS_RPCS",
    "BuildRun",
    "Call",
    "Host",
    "JobRecord",
    "ProcSample",
    "Workflow",
    "add_host_option",
    "bench_folder",
    "cancel_leftovers",
    "default_stepup",
    "director_files",
    "max_in_window",
    "median",
    "percentile",
    "step_samples",
    "tests_running",
    "tree_pss",
)

# SLURM commands whose calls are logged in every benchmark workflow.
LOGGED_COMMANDS = ("sbatch", "squeue", "scontrol", "sacct", "scancel")

# RPCs of slurmctld that ask for job (or related) information or its configuration (sdiag names).
STATUS_RPCS = (
    "REQUEST_JOB_INFO",
    "REQUEST_JOB_USER_INFO",
    "REQUEST_JOB_INFO_SINGLE",
    "REQUEST_JOB_STEP_INFO",
    "REQUEST_PARTITION_INFO",
    "REQUEST_FED_INFO",
    "REQUEST_NODE_INFO",
    "REQUEST_BUILD_INFO",
)

# A report line: `   START │ ...` (StepUp 4) or `      0/2 |      START │ ...` (StepUp 3).
_RE_REPORT = re.compile(r"(?:^|\|)\s*([A-Z]+) │ (.*)$")
_RE_WORKDIR = re.compile(r"# wd=(\S+)$")


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


@dataclass(frozen=True)
class Host:
    """An install of StepUp Core with StepUp Queue, given by its `stepup` executable.

    Attributes
    ----------
    stepup
        The `stepup` executable, in the `bin` folder of the install's venv.
    version
        The version of StepUp Core, e.g. `4.0.3`.
    queue_version
        The version of StepUp Queue.
    """

    stepup: Path
    version: str
    queue_version: str

    @classmethod
    def detect(cls, stepup: Path) -> "Host":
        """Ask the Python beside `stepup` which StepUp Core and StepUp Queue it has.

        StepUp Queue's modules are also compiled to bytecode, as pip does when it installs a
        wheel. An editable install has none when PYTHONDONTWRITEBYTECODE is set (as on the
        machines here): every step process would then compile the package from source, which
        costs a waiting step about 2 MB more than an installed release.
        """
        stepup = Path(stepup).absolute()
        code = (
            "import compileall, stepup.queue; from importlib.metadata import version as v; "
            "compileall.compile_dir(stepup.queue.__path__[0], quiet=1); "
            "print(v('stepup'), v('stepup-queue'))"
        )
        result = subprocess.run(
            [stepup.parent / "python", "-c", code], capture_output=True, text=True, check=True
        )
        version, queue_version = result.stdout.split()
        return cls(stepup, version, queue_version)

    @property
    def major(self) -> int:
        """The major version of StepUp Core: 3 or 4."""
        return int(self.version.split(".")[0])

    @property
    def python(self) -> Path:
        """The Python of the install's venv."""
        return self.stepup.parent / "python"

    @property
    def name(self) -> str:
        return f"StepUp {self.version}"

    def command(self, slots: int) -> list[str]:
        """The command that runs a workflow with at most `slots` steps at once."""
        if self.major < 4:
            return [self.stepup, "boot", "-n", str(slots)]
        return [self.stepup, "build", "-j", str(slots)]

    def describe(self, slots: int) -> str:
        """The command of `command()` as a user types it, e.g. `stepup build -j 20`."""
        return shlex.join(["stepup", *self.command(slots)[1:]])

    def plan_imports(self) -> str:
        """The plan line that imports `static` and the function of a plain step."""
        return f"from stepup.core.api import {'runsh' if self.major < 4 else 'run'}, static"

    def static(self, workdir: str, files: Sequence[str] = ()) -> list[str]:
        """Plan lines that declare files of a step folder, e.g. a job script, as static.

        StepUp 3 also needs the folder itself. StepUp 4 creates a step's folder and refuses a
        static folder that holds outputs of a step.
        """
        paths = [workdir + name for name in files]
        if self.major < 4:
            paths.insert(0, workdir)
        return [f"static({path!r})" for path in paths]

    def plain_step(
        self,
        command: str,
        workdir: str,
        inp: Sequence[str] = (),
        out: Sequence[str] = (),
        shell: bool = True,
    ) -> str:
        """The plan line of a step that runs `command` in `workdir` without StepUp Queue.

        StepUp 3 runs it with `runsh`, always in a shell. On StepUp 4 `shell=False` runs a
        console script of the install in a forkserver child, as StepUp Queue's steps run.
        """
        args = f"workdir={workdir!r}, inp={list(inp)!r}, out={list(out)!r}"
        if self.major < 4:
            return f"runsh({command!r}, {args})"
        return f"run({command!r}, shell={shell}, {args})"

    def runs_step(self, cmdline: str, parent_cmdline: str) -> bool:
        """True for a process that runs one step: a worker (StepUp 3) or a forkserver child."""
        if self.major < 4:
            return "stepup.core.worker" in cmdline
        # A forkserver child is forked without exec: it has the command line of its parent.
        return all("multiprocessing.forkserver" in line for line in (cmdline, parent_cmdline))


@dataclass
class BuildRun:
    """A `stepup build` (or `stepup boot`) running in the background, with time-stamped output.

    Attributes
    ----------
    proc
        The `stepup` process. Its director, forkserver and steps are its descendants (in
        sessions of their own on StepUp 4).
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
        """Wait until `stepup` exits and return its exit code.

        Raises
        ------
        TimeoutError
            When it still runs after `timeout` seconds; it is then killed.
        RuntimeError
            When StepUp reports an internal error (e.g. a worker that could not start);
            it is then killed, because such a `stepup` may never exit.
        """
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if self.reports("ERROR"):
                time.sleep(2)
                self.kill()
                raise RuntimeError(f"StepUp reported an error: {self.error()}\n{self.text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"stepup did not finish within {timeout:g} s")
            time.sleep(0.2)
        for thread in self._threads:
            thread.join()
        return self.proc.returncode

    def kill(self):
        """Kill `stepup` with all its descendants: director, workers or forkserver, steps."""
        if self.proc.poll() is None:
            kill_tree(self.proc)

    @property
    def wall(self) -> float:
        """Seconds from start to exit."""
        if self.t_end is None:
            raise RuntimeError("stepup has not finished yet")
        return self.t_end - self.t_start

    def reports(self, action: str) -> dict[str, float]:
        """Time of the first line with the given action (e.g. `SUCCESS`), per step folder.

        Returns
        -------
        times
            Step folder with a trailing slash (e.g. `job01/`, `./` for the top folder) → time.
            (StepUp 3 prints the slash, StepUp 4 does not.)
        """
        result = {}
        for stamp, line in self.lines:
            match = _RE_REPORT.search(line)
            if match is None or match.group(1) != action:
                continue
            wd = _RE_WORKDIR.search(match.group(2))
            result.setdefault("./" if wd is None else wd.group(1).rstrip("/") + "/", stamp)
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
    """A StepUp workflow in a benchmark folder, run by a given host.

    Parameters
    ----------
    root
        The workflow's folder.
    host
        The install of StepUp (Queue) that runs it.
    env
        The environment of `stepup`.
    calls_dir
        Where the logging wrappers of the SLURM commands write.
    """

    root: Path
    host: Host
    env: dict[str, str]
    calls_dir: Path

    @classmethod
    def create(
        cls,
        parent: Path,
        name: str,
        host: Host,
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
        host
            The install of StepUp (Queue) that runs it.
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
        # No setting of the caller (StepUp's, StepUp Queue's) may change the benchmark.
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEPUP_")}
        env["STEPUP_QUEUE_CACHE_DIR"] = str(cache_dir or parent / f"{name}.cache")
        # StepUp 4 runs console scripts in its forkserver only when they are found on PATH.
        env["PATH"] = f"{bindir}:{host.stepup.parent}:{env['PATH']}"
        if cold_home:
            home = parent / f"{name}.home"
            home.makedirs_p()
            env["HOME"] = str(home)
            env.pop("XDG_CACHE_HOME", None)
        return cls(root, host, env, calls_dir)

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

    def start(self, slots: int, ulimit: str | None = None) -> BuildRun:
        """Start the workflow in the background, with at most `slots` steps at once.

        `ulimit`: arguments of a `ulimit` that a shell runs first, e.g. `-S -n 1024`.
        """
        t_start = time.time()
        command = self.host.command(slots)
        if ulimit is not None:
            command = ["bash", "-c", f"ulimit {ulimit} && exec {shlex.join(command)}"]
        proc = subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        run = BuildRun(proc, t_start)
        run._threads = [
            threading.Thread(target=run._read, daemon=True),
            threading.Thread(target=run._wait_exit, daemon=True),
        ]
        for thread in run._threads:
            thread.start()
        return run

    def build(self, slots: int, timeout: float = 600) -> BuildRun:
        """Run the workflow to the end, with at most `slots` steps at once.

        Raises
        ------
        RuntimeError
            When the workflow does not succeed; the message has StepUp's output.
        """
        run = self.start(slots)
        returncode = run.wait(timeout)
        # A failed step gives exit code 2 (StepUp 3) or one with bit 4 set (StepUp 4).
        if returncode != 0 or run.reports("FAIL"):
            raise RuntimeError(
                f"{self.host.describe(slots)} failed in {self.root} (exit code {returncode}):\n"
                f"{run.text()}"
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

    def queries(self) -> tuple[list[Call], list[Call]]:
        """The logged calls of squeue and scontrol from this workflow, in two lists.

        Returns
        -------
        status
            The calls that ask slurmctld for jobs: every squeue, and `scontrol show job`.
        other
            The other calls of scontrol, e.g. `scontrol show config`, which asks for no job.
        """
        status = self.calls("squeue")
        other = []
        for call in self.calls("scontrol"):
            words = list(call.args)
            asks_jobs = "show" in words[:-1] and words[words.index("show") + 1].startswith("job")
            (status if asks_jobs else other).append(call)
        return status, other

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
        Its working directory (that of a process that runs a step is the step's folder).
    cpu
        User and system CPU seconds, including those of its children that it waited for.
    rss
        Resident set size in MiB (VmRSS).
    pss
        Proportional set size in MiB (`Pss` of `/proc/PID/smaps_rollup`): shared pages count
        for each process that maps them in proportion, so the PSS of all processes adds up to
        the memory they use together.
    """

    pid: int
    cwd: Path
    cpu: float
    rss: float
    pss: float


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


def _descendants(table: dict[int, tuple[int, str]], pids: Iterable[int]) -> list[int]:
    """The given processes and all their descendants, parents before children.

    StepUp 4 runs its director, forkserver and steps in sessions of their own: only the parent
    pids of `/proc/PID/stat` connect them to the `stepup build` process.
    """
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    result = [pid for pid in pids if pid in table]
    for pid in result:
        result.extend(children.get(pid, []))
    return result


def director_files(pid: int) -> int:
    """Open files of StepUp's director below the `stepup` process `pid`, 0 when none runs."""
    table = _proc_table()
    for child in _descendants(table, [pid]):
        if "stepup.core.director" in table[child][1]:
            with suppress(OSError):
                return len(os.listdir(f"/proc/{child}/fd"))
    return 0


def _pss(pid: int) -> float:
    """The PSS of a process in MiB."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"^Pss:\s+(\d+)", rollup, re.MULTILINE).group(1)) / 1024


def _sample(pid: int) -> ProcSample:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    status = Path(f"/proc/{pid}/status").read_text()
    cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    # Fields 14-17 of /proc/PID/stat (utime, stime, cutime, cstime) are 11-14 here.
    cpu = sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", status, re.MULTILINE).group(1))
    return ProcSample(pid, cwd, cpu, rss_kb / 1024, _pss(pid))


def step_samples(pids: Iterable[int], host: Host) -> list[ProcSample]:
    """Sample the processes that run steps below the given `stepup` processes of a host."""
    table = _proc_table()
    samples = []
    for pid in _descendants(table, pids):
        ppid, cmdline = table[pid]
        if not host.runs_step(cmdline, table.get(ppid, (0, ""))[1]):
            continue
        with suppress(OSError):
            samples.append(_sample(pid))
    return samples


def tree_pss(pid: int) -> float:
    """The PSS (MiB) of a `stepup` process and all its descendants together."""
    total = 0.0
    for member in _descendants(_proc_table(), [pid]):
        with suppress(OSError):
            total += _pss(member)
    return total


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


def add_host_option(parser: argparse.ArgumentParser, repeat: bool = False):
    """Add the option `--stepup PATH` that selects the host(s) of the benchmarks.

    Parameters
    ----------
    parser
        The parser of a benchmark's command line; `args.stepup` becomes a path, or a list of
        paths when `repeat` is True (empty when the option is not given).
    repeat
        Whether the option may be given more than once.
    """
    parser.add_argument(
        "--stepup",
        type=Path,
        action="append" if repeat else "store",
        default=[] if repeat else default_stepup(),
        metavar="PATH",
        help="The stepup executable of the host, e.g. .venv3/bin/stepup for StepUp 3 "
        f"(default: {default_stepup()})." + (" May be repeated." if repeat else ""),
    )

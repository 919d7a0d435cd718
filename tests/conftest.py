"""Shared fixtures: a real local SLURM and one StepUp workflow folder per test."""

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import pairwise

import pytest
from path import Path
from proctree import kill_tree

from stepup.queue.api import stepup_major
from stepup.queue.joblog import FORMAT_LINE, append_record, start_log
from stepup.queue.slurm.queries import sacct_records

# The StepUp Core of the Python that runs the tests is the host of every workflow: the suite
# runs once per host, each in its own venv (tools/test.sh).
HOST = stepup_major()
# `stepup boot` (StepUp 3) and `stepup build` (StepUp 4) flag a failed step differently.
FAILED_RC = 2 if HOST < 4 else 4

# Fast but realistic settings: every test shortens polling through the documented variables.
FAST_ENV = {
    "STEPUP_SBATCH_CACHE_TIMEOUT": "2",
    "STEPUP_SBATCH_POLLING_INTERVAL": "0.2",
    "STEPUP_SBATCH_TIME_MARGIN": "0.1",
    "STEPUP_SBATCH_RET_TIMEOUT": "5",
    "STEPUP_SBATCH_SUBMIT_BACKOFF": "1",
    "STEPUP_SBATCH_COMMAND_TIMEOUT": "20",
}
# Plan bodies for Workflow.plan: one job in job/, and a job that succeeds next to one that fails.
SIMPLE_PLAN = """
static("job/", "job/slurmjob.sh")
sbatch("job/")
"""
OK_AND_BAD_PLAN = """
static("ok/", "ok/slurmjob.sh", "bad/", "bad/slurmjob.sh")
sbatch("ok/")
sbatch("bad/")
"""
CLEARED_ENV = (
    "STEPUP_QUEUE_ONCHANGE",
    "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS",
    "STEPUP_SBATCH_DEBUG",
    "STEPUP_SBATCH_QUERY",
    "STEPUP_ROOT",
)


def sacct(*args: str) -> list[dict[str, str]]:
    """Return SLURM's accounting records (one per job, no steps) as dictionaries."""
    fields = "JobIDRaw,JobName,State,ExitCode,Submit,Start,End,WorkDir,Comment"
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-o", fields, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    names = fields.split(",")
    return [
        dict(zip(names, line.split("|", len(names) - 1), strict=True))
        for line in result.stdout.splitlines()
        if line.strip()
    ]


def scontrol_state(job_id: int) -> str | None:
    """The state of a job in slurmctld's memory, `None` when it is not listed."""
    result = subprocess.run(
        ["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True
    )
    for word in result.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def _read(path: Path) -> str:
    """The text of a file that StepUp may remove at any moment, empty when it is gone."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@dataclass
class Workflow:
    """A StepUp workflow in a temporary folder, run with the real `stepup boot`."""

    root: Path
    env: dict[str, str]
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    host: int = HOST

    def plan(self, body: str):
        """Write an executable plan.py with the usual imports and the given body.

        On StepUp 4, `static("job/", "job/slurmjob.sh")` would make the folder a static tree
        that may not hold the step's outputs, and `mkdir()` is gone (a step's folder is made
        when it runs): the header hides both, so one plan body serves both hosts.
        """
        # Three lines on both hosts, so that tests can name the lines of the body.
        header = "#!/usr/bin/env python3\n"
        if self.host < 4:
            header += "from stepup.core.api import glob, mkdir, static\n"
        else:
            header += (
                "from stepup.core.api import glob, static as _static; "
                "static = lambda *paths: _static(*[p for p in paths if not p.endswith('/')]); "
                "mkdir = lambda path: None\n"
            )
        # sbatch_array only where it exists: the original releases (test_compat) have none.
        header += (
            "import stepup.queue.api as _q; from stepup.queue.api import sbatch; "
            "sbatch_array = getattr(_q, 'sbatch_array', None)\n"
        )
        path = self.root / "plan.py"
        path.write_text(header + textwrap.dedent(body))
        path.chmod(0o755)

    def job(self, folder: str, body: str, *, name: str = "slurmjob.sh", mode: int = 0o755):
        """Write a job script (dedented) into a job folder."""
        path = self.root / folder / name
        path.parent.makedirs_p()
        path.write_text(textwrap.dedent(body).lstrip())
        path.chmod(mode)
        return path

    def label(self, folder: str, args: str = "") -> str:
        """How StepUp names the sbatch step of a job folder in its output, e.g. after FAIL."""
        if self.host < 4:
            return f"sbatch{args}  # wd={folder.rstrip('/')}/"
        return f"sq-sbatch-and-wait{args}  # wd={folder.rstrip('/')}"

    def using(self, bindir: Path, host: int, env: dict[str, str] | None = None) -> "Workflow":
        """The same workflow folder, run by the StepUp and StepUp Queue of another venv.

        Parameters
        ----------
        bindir
            The venv's bin folder, put first on PATH: its `stepup`, its Python (plan.py then
            imports the venv's `stepup.queue.api`) and, on StepUp 4, its `sq-sbatch-and-wait`
            (which StepUp finds on PATH) are the ones that run.
        host
            The major version of the venv's StepUp Core.
        env
            Extra environment variables for the workflows of this venv.

        Returns
        -------
        workflow
            A workflow for the same folder, whose boot() and popen() run that venv's stepup.
        """
        path = f"{bindir}:{self.env['PATH']}"
        return replace(self, env=self.env | (env or {}) | {"PATH": path}, host=host)

    @property
    def plan_label(self) -> str:
        """How StepUp names the step that runs plan.py."""
        return "runpy ./plan.py" if self.host < 4 else "./plan.py"

    def command(self, *args: str) -> list[str]:
        """The command that runs the workflow: `stepup boot` on StepUp 3, `stepup build` on 4.

        `-n N` (StepUp 3's number of workers) is StepUp 4's `-j N`.
        """
        if self.host < 4:
            return ["stepup", "boot", *args]
        return ["stepup", "build", *("-j" if arg == "-n" else arg for arg in args)]

    def boot(
        self, *args: str, timeout: float = 240, env: dict | None = None, ulimit: str = ""
    ) -> subprocess.CompletedProcess:
        """Run the workflow to the end and return the completed process.

        `ulimit`: options of a `ulimit` command run first in the workflow's shell.
        """
        proc = self.popen(*args, env=env, stderr=subprocess.PIPE, ulimit=ulimit)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            stdout, stderr = proc.communicate()
            pytest.fail(
                f"stepup boot did not end within {timeout} s.\n"
                f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n{self._stepup_logs()}"
            )
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def popen(
        self,
        *args: str,
        env: dict | None = None,
        stderr: int = subprocess.STDOUT,
        ulimit: str = "",
    ) -> subprocess.Popen:
        """Start the workflow in the background, in its own process group.

        With `ulimit`, a shell first runs `ulimit ULIMIT` and then becomes the workflow.

        StepUp Core 3.2.3 now and then dies at start-up when it connects to a worker's socket
        before the worker listens on it (ConnectionRefusedError in .stepup/director.log or
        worker*.log) and then hangs. Such a start is killed and made again, up to three times;
        this returns once the workers run (StepUp's `PHASE run` line) or the boot ended.
        """
        stepup_dir = self.root / ".stepup"
        command = self.command(*args)
        if ulimit:
            command = ["bash", "-c", f"ulimit {ulimit} && exec {shlex.join(command)}"]
        for _ in range(3):
            # Stale logs of an earlier boot must not be taken for this one's.
            for path in stepup_dir.glob("*.log"):
                path.remove()
            proc = subprocess.Popen(
                command,
                cwd=self.root,
                env=self.env | (env or {}),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self.host >= 4 or not self._crashed_at_startup(proc):
                return proc
            self.kill(proc)
        pytest.fail(f"StepUp Core crashed three times at start-up.\n{self._stepup_logs()}")

    def _crashed_at_startup(self, proc: subprocess.Popen, timeout: float = 120) -> bool:
        stepup_dir = self.root / ".stepup"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            logs = {path.name: _read(path) for path in stepup_dir.glob("*.log")}
            if any("ConnectionRefusedError" in text for text in logs.values()):
                return True
            if "PHASE" in logs.get("success.log", ""):
                return False
            time.sleep(0.05)
        return False

    def _stepup_logs(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{_read(path)}"
            for path in sorted((self.root / ".stepup").glob("*.log"))
        )

    def kill(self, proc: subprocess.Popen):
        """Kill a workflow started with popen() at once, as a crashing login node would.

        StepUp 4 runs its director and each step in sessions of their own, so the whole tree
        of processes is collected first and then killed.
        """
        kill_tree(proc)
        if self.host < 4:
            # StepUp 3 refuses to boot while the killed director's socket file is left behind;
            # removing it is what StepUp's message asks of the user.
            director_log = self.root / ".stepup/director.log"
            if director_log.exists():
                Path(director_log.read_text().split("\n")[0].split()[-1]).remove_p()

    def jobs(self) -> list[dict[str, str]]:
        """SLURM's accounting records of the jobs submitted from this workflow's folders."""
        records = sacct("-S", self.started)
        return [r for r in records if Path(r["WorkDir"]).startswith(self.root)]

    def final_jobs(self, count: int) -> list[dict[str, str]]:
        """Wait until sacct lists `count` jobs of the workflow, all ended, and return them."""

        def ready():
            jobs = self.jobs()
            return len(jobs) >= count and all(
                j["State"] not in ("PENDING", "RUNNING", "REQUEUED") for j in jobs
            )

        wait_for(ready, 60, "sacct to record the end of the jobs")
        return self.jobs()

    def step_digest(self, folder: str, *, keep: bool = False) -> str:
        """The input digest of the sbatch step of a job folder, as StepUp computes it.

        The log of a job submitted with a placeholder digest makes the step fail before SLURM
        is asked (nothing is submitted) with a message that shows the step's real digest.
        The placeholder log is removed again, unless `keep`.
        """
        log = self.root / folder / "slurmjob.log"
        log.write_text(f"{FORMAT_LINE}\nPLACEHOLDER\n2026-01-01T00:00:00.000000 Submitted 1\n")
        result = self.boot()
        assert result.returncode != 0, result.stdout
        if not keep:
            log.remove()
        return result.stdout.split("digest of the step:")[1].split()[0]

    def log(self, folder: str) -> str:
        return (self.root / folder / "slurmjob.log").read_text()


def pytest_collection_modifyitems(items):
    """Mark the tests that run a real workflow `e2e`: they run on both hosts (tools/test.sh)."""
    for item in items:
        if "workflow" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def slurm() -> None:
    """Make sure the local SLURM runs; tools/test.sh starts it before the tests."""
    if shutil.which("sbatch") is None or subprocess.run(["scontrol", "ping"]).returncode != 0:
        pytest.fail("No local SLURM: run `bash tools/local-slurm.sh start` first (as root).")


@pytest.fixture
def workflow(slurm, tmp_path) -> Iterator[Workflow]:
    """A workflow folder with its own scheduler cache and fast polling settings."""
    root = Path(tmp_path) / "wf"
    root.makedirs_p()
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env |= FAST_ENV | {"STEPUP_QUEUE_CACHE_DIR": str(Path(tmp_path) / "cache")}
    # The stepup command of the Python that runs the tests.
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    wf = Workflow(root, env)
    yield wf
    # Leave no job of this test behind in the shared local cluster. squeue, unlike sacct -S,
    # also lists held jobs that never became eligible.
    listed = subprocess.run(
        ["squeue", "--me", "-h", "-o", "%i|%Z"], capture_output=True, text=True
    ).stdout
    ids = [
        job_id
        for job_id, _, workdir in (line.partition("|") for line in listed.splitlines())
        if Path(workdir).startswith(root)
    ]
    if ids:
        subprocess.run(["scancel", *ids], check=False)


# Added for the tests of `stepup canceljobs` and `stepup removejobs`.


@dataclass
class JobTools:
    """Real SLURM jobs with hand-written logs in a workflow folder, and the job tools to run.

    `scancel` and `squeue` are replaced, first on the PATH of the workflow's environment, by
    wrappers that log each call (one line with the arguments) and then run the real command.
    """

    workflow: Workflow
    calls_dir: Path
    ids: list[int] = field(default_factory=list)

    def submit(
        self,
        folder: str,
        *,
        hold: bool = True,
        command: str = "sleep 300",
        cluster: str | None = None,
        records: tuple[str, ...] = (),
        ret: str | None = None,
        interrupted: bool = False,
    ) -> int:
        """Submit a job from `folder` with sbatch and write its log in the real format.

        Parameters
        ----------
        folder
            The job folder, relative to the workflow root (created when missing).
        hold
            Submit the job held, so it stays pending without using resources.
        command
            The job's command (`sbatch --wrap`).
        cluster
            When given, the Submitted record is `ID;CLUSTER`.
        records
            Extra records (e.g. states) appended after the Submitted record.
        ret
            When given, written to `slurmjob.ret`.
        interrupted
            Tag the job with a token (`--comment`) and log only the `Submitting` record, as a
            step killed between sbatch and the `Submitted` record leaves it.
        """
        from stepup.queue.joblog import append_record, start_log

        path = self.workflow.root / folder
        path.makedirs_p()
        args = ["sbatch", "--parsable", "-o", "slurmjob.out", "-e", "slurmjob.err"]
        args += ["--hold"] if hold else []
        token = f"stepup-queue-{os.urandom(8).hex()}"
        args += [f"--comment={token}"] if interrupted else []
        result = subprocess.run(
            [*args, "--wrap", command], cwd=path, capture_output=True, text=True, check=True
        )
        job_id = int(result.stdout.strip().split(";")[0])
        self.ids.append(job_id)
        log = path / "slurmjob.log"
        start_log(log, "0123456789abcdef")
        if interrupted:
            append_record(log, f"Submitting {token}")
        else:
            append_record(log, f"Submitted {job_id}" + ("" if cluster is None else f";{cluster}"))
        for record in records:
            append_record(log, record)
        if ret is not None:
            (path / "slurmjob.ret").write_text(ret)
        return job_id

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run `stepup ARGS` in the workflow root, with the workflow's environment."""
        return subprocess.run(
            ["stepup", *args],
            cwd=self.workflow.root,
            env=self.workflow.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def calls(self, command: str) -> list[str]:
        """The argument lists of all calls of `scancel` or `squeue` so far."""
        path = self.calls_dir / f"{command}.txt"
        return path.read_text().splitlines() if path.exists() else []

    def reset_calls(self):
        for path in self.calls_dir.glob("*.txt"):
            path.remove()


@pytest.fixture
def jobtools(workflow) -> Iterator[JobTools]:
    """Helpers to test the job tools; every job submitted through them is cancelled after."""
    bindir = workflow.root.parent / "bin"
    calls_dir = workflow.root.parent / "calls"
    bindir.makedirs_p()
    calls_dir.makedirs_p()
    for command in ("scancel", "squeue"):
        real = shutil.which(command, path=workflow.env["PATH"])
        wrapper = bindir / command
        wrapper.write_text(
            f'#!/usr/bin/env bash\necho "$*" >> {calls_dir / command}.txt\nexec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
    workflow.env["PATH"] = f"{bindir}:{workflow.env['PATH']}"
    tools = JobTools(workflow, calls_dir)
    try:
        yield tools
    finally:
        if tools.ids:
            subprocess.run(["scancel", *map(str, tools.ids)], check=False)


def submit_as_nobody(folder: Path, command: str = "sleep 300") -> int:
    """Submit a held job as user nobody from `folder`, which is made writable for nobody."""
    folder.makedirs_p()
    folder.chmod(0o777)
    result = subprocess.run(
        ["su", "-s", "/bin/sh", "nobody", "-c", f"sbatch --parsable --hold --wrap '{command}'"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout)


def lock_free(path: Path) -> bool:
    """True when nobody holds the flock on `path`."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
        return True


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    """Poll until predicate() is true; fail with a message after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"Timed out waiting for {what}")


def run_requeued_again(job_id: int):
    """Let a job that SLURM requeued run again now, not after its requeue delay (2 minutes).

    Only from the next second on: slurmd revokes the credential of the run that the requeue
    ended, with a time stamp in whole seconds, and kills a new run whose credential is from
    that same second ("Killing non-startable batch JobId=N: Job credential revoked" in
    slurmctld.log; the run then ends FAILED with exit code 1, seen under load). The job is
    pending only after that revocation.
    """
    wait_for(lambda: scontrol_state(job_id) == "PENDING", 60, f"job {job_id} to be requeued")
    pending = int(time.time())
    wait_for(lambda: int(time.time()) > pending, 5, "the next second of the clock")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def fake_command(bindir: Path, name: str, body: str) -> Path:
    """Put a bash script named `name` first on PATH (bindir must be on the workflow's PATH)."""
    bindir.makedirs_p()
    path = bindir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}")
    path.chmod(0o755)
    return path


def with_bin(workflow: Workflow, bindir: Path) -> dict[str, str]:
    """The PATH of the workflow with bindir first."""
    return {"PATH": f"{bindir}:{workflow.env['PATH']}"}


def unreachable_squeue(workflow: Workflow) -> dict[str, str]:
    """The PATH of the workflow with an squeue that fails as when slurmctld cannot be reached.

    A fake squeue: a real controller is unreachable only by accident.
    """
    bindir = workflow.root.parent / "broken"
    fake_command(
        bindir,
        "squeue",
        "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n",
    )
    return with_bin(workflow, bindir)


# Where a fake sbatch kills the StepUp worker that runs the step (its parent process).
KILL_POINTS = {
    "before_sbatch": 'kill -9 "$PPID"\nexit 1\n',
    "during_sbatch": 'exec 3<&0\n/usr/bin/sbatch "$@" <&3 > /dev/null &\nkill -9 "$PPID"\nwait\n',
    "after_sbatch": 'out=$(/usr/bin/sbatch "$@")\nkill -9 "$PPID"\necho "$out"\n',
}


# Captured output of the real SLURM (see tests/data/README.md).
DATA = Path(__file__).parent / "data"


# What SLURM knew when squeue_me.txt, scontrol_show_job*.txt were captured.
STATES = {
    3: "COMPLETED",
    4: "COMPLETED",
    5: "COMPLETED",
    6: "COMPLETED",
    7: "FAILED",
    8: "RUNNING",
    9: "PENDING",
}
COMMENTS = {
    3: "stepup-queue-ef2c3f0461ab784a",
    6: "stepup-queue-0123456789abcdef",
    8: "stepup-queue-fedcba9876543210",
}


def data(name: str) -> str:
    return (DATA / name).read_text()


def sacct_state(job_id: int) -> str | None:
    """One job's state in the accounting database, `None` when sacct does not know it."""
    record = (sacct_records([job_id], None, 20) or {}).get(job_id)
    return None if record is None else record["State"]


def submit_held_job(folder: Path) -> tuple[str, int]:
    """Submit a held job tagged with a new token from `folder`; return the token and job id."""
    token = "stepup-queue-" + os.urandom(8).hex()
    result = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--hold",
            f"--comment={token}",
            "-o",
            "/dev/null",
            "--wrap",
            "true",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return token, int(result.stdout)


def cancel_tagged(token: str, env: dict[str, str]):
    """Clean up: cancel the jobs whose comment is `token`, in an environment without settings."""
    listed = subprocess.run(
        ["squeue", "--me", "-h", "-o", "%i|%k"], env=env, capture_output=True, text=True
    ).stdout
    ids = [line.split("|")[0] for line in listed.splitlines() if line.endswith(f"|{token}")]
    if ids:
        subprocess.run(["scancel", *ids], env=env, check=False)


@pytest.fixture
def fakebin(tmp_path, monkeypatch):
    """A folder first on PATH, with a function to put a bash script in it."""
    folder = Path(tmp_path) / "bin"
    folder.makedirs_p()
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return lambda name, body: fake_command(folder, name, textwrap.dedent(body))


# A digest for job logs written by hand.
DIGEST = "0123456789abcdef"


def snapshot(root: Path, outputs: bool = True) -> dict[str, bytes]:
    """The contents of all files below root, except StepUp's own database folder.

    With `outputs=False`, `slurmjob.out`, `.err` and `.ret` are left out: a running job that
    is cancelled writes to them itself.
    """
    skip = () if outputs else ("slurmjob.out", "slurmjob.err", "slurmjob.ret")
    return {
        str(path.relpath(root)): path.read_bytes()
        for path in root.walkfiles()
        if ".stepup" not in path.relpath(root).splitall() and path.name not in skip
    }


def table(stdout: str) -> list[dict[str, str]]:
    """The rows of the table printed by a job tool, as {header: cell}, and check its width.

    Each column starts where its header starts. The JOB cell is never empty, so a line with
    an empty one continues the row above: its cells were wrapped and are joined with spaces.
    """
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("ACTION ", "FOLDER ")))
    end = next(i for i, line in enumerate(lines) if line.startswith("Summary: "))
    # Without a terminal and without COLUMNS, the tables fit 80 columns.
    assert all(len(line.rstrip()) <= 80 for line in lines[start:end]), stdout
    found = list(re.finditer(r"\S+", lines[start]))
    names = [match.group() for match in found]
    bounds = [match.start() for match in found] + [None]
    rows = []
    for line in lines[start + 1 : end]:
        cells = dict(zip(names, (line[a:b].strip() for a, b in pairwise(bounds)), strict=True))
        if cells["JOB"] == "" and rows:
            for name, cell in cells.items():
                if cell:
                    rows[-1][name] = f"{rows[-1][name]} {cell}".strip()
        else:
            rows.append(cells)
    return rows


def write_log(folder: Path, *records: str) -> Path:
    """Write a job log in the real format with the given records."""
    folder.makedirs_p()
    path = folder / "slurmjob.log"
    start_log(path, DIGEST)
    for record in records:
        append_record(path, record)
    return path

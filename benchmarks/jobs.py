"""Job scripts and plans of the benchmark workflows, and what one run of them measured.

Three kinds of steps run the same job bodies:

- `queue`: a StepUp Queue `sbatch()` step (of the host that runs the workflow).
- `poll`: the practical limit, a plain step that submits the job with `sbatch` and polls every
  0.2 s for an exit-code file that the job script writes at its end. On StepUp 3 it is a
  `runsh` step. On StepUp 4 it is a small Python script that runs the same shell command:
  StepUp 4 runs such a script in a forkserver child, as it runs StepUp Queue's steps, while
  it runs only about 18 shell steps (`run(..., shell=True)`) at once on two cores, which
  would slow down the limit itself.
- `idle`: a plain step that runs the body itself, without SLURM (for comparison of memory and
  CPU with steps that never imported StepUp Queue).
"""

from dataclasses import dataclass, field

from path import Path

from .common import BuildRun, Host, Workflow, cancel_leftovers, median

__all__ = (
    "POLL_COMMAND",
    "RETRIES",
    "Job",
    "RunResult",
    "build_fresh",
    "measure_run",
    "run_variants",
    "write_jobs",
)

# Descriptions of the runs that failed for reasons outside StepUp Queue and were repeated.
RETRIES: list[str] = []

POLL_SECONDS = 0.2
POLL_COMMAND = (
    "rm -f exitcode && sbatch --parsable -o slurmjob.out -e slurmjob.err slurmjob.sh > /dev/null"
    f" && while [ ! -s exitcode ]; do sleep {POLL_SECONDS}; done && exit $(cat exitcode)"
)
# The poll step on StepUp 4, see the module docstring.
POLL_SCRIPT = (
    "#!/usr/bin/env python3\nimport subprocess, sys\n"
    f"sys.exit(subprocess.run({POLL_COMMAND!r}, shell=True).returncode)\n"
)
HEADER = "#!/usr/bin/env bash\n#SBATCH --job-name=stepup-bench\n#SBATCH --time={minutes}\n"
# The file whose modification time is the end of the job script, per kind of step.
END_FILE = {"queue": "slurmjob.ret", "poll": "exitcode"}


@dataclass(frozen=True)
class Job:
    """A job of a benchmark workflow.

    Attributes
    ----------
    workdir
        Its folder, with a trailing slash, e.g. `job01/`.
    body
        The shell commands of the job script (after the `#SBATCH` lines), or the command of
        an `idle` step.
    inp
        Files (relative to `workdir`) the job reads, made by earlier jobs.
    out
        Files (relative to `workdir`) the job writes.
    shell
        Whether an `idle` step runs `body` in a shell. On StepUp 4, False runs its first word
        as a console script in a forkserver child; StepUp 3 always uses a shell.
    """

    workdir: str
    body: str
    inp: tuple[str, ...] = ()
    out: tuple[str, ...] = ()
    shell: bool = True


def write_jobs(wf: Workflow, kind: str, jobs: list[Job], minutes: int = 5):
    """Write the job scripts and the plan.py of a workflow with one step per job."""
    host = wf.host
    lines = [host.plan_imports()]
    if kind == "queue":
        lines.append("from stepup.queue.api import sbatch")
    for job in jobs:
        (wf.root / job.workdir).makedirs_p()
        if kind == "idle":
            lines.extend(host.static(job.workdir))
            lines.append(host.plain_step(job.body, job.workdir, job.inp, job.out, job.shell))
            continue
        script = HEADER.format(minutes=minutes) + job.body.rstrip() + "\n"
        if kind == "poll":
            script += "echo $? > exitcode\n"
        wf.write(job.workdir + "slurmjob.sh", script, 0o755)
        lines.extend(host.static(job.workdir, ["slurmjob.sh"]))
        if kind == "queue":
            lines.append(f"sbatch({job.workdir!r}, inp={list(job.inp)!r}, out={list(job.out)!r})")
            continue
        inp = ["slurmjob.sh", *job.inp]
        out = ["exitcode", *job.out]
        if host.major < 4:
            lines.append(host.plain_step(POLL_COMMAND, job.workdir, inp, out))
        else:
            wf.write(job.workdir + "poll.py", POLL_SCRIPT, 0o755)
            lines.extend(host.static(job.workdir, ["poll.py"]))
            lines.append(host.plain_step("./poll.py", job.workdir, ["poll.py", *inp], out, False))
    wf.plan("\n".join(lines) + "\n")


@dataclass
class RunResult:
    """What one run of a benchmark workflow with SLURM jobs measured.

    Attributes
    ----------
    kind
        `queue` or `poll` (see the module docstring).
    wall
        Seconds from the start of `stepup build` (or `boot`) to its exit.
    makespan
        SLURM's own makespan: first Submit to last End in sacct (whole seconds).
    latencies
        Per job: seconds from the end of the job script (the modification time of the file
        it writes last) to the line that reports its step's success.
    end_latencies
        Per job: seconds from the End in sacct to that line. Whole seconds in sacct make
        these 0 to 1 s longer than the truth.
    gaps
        Per dependent job: seconds from the End of the job before it to its Submit (sacct).
    fine_gaps
        The same, from the end of the script before it to the call of sbatch.
    queries
        Status queries made by the workflow: calls of squeue and `scontrol show job`.
    phases
        The wall time in five phases (seconds): `start` from the start of `stepup` to the
        start of the first job's step (StepUp's own start-up and the plan); `submit` from
        there to the first sbatch call; `slurm` from there to the end of the last job script
        (SLURM's part, with its queueing and start-up delays); `notice` from there to the last
        step's success; `exit` from there to the exit of `stepup`.
    """

    kind: str
    wall: float
    makespan: float
    latencies: list[float] = field(default_factory=list)
    end_latencies: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    fine_gaps: list[float] = field(default_factory=list)
    queries: int = 0
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.kind}: wall {self.wall:.2f} s, makespan {self.makespan:.0f} s, "
            f"latency median {median(self.latencies):.2f} s, queries {self.queries}"
        )


def measure_run(
    wf: Workflow, kind: str, jobs: list[Job], run: BuildRun, chained: bool = False
) -> RunResult:
    """Collect the figures of a finished run from StepUp's output, the files and sacct.

    Parameters
    ----------
    wf
        The workflow.
    kind
        `queue` or `poll`.
    jobs
        The jobs of the workflow, in the order of their dependencies when `chained`.
    run
        The finished run of the workflow.
    chained
        When True, each job depends on the one before it: the gaps are measured.
    """
    records = {r.workdir.normpath(): r for r in wf.jobs(len(jobs))}
    done = run.reports("SUCCESS")
    sbatch_calls = {call.cwd.normpath(): call.time for call in wf.calls("sbatch")}
    result = RunResult(kind, run.wall, 0.0)
    ends = []
    for job in jobs:
        folder = (wf.root / job.workdir).normpath()
        record = records.get(folder)
        end_file = wf.root / job.workdir / END_FILE[kind]
        end = end_file.mtime if end_file.exists() and end_file.size > 0 else None
        ends.append(end)
        if job.workdir in done:
            if end is not None:
                result.latencies.append(done[job.workdir] - end)
            if record is not None:
                result.end_latencies.append(done[job.workdir] - record.end)
    values = list(records.values())
    if len(values) > 0:
        result.makespan = max(r.end for r in values) - min(r.submit for r in values)
    if chained:
        for prev, job, prev_end in zip(jobs[:-1], jobs[1:], ends[:-1], strict=True):
            before = records.get((wf.root / prev.workdir).normpath())
            after = records.get((wf.root / job.workdir).normpath())
            if before is not None and after is not None:
                result.gaps.append(after.submit - before.end)
            called = sbatch_calls.get((wf.root / job.workdir).normpath())
            if prev_end is not None and called is not None:
                result.fine_gaps.append(called - prev_end)
    known = [end for end in ends if end is not None]
    dones = [done[job.workdir] for job in jobs if job.workdir in done]
    if len(known) == len(dones) == len(jobs) and len(sbatch_calls) > 0:
        first_call = min(sbatch_calls.values())
        started = run.reports("START")
        first_step = min(started[job.workdir] for job in jobs)
        result.phases = {
            "start": first_step - run.t_start,
            "submit": first_call - first_step,
            "slurm": max(known) - first_call,
            "notice": max(dones) - max(known),
            "exit": run.t_end - max(dones),
        }
    result.queries = len(wf.queries()[0])
    return result


def build_fresh(
    parent: Path,
    name: str,
    host: Host,
    kind: str,
    jobs: list[Job],
    *,
    slots: int,
    timeout: float,
    tries: int = 2,
) -> tuple[Workflow, BuildRun]:
    """Make a workflow and run it; when it fails, try again in a fresh folder.

    A run can fail for reasons outside StepUp Queue, e.g. a StepUp worker that does not start
    in time on a busy machine, or a SLURM daemon restarted by someone else. Each retry is
    recorded in `RETRIES` and shown in the table.

    Parameters
    ----------
    parent
        The folder in which the workflow folder is made.
    name
        The name of the workflow folder.
    host
        The install of StepUp (Queue) that runs the workflow.
    kind
        `queue` or `poll` (see the module docstring), or `other`: `queue` steps run by
        another StepUp Queue install, which gets a fresh home folder for its cache.
    jobs
        The jobs of the workflow.
    slots
        The number of steps StepUp runs at once (`-n` of StepUp 3, `-j` of StepUp 4).
    timeout
        Seconds after which a run is stopped.
    tries
        How often to try.
    """
    for attempt in range(tries):
        suffix = "" if attempt == 0 else f"-retry{attempt}"
        wf = Workflow.create(parent, name + suffix, host, kind == "other")
        write_jobs(wf, "poll" if kind == "poll" else "queue", jobs)
        try:
            return wf, wf.build(slots, timeout)
        except (RuntimeError, TimeoutError) as exc:
            cancel_leftovers(wf.root)
            if attempt + 1 == tries:
                raise
            reason = str(exc).splitlines()[0]
            RETRIES.append(f"{wf.root.name}: {reason}")
            print(f"  {wf.root.name} failed ({reason}); trying again", flush=True)
    raise AssertionError("unreachable")


def run_variants(
    parent: Path,
    tag: str,
    jobs: list[Job],
    host: Host,
    *,
    repeats: int,
    slots: int,
    timeout: float,
    others: dict[str, Host] | None = None,
    chained: bool = False,
) -> dict[str, list[RunResult]]:
    """Run one workflow with each kind of step, `repeats` times, alternating the kinds.

    Parameters
    ----------
    parent
        The folder in which the workflow folders are made.
    tag
        The name of the benchmark, used in folder names and progress lines.
    jobs
        The jobs of the workflow.
    host
        The install of StepUp (Queue) that runs the `queue` and `poll` variants.
    repeats
        How often each variant runs.
    slots
        The number of steps StepUp runs at once (`-n` of StepUp 3, `-j` of StepUp 4).
    timeout
        Seconds after which a run is given up.
    others
        Name → other StepUp Queue installs to compare with.
    chained
        True when the jobs depend on each other in the given order (see `measure_run`).

    Returns
    -------
    results
        Variant name (`queue`, `poll` or a name of `others`) → one result per repetition.
    """
    variants = {"queue": ("queue", host), "poll": ("poll", host)}
    variants |= {name: ("other", other) for name, other in (others or {}).items()}
    results: dict[str, list[RunResult]] = {name: [] for name in variants}
    for rep in range(repeats):
        for name, (kind, runner) in variants.items():
            wf, run = build_fresh(
                parent, f"{tag}-{name}-{rep}", runner, kind, jobs, slots=slots, timeout=timeout
            )
            result = measure_run(wf, "poll" if kind == "poll" else "queue", jobs, run, chained)
            line = f"  {tag} {name} #{rep}: {result.summary()}"
            if chained:
                line += ", gaps " + ", ".join(f"{gap:.2f}" for gap in result.fine_gaps)
            print(line, flush=True)
            results[name].append(result)
    return results

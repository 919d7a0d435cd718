"""Scheduler load, CPU and memory of waiting steps: N = 1, 20 and 200 jobs waiting at once.

StepUp Queue workflows with N = 1, 20 and 200 jobs and one workflow of plain steps that only
sleep run side by side, each N with its own cold scheduler cache. The workflows start one after
the other, each once the steps of the previous one wait.

- StepUp 3: N = 200 runs as four workflows of 50 jobs (`stepup boot -n 50`) that share one
  cache, as all workflows of a user do: StepUp Core 3.2 often fails to start 200 workers at
  once on two cores. The plain workflow has 20 `runsh` steps (workers that never import
  StepUp Queue).
- StepUp 4: each N is one workflow (`stepup build -j N`). The plain workflow has as many steps
  as the largest N, each running the console script `sq-bench-sleep` (see `sleeper.py`) in a
  forkserver child, with `-j` the same: so the PSS of its children is comparable with that of
  the StepUp Queue steps, whose forkserver shares its pages with as many children.

Every job waits for a release file that the benchmark writes once all steps have been waiting
for a while, so all steps wait at once for several cache periods.
The jobs of the largest workflow then end at once; those of the others 15 s and more later,
one second apart, which gives the completion latency of long jobs without contention.
(The local node has 64 CPUs: of 200 one-CPU jobs, 64 run and the others stay pending until
the release; all 200 steps wait all the same.)

While all steps wait, the CPU time, RSS and PSS of every process that runs a step (worker or
forkserver child) are sampled from /proc, and the PSS of each workflow's whole process tree.
The status queries (squeue and `scontrol show job` calls) of each workflow are counted with
logging wrappers, and so are its other calls of scontrol and sacct; slurmctld's own RPC counts
(sdiag) are compared before and after. sdiag counts the RPCs of everyone on the cluster: other
SLURM users (e.g. a running test suite) add to them.
Run alone with `python -m benchmarks.load [--stepup PATH]`.
"""

import argparse
import json
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from path import Path

from tests.sdiag import diff_counts, sdiag_counts

from .common import (
    STATUS_RPCS,
    BuildRun,
    Host,
    ProcSample,
    Workflow,
    add_host_option,
    bench_folder,
    cancel_leftovers,
    max_in_window,
    median,
    step_samples,
    tree_pss,
)
from .jobs import RETRIES, Job, write_jobs
from .sleeper import installed_sleeper

__all__ = ("LoadResult", "WorkflowLoad", "import_cost", "run_load")

# Per major version of StepUp: what a process that runs steps has imported before it runs one
# (a StepUp 3 worker; StepUp 4's forkserver), and the module of StepUp Queue's step.
STEP_MODULES = {
    3: ("stepup.core.worker", "stepup.queue.actions"),
    4: ("stepup.core.executor", "stepup.queue.sbatch_and_wait"),
}


@dataclass
class WorkflowLoad:
    """The status queries of the workflow(s) of N waiting jobs.

    Attributes
    ----------
    jobs
        The number of jobs, N.
    queries
        Times of the status queries: calls of squeue and `scontrol show job` (seconds since
        the epoch).
    other_calls
        How often scontrol was called for something else, e.g. `scontrol show config`.
    sacct_calls
        How often sacct was called.
    span
        Seconds from the first sbatch call to the last step's success.
    latencies
        Per job: seconds from the end of its script to its step's success, after the release.
        The jobs of the largest workflow end at once, those of the others 15 s and more after
        the release, one second apart.
    wall
        Seconds from the start of `stepup` to its exit (the longest of the workflows).
    workflows
        The number of workflows sharing one cache (StepUp 3 runs 50 jobs per workflow).
    """

    jobs: int
    queries: list[float]
    other_calls: int
    sacct_calls: int
    span: float
    latencies: list[float]
    wall: float
    workflows: int = 1

    @property
    def per_minute(self) -> float:
        return 60 * len(self.queries) / self.span

    def max_in(self, width: float) -> int:
        """The largest number of queries in any interval of `width` seconds."""
        return max_in_window(self.queries, width)


@dataclass
class LoadResult:
    """Everything the load benchmark measured.

    Attributes
    ----------
    host
        The StepUp that ran the workflows, e.g. `StepUp 4.0.3`.
    workflows
        N → the queries of the workflow(s) with N jobs.
    rpcs
        sdiag's RPC counts of the status RPCs, from before the start to after the end;
        `None` when slurmctld restarted in between.
    duration
        Seconds between the two sdiag snapshots.
    idle
        What the plain steps run, e.g. `20 runsh steps`.
    cpu_queue, cpu_idle
        Per process that runs a step: percent of one core used while waiting, for StepUp
        Queue's steps (all N) and for the plain steps.
    rss_queue, rss_idle
        Per process that runs a step: resident memory (MiB) while waiting, for StepUp Queue's
        steps of the largest N and for the plain steps.
    pss_queue, pss_idle
        The same for the proportional set size (MiB).
    tree_queue, tree_idle
        PSS (MiB) of the whole process trees of the workflow(s) of the largest N, and of the
        plain workflow, divided by their number of steps.
    window
        Seconds over which the CPU use was measured.
    """

    host: str = ""
    workflows: dict[int, WorkflowLoad] = field(default_factory=dict)
    rpcs: dict[str, int] | None = None
    duration: float = 0.0
    idle: str = ""
    cpu_queue: list[float] = field(default_factory=list)
    cpu_idle: list[float] = field(default_factory=list)
    rss_queue: list[float] = field(default_factory=list)
    rss_idle: list[float] = field(default_factory=list)
    pss_queue: list[float] = field(default_factory=list)
    pss_idle: list[float] = field(default_factory=list)
    tree_queue: float = 0.0
    tree_idle: float = 0.0
    window: float = 0.0


def _waiting_jobs(wf: Workflow, jobs: list[Job]) -> int:
    """The number of jobs of a StepUp Queue workflow that were submitted."""
    count = 0
    for job in jobs:
        log = wf.root / job.workdir / "slurmjob.log"
        if log.exists() and "Submitted " in log.read_text():
            count += 1
    return count


def _step_figures(
    first: list[ProcSample], second: list[ProcSample], seconds: float, roots: list[Path]
) -> tuple[list[float], list[float], list[float]]:
    """Percent of a core, RSS and PSS of the processes that ran a step in one of `roots`."""
    before = {s.pid: s for s in first}
    cpu = []
    rss = []
    pss = []
    for sample in second:
        old = before.get(sample.pid)
        in_step = any(sample.cwd.startswith(root) and sample.cwd != root for root in roots)
        if old is None or not in_step or old.cwd != sample.cwd:
            continue
        cpu.append(100 * (sample.cpu - old.cpu) / seconds)
        rss.append(sample.rss)
        pss.append(sample.pss)
    return cpu, rss, pss


@dataclass
class _Part:
    """One running workflow of the load benchmark: (part of) a group of N jobs, or idle steps."""

    size: int | None
    wf: Workflow
    jobs: list[Job]
    run: BuildRun


def _start_waiting(
    parent: Path,
    name: str,
    host: Host,
    *,
    kind: str,
    jobs: list[Job],
    size: int | None,
    cache_dir: Path | None,
    tries: int = 3,
) -> _Part:
    """Start a workflow and return once all its steps wait; try again when StepUp fails.

    StepUp Core 3.2 sometimes fails to connect to a worker that is slow to start on a busy
    machine (ConnectionRefusedError): such a workflow is stopped, its jobs are cancelled,
    and it is started again in a fresh folder.
    """
    for attempt in range(tries):
        suffix = "" if attempt == 0 else f"-retry{attempt}"
        wf = Workflow.create(parent, name + suffix, host, cache_dir=cache_dir)
        write_jobs(wf, kind, jobs, minutes=20)
        run = wf.start(len(jobs))
        deadline = time.monotonic() + 300
        while True:
            if kind == "queue":
                ready = _waiting_jobs(wf, jobs) == len(jobs)
            else:
                ready = len(run.reports("START")) > len(jobs)
            if ready:
                return _Part(size, wf, jobs, run)
            if run.proc.poll() is not None or run.reports("ERROR"):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        reason = run.error() or "not all steps started"
        run.kill()
        cancel_leftovers(wf.root)
        if attempt + 1 == tries:
            raise RuntimeError(
                f"{host.describe(len(jobs))} failed in {wf.root}: {reason}\n{run.text()}"
            )
        RETRIES.append(f"{wf.root.name}: {reason}")
        print(f"  {wf.root.name} failed ({reason}); trying again", flush=True)
    raise AssertionError("unreachable")


def run_load(
    parent: Path,
    host: Host,
    sizes: tuple[int, ...] = (1, 20, 200),
    *,
    wait: float = 100.0,
    window: float = 60.0,
    tag: str = "load",
    part_size: int | None = None,
) -> LoadResult:
    """Run the load benchmark.

    Parameters
    ----------
    parent
        The folder in which the workflow folders are made.
    host
        The install of StepUp (Queue) that runs the workflows.
    sizes
        The numbers of jobs N of the StepUp Queue workflows.
    wait
        Seconds all steps wait together, from the moment all jobs were submitted.
    window
        Seconds over which CPU use is measured, within `wait`.
    tag
        The prefix of the names of the workflow folders.
    part_size
        The largest number of jobs in one workflow: N jobs are spread over as many workflows
        as needed, which share one scheduler cache, as all workflows of a user do.
        By default 50 on StepUp 3 (StepUp Core 3.2 often fails to start 200 workers at once
        on two cores) and no limit on StepUp 4.
    """
    if part_size is None:
        part_size = 50 if host.major < 4 else max(sizes)
    release = parent / f"{tag}.release"
    # A job also ends when the benchmark folder is gone, e.g. after an interrupted benchmark.
    body = f"while [ ! -e {release} ] && [ -d {parent} ]; do sleep 1; done"
    result = LoadResult(host=host.name, window=window)
    parts: list[_Part] = []
    before = sdiag_counts()
    t_before = time.time()
    with ExitStack() as stack:
        if host.major < 4:
            jobs_idle = [Job(f"step{i:03d}/", body) for i in range(20)]
            result.idle = f"{len(jobs_idle)} runsh steps"
        else:
            sleeper = stack.enter_context(installed_sleeper(host))
            command = f"{sleeper} {release} {parent}"
            jobs_idle = [Job(f"step{i:03d}/", command, shell=False) for i in range(max(sizes))]
            result.idle = f"{len(jobs_idle)} steps of the console script {sleeper}"
        try:
            # The largest group first, one workflow at a time, so that fewer steps start at once.
            for size in sorted(sizes, reverse=True):
                # The largest group ends at once, right after the release. The jobs of the others
                # end one second apart, after it: their latency is that of long jobs, undisturbed.
                delays = [0] * size if size == max(sizes) else [15 + i for i in range(size)]
                jobs = [
                    Job(f"job{i:03d}/", body + ("" if delay == 0 else f"\nsleep {delay}"))
                    for i, delay in enumerate(delays)
                ]
                chunks = [jobs[i : i + part_size] for i in range(0, size, part_size)]
                cache_dir = parent / f"{tag}-{size}.cache"
                for k, chunk in enumerate(chunks):
                    name = f"{tag}-{size}" if len(chunks) == 1 else f"{tag}-{size}-part{k}"
                    parts.append(
                        _start_waiting(
                            parent,
                            name,
                            host,
                            kind="queue",
                            jobs=chunk,
                            size=size,
                            cache_dir=cache_dir,
                        )
                    )
            parts.append(
                _start_waiting(
                    parent,
                    f"{tag}-idle",
                    host,
                    kind="idle",
                    jobs=jobs_idle,
                    size=None,
                    cache_dir=None,
                )
            )
            t_ready = time.time()
            print(f"  load: all steps wait after {t_ready - t_before:.1f} s", flush=True)
            time.sleep(3)
            pids = [part.run.proc.pid for part in parts]
            first = step_samples(pids, host)
            t_first = time.time()
            time.sleep(window)
            second = step_samples(pids, host)
            seconds = time.time() - t_first
            largest = [part for part in parts if part.size == max(sizes)]
            result.tree_queue = sum(tree_pss(part.run.proc.pid) for part in largest) / max(sizes)
            result.tree_idle = tree_pss(parts[-1].run.proc.pid) / len(jobs_idle)
            queue_roots = [part.wf.root for part in parts if part.size is not None]
            result.cpu_queue = _step_figures(first, second, seconds, queue_roots)[0]
            # The memory of the steps of the largest N only: on StepUp 4, a child's share of
            # its forkserver's pages depends on the number of children.
            _, result.rss_queue, result.pss_queue = _step_figures(
                first, second, seconds, [part.wf.root for part in largest]
            )
            result.cpu_idle, result.rss_idle, result.pss_idle = _step_figures(
                first, second, seconds, [parts[-1].wf.root]
            )
            time.sleep(max(0.0, t_ready + wait - time.time()))
            release.write_text("")
            t_release = time.time()
            for part in parts:
                part.run.wait(600)
        finally:
            for part in parts:
                part.run.kill()
    after = sdiag_counts()
    result.duration = time.time() - t_before
    counts = diff_counts(before, after)
    if counts is not None:
        result.rpcs = {k: v for k, v in counts.items() if k in STATUS_RPCS}
    for size in sizes:
        group = [part for part in parts if part.size == size]
        latencies = []
        queries = []
        other_calls = 0
        sacct_calls = 0
        first_submit = []
        last_done = []
        for part in group:
            done = part.run.reports("SUCCESS")
            if len(done) <= len(part.jobs):
                raise RuntimeError(f"Not all steps succeeded in {part.wf.root}")
            for job in part.jobs:
                ret = part.wf.root / job.workdir / "slurmjob.ret"
                if job.workdir in done and ret.exists() and ret.mtime >= t_release - 1:
                    latencies.append(done[job.workdir] - ret.mtime)
            status, other = part.wf.queries()
            queries += [call.time for call in status]
            other_calls += len(other)
            sacct_calls += len(part.wf.calls("sacct"))
            first_submit.append(min(c.time for c in part.wf.calls("sbatch")))
            last_done.append(max(done[job.workdir] for job in part.jobs))
        span = max(last_done) - min(first_submit)
        wall = max(part.run.wall for part in group)
        result.workflows[size] = WorkflowLoad(
            size, sorted(queries), other_calls, sacct_calls, span, latencies, wall, len(group)
        )
        print(
            f"  load N={size} ({len(group)} workflow(s)): {len(queries)} queries in {span:.0f} s,"
            f" latency median {median(latencies):.2f} s, wall {wall:.0f} s",
            flush=True,
        )
    return result


_IMPORT_COST = """
import importlib, json, re, sys
def rss():
    with open("/proc/self/status") as fh:
        return int(re.search(r"^VmRSS:\\s+(\\d+)", fh.read(), re.MULTILINE).group(1)) / 1024
importlib.import_module(sys.argv[1])
base = rss()
importlib.import_module(sys.argv[2])
print(json.dumps([base, rss()]))
"""


def import_cost(host: Host) -> tuple[float, float]:
    """Resident memory (MiB) of a fresh Python of the host that imported what a process that
    runs steps imports before it runs one, and after it also imported StepUp Queue's step."""
    out = subprocess.run(
        [host.python, "-c", _IMPORT_COST, *STEP_MODULES[host.major]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    base, with_queue = json.loads(out)
    return base, with_queue


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=100.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--sizes", default="1,20,200")
    parser.add_argument("--part-size", type=int, default=None)
    add_host_option(parser)
    args = parser.parse_args()
    host = Host.detect(args.stepup)
    sizes = tuple(int(word) for word in args.sizes.split(","))
    with bench_folder() as parent:
        result = run_load(
            parent, host, sizes, wait=args.wait, window=args.window, part_size=args.part_size
        )
    print(result.rpcs)
    print("CPU % queue", median(result.cpu_queue), max(result.cpu_queue, default=0))
    print("CPU % idle", median(result.cpu_idle), max(result.cpu_idle, default=0))
    print("RSS queue/idle", median(result.rss_queue), median(result.rss_idle))
    print("PSS queue/idle", median(result.pss_queue), median(result.pss_idle))
    print("PSS of the trees per step queue/idle", result.tree_queue, result.tree_idle)
    print("import cost", import_cost(host))


if __name__ == "__main__":
    main()

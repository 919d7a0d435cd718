"""Open-file limits: N single sbatch() steps waiting at once under `ulimit -n 1024`.

Two workflows of N job folders each, both run with `stepup build -j N`
(StepUp 4) or `stepup boot -n N` (StepUp 3):

- `soft`: under `ulimit -S -n 1024` with the higher hard limit of the machine, as on most
  login nodes. StepUp Queue raises the soft limit to the hard one in `stepup build` before the
  director starts: all N jobs must succeed, each submitted once.
- `hard`: under `ulimit -n 1024` (soft and hard). When N steps need more open files in
  StepUp's director than that, the plan must refuse before any job is submitted, naming the
  limit; no job of the workflow may appear in sacct.

While the first workflow runs, the open files of StepUp's director (`/proc/PID/fd`) are
sampled once per second. Without StepUp Queue's fix, the director of StepUp 4.0.3 died at about
330 waiting steps with `Too many open files`, with the submitted jobs left in the queue.
Every job waits until all N jobs of its workflow are queued, then sleeps 1 s: so all N steps
wait at once, as when jobs pend for long (the local node runs 64 one-CPU jobs at once).
Run alone, under the exclusive cluster lock (it floods the queue):
`flock -x /tmp/sq-cluster.lock .venv/bin/python -m benchmarks.limits --size 1000`.
"""

import argparse
import resource
import subprocess
import threading
import time
from collections import Counter

from path import Path

from stepup.queue.openfiles import files_needed

from .common import Host, Workflow, add_host_option, bench_folder, director_files

__all__ = ("run_limits",)

LIMIT = 1024
# Every job waits until all N are queued (see `_release_when_queued`), then sleeps 1 s: so all
# N steps wait at once, as when the jobs pend for a long time.
JOB = "#!/usr/bin/env bash\nuntil [ -e ../release ]; do sleep 1; done\nsleep 1\n"


def _queued(root: Path) -> int:
    listed = subprocess.run(["squeue", "-h", "-o", "%Z"], capture_output=True, text=True).stdout
    return sum(Path(line).startswith(root) for line in listed.split())


def _release_when_queued(workflow: Workflow, size: int, done: threading.Event) -> float | None:
    """Write the release file once `size` jobs of the workflow are queued; when that was."""
    while not done.is_set():
        if _queued(workflow.root) >= size:
            workflow.write("release", "")
            return time.time()
        time.sleep(1)
    return None


def _sweep(parent: Path, name: str, host: Host, size: int) -> Workflow:
    workflow = Workflow.create(parent, name, host)
    lines = [host.plan_imports(), "from stepup.queue.api import sbatch"]
    for i in range(size):
        folder = f"job{i:04d}/"
        workflow.write(folder + "slurmjob.sh", JOB, 0o755)
        lines += [*host.static(folder, ["slurmjob.sh"]), f"sbatch({folder!r})"]
    workflow.plan("\n".join(lines) + "\n")
    return workflow


def run_limits(host: Host, size: int, parent: Path, timeout: float) -> dict[str, object]:
    """Run both workflows of `size` steps and return their figures."""
    hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = _sweep(parent, "soft", host, size)
    run = soft.start(size, ulimit=f"-S -n {LIMIT}")
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], director_files(run.proc.pid))
            time.sleep(1)

    released = [None]

    def release():
        released[0] = _release_when_queued(soft, size, done)

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, release)]
    for thread in threads:
        thread.start()
    soft_rc = run.wait(timeout)
    done.set()
    for thread in threads:
        thread.join()
    jobs = soft.jobs(size, timeout=120)
    per_folder = Counter(job.workdir for job in jobs)
    soft_result = {
        "exit code": soft_rc,
        "wall (s)": round(run.wall, 1),
        "all N jobs queued at once after (s)": None
        if released[0] is None
        else round(released[0] - run.t_start, 1),
        "steps that succeeded": len(run.reports("SUCCESS")) - 1,  # without plan.py
        "jobs in sacct": len(jobs),
        "jobs COMPLETED": sum(job.state == "COMPLETED" for job in jobs),
        "folders with more than one job": sum(count > 1 for count in per_folder.values()),
        "sbatch calls": len(soft.calls("sbatch")),
        "peak open files of the director": peak[0],
        "raised message": any("raised the soft limit" in line for _, line in run.lines),
    }

    hard = _sweep(parent, "hard", host, size)
    run = hard.start(size, ulimit=f"-n {LIMIT}")
    done = threading.Event()
    releaser = threading.Thread(target=_release_when_queued, args=(hard, size, done), daemon=True)
    releaser.start()
    hard_rc = run.wait(timeout)
    done.set()
    releaser.join()
    text = run.text()
    refusal_expected = files_needed(size) > LIMIT
    if refusal_expected:
        time.sleep(5)  # slurmdbd would record a submission a moment later
    hard_result = {
        "refusal expected (64 + 3 N > limit)": refusal_expected,
        "exit code": hard_rc,
        "wall (s)": round(run.wall, 1),
        "refused": "Refusing to submit" in text,
        "names the limit": f"{LIMIT} (soft) and {LIMIT} (hard)" in text,
        "jobs in sacct": len(hard.jobs(0 if refusal_expected else size, timeout=120)),
        "sbatch calls": len(hard.calls("sbatch")),
        "message": next((line.strip() for line in text.splitlines() if "Refusing" in line), ""),
    }
    return {
        "host": host.name,
        "N": size,
        "hard limit of the machine": hard_limit,
        "files needed by the director": files_needed(size),
        "soft": soft_result,
        "hard": hard_result,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200, help="N, the number of job folders.")
    parser.add_argument("--timeout", type=float, default=900, help="Per workflow, in seconds.")
    parser.add_argument("--keep", action="store_true", help="Keep the workflow folders.")
    add_host_option(parser)
    args = parser.parse_args()
    host = Host.detect(args.stepup)
    with bench_folder(args.keep) as parent:
        result = run_limits(host, args.size, parent, args.timeout)
    print(f"{result['host']}, N = {result['N']}, `ulimit -n {LIMIT}`")
    print(f"  hard limit of the machine: {result['hard limit of the machine']}")
    print(f"  open files the director needs (64 + 3 N): {result['files needed by the director']}")
    for name, what in ("soft", f"ulimit -S -n {LIMIT}"), ("hard", f"ulimit -n {LIMIT}"):
        print(f"  {what}:")
        for key, value in result[name].items():
            print(f"    {key}: {value}")


if __name__ == "__main__":
    main()

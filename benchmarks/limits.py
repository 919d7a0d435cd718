"""Open-file limits: N single sbatch() steps waiting at once under `ulimit -n 1024`.

Two workflows of N job folders each (`sleep 1` jobs), both run with `stepup build -j N`
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
The local node has 64 CPUs: of N one-CPU jobs, 64 run at once and the others pend, so all
steps wait at once for a while. Run alone, under the exclusive cluster lock (it floods the
queue): `flock -x /tmp/sq-cluster.lock .venv/bin/python -m benchmarks.limits --size 1000`.
"""

import argparse
import resource
import threading
import time
from collections import Counter

from path import Path

from stepup.queue.openfiles import files_needed

from .common import Host, Workflow, add_host_option, bench_folder, director_files

__all__ = ("run_limits",)

LIMIT = 1024


def _sweep(parent: Path, name: str, host: Host, size: int) -> Workflow:
    workflow = Workflow.create(parent, name, host)
    lines = [host.plan_imports(), "from stepup.queue.api import sbatch"]
    for i in range(size):
        folder = f"job{i:04d}/"
        workflow.write(folder + "slurmjob.sh", "#!/usr/bin/env bash\nsleep 1\n", 0o755)
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

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    soft_rc = run.wait(timeout)
    done.set()
    sampler.join()
    jobs = soft.jobs(size, timeout=120)
    per_folder = Counter(job.workdir for job in jobs)
    soft_result = {
        "exit code": soft_rc,
        "wall (s)": round(run.wall, 1),
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
    hard_rc = run.wait(timeout)
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

"""Job arrays: one `sbatch_array()` step for N job folders, beside plain `sbatch --array --wait`.

Three runs of the same N job folders (each job appends its array task to `runs.txt` in its
folder and sleeps a moment), side by side in one call:

- `plain`: what a user would do by hand, the ideal: one `sbatch --array=0-(K-1) --wait` per
  chunk of at most MaxArraySize folders (all chunks at once), each task changing into its
  folder and running its script. No StepUp.
- `array`: one `sbatch_array()` step in a StepUp workflow under `ulimit -n 1024` and `-j 4`,
  run to the end once. Peak PSS of all StepUp processes (sampled each second), sbatch calls,
  status queries (logging wrappers of squeue/scontrol) per 30 s.
- `killed`: the same workflow in a fresh folder, killed (the whole process tree, as a dying
  login node would) at a random moment while tasks wait, `--kills` times, and then run to the
  end. Every folder must have run exactly once: 0 duplicate and 0 missing tasks.

Run alone, under the exclusive cluster lock (it floods the queue):
`flock -x /tmp/sq-cluster.lock .venv/bin/python -m benchmarks.arrays --size 5000`.
"""

import argparse
import random
import subprocess
import threading
import time

from path import Path

from .common import (
    BuildRun,
    Host,
    Workflow,
    add_host_option,
    bench_folder,
    max_in_window,
    tree_pss,
)

__all__ = ("run_arrays",)

LIMIT = 1024
SLOTS = 4
JOB = '#!/usr/bin/env bash\necho "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" >> runs.txt\n'
JOB += "sleep {sleep}\n"
# Runs task i of a chunk: the folder on line OFFSET + i + 1 of folders.txt.
PLAIN_TASK = """\
#!/usr/bin/env bash
folder=$(sed -n "$(($1 + SLURM_ARRAY_TASK_ID + 1))p" folders.txt)
cd "$folder" || exit 1
exec bash slurmjob.sh > slurmjob.out 2> slurmjob.err
"""


def max_array_size() -> int:
    """SLURM's MaxArraySize, from `scontrol show config`."""
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    ).stdout
    for line in config.splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "MaxArraySize":
            return int(value.strip())
    raise RuntimeError("scontrol show config lists no MaxArraySize")


def _folders(size: int) -> list[str]:
    return [f"job{i:05d}/" for i in range(size)]


def _write_jobs(workflow: Workflow, size: int, sleep: float):
    for folder in _folders(size):
        workflow.write(folder + "slurmjob.sh", JOB.format(sleep=sleep), 0o755)


def _array_workflow(parent: Path, name: str, host: Host, size: int, sleep: float) -> Workflow:
    workflow = Workflow.create(parent, name, host)
    _write_jobs(workflow, size, sleep)
    statics = "static(*folders)\n" if host.major < 4 else ""
    workflow.plan(
        f"{host.plan_imports()}\n"
        "from stepup.queue.api import sbatch_array\n"
        f"folders = [f'job{{i:05d}}/' for i in range({size})]\n"
        f"{statics}"
        "static(*[folder + 'slurmjob.sh' for folder in folders])\n"
        "sbatch_array(folders)\n"
    )
    return workflow


def _runs(workflow: Workflow, size: int) -> tuple[int, int]:
    """(folders whose job ran more than once, folders whose job never ran)."""
    counts = []
    for folder in _folders(size):
        path = workflow.root / folder / "runs.txt"
        counts.append(len(path.read_text().split()) if path.exists() else 0)
    return sum(count > 1 for count in counts), sum(count == 0 for count in counts)


def run_plain(parent: Path, host: Host, size: int, sleep: float) -> dict[str, object]:
    """All folders as plain job arrays of at most MaxArraySize tasks, submitted at once."""
    workflow = Workflow.create(parent, "plain", host)
    _write_jobs(workflow, size, sleep)
    workflow.write("folders.txt", "".join(f"{f}\n" for f in _folders(size)))
    workflow.write("task.sh", PLAIN_TASK, 0o755)
    chunk = max_array_size()
    t_start = time.time()
    procs = []
    for first in range(0, size, chunk):
        tasks = f"--array=0-{min(chunk, size - first) - 1}"
        command = ["sbatch", "--wait", tasks, "-o", "/dev/null", "task.sh", str(first)]
        procs.append(subprocess.Popen(command, cwd=workflow.root, stdout=subprocess.DEVNULL))
    codes = [proc.wait() for proc in procs]
    wall = time.time() - t_start
    duplicates, missing = _runs(workflow, size)
    return {
        "exit codes": sorted(set(codes)),
        "wall (s)": round(wall, 1),
        "sbatch calls": len(procs),
        "duplicate tasks": duplicates,
        "missing tasks": missing,
    }


def _start(workflow: Workflow) -> BuildRun:
    return workflow.start(SLOTS, ulimit=f"-n {LIMIT}")


def run_array(parent: Path, host: Host, size: int, sleep: float, timeout: float) -> dict:
    """One sbatch_array() workflow, run to the end once, with its memory sampled."""
    workflow = _array_workflow(parent, "array", host, size, sleep)
    run = _start(workflow)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss(run.proc.pid))
            time.sleep(1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    returncode = run.wait(timeout)
    done.set()
    sampler.join()
    status, _ = workflow.queries()
    duplicates, missing = _runs(workflow, size)
    queries_per_30s = max_in_window([call.time for call in status], 30)
    return {
        "exit code": returncode,
        "wall (s)": round(run.wall, 1),
        "peak PSS of all StepUp processes (MiB)": round(peak[0], 1),
        "sbatch calls": len(workflow.calls("sbatch")),
        "status queries": len(status),
        "most status queries in 30 s": queries_per_30s,
        "duplicate tasks": duplicates,
        "missing tasks": missing,
    }


def run_killed(
    parent: Path, host: Host, size: int, *, sleep: float, kills: int, timeout: float
) -> dict[str, object]:
    """The workflow killed at random moments while tasks wait, then run to the end."""
    workflow = _array_workflow(parent, "killed", host, size, sleep)
    rng = random.Random(size)
    moments = []
    for _ in range(kills):
        run = _start(workflow)
        moment = rng.uniform(1.0, 15.0)
        time.sleep(moment)
        if run.proc.poll() is not None:
            break
        run.kill()
        moments.append(round(moment, 1))
    run = _start(workflow)
    returncode = run.wait(timeout)
    duplicates, missing = _runs(workflow, size)
    return {
        "kills (seconds after each start)": moments,
        "exit code of the last run": returncode,
        "sbatch calls": len(workflow.calls("sbatch")),
        "duplicate tasks": duplicates,
        "missing tasks": missing,
    }


def run_arrays(
    host: Host, size: int, parent: Path, *, sleep: float, kills: int, timeout: float
) -> dict[str, object]:
    """All three runs, one after the other, and their figures."""
    plain = run_plain(parent, host, size, sleep)
    array = run_array(parent, host, size, sleep, timeout)
    return {
        "host": host.name,
        "N": size,
        "MaxArraySize": max_array_size(),
        "plain": plain,
        "array": array,
        "wall time ratio array / plain": round(array["wall (s)"] / plain["wall (s)"], 3),
        "killed": run_killed(parent, host, size, sleep=sleep, kills=kills, timeout=timeout),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=500, help="N, the number of job folders.")
    parser.add_argument("--sleep", type=float, default=2, help="Seconds each job sleeps.")
    parser.add_argument("--kills", type=int, default=10, help="Kills of the killed workflow.")
    parser.add_argument("--timeout", type=float, default=1800, help="Per run, in seconds.")
    parser.add_argument("--keep", action="store_true", help="Keep the workflow folders.")
    add_host_option(parser)
    args = parser.parse_args()
    host = Host.detect(args.stepup)
    with bench_folder(args.keep) as parent:
        result = run_arrays(
            host,
            args.size,
            parent,
            sleep=args.sleep,
            kills=args.kills,
            timeout=args.timeout,
        )
    print(f"{result['host']}, N = {result['N']}, MaxArraySize = {result['MaxArraySize']}")
    for name, what in (
        ("plain", "plain sbatch --array --wait, all chunks at once"),
        ("array", f"one sbatch_array() step, ulimit -n {LIMIT}, {SLOTS} slots"),
        ("killed", f"the same, killed {args.kills} times at random and run again"),
    ):
        print(f"  {what}:")
        for key, value in result[name].items():
            print(f"    {key}: {value}")
    print(f"  wall time ratio array / plain: {result['wall time ratio array / plain']}")


if __name__ == "__main__":
    main()

"""Chain of dependent jobs: each job reads the output of the one before it and sleeps 2 s.

The gap between one job's End and the next job's Submit (both in sacct) is the time a user
waits for StepUp Queue to notice the end and submit the next job.
Run alone with `python -m benchmarks.chain`.
"""

import argparse

from path import Path

from .common import bench_folder, default_stepup
from .jobs import Job, RunResult, boot_fresh, measure_run

__all__ = ("chain_jobs", "run_chain")


def chain_jobs(count: int, seconds: float) -> list[Job]:
    """`count` jobs, each reading the result of the one before it."""
    jobs = []
    for i in range(count):
        inp = () if i == 0 else (f"../job{i - 1:03d}/result.txt",)
        read = "" if i == 0 else f"cat {inp[0]} > /dev/null && "
        body = f"{read}sleep {seconds:g} && echo {i} > result.txt"
        jobs.append(Job(f"job{i:03d}/", body, inp, ("result.txt",)))
    return jobs


def run_chain(
    parent: Path,
    repeats: int = 1,
    count: int = 5,
    seconds: float = 2.0,
    others: dict[str, Path] | None = None,
) -> dict[str, list[RunResult]]:
    """Run the chain with each kind of step, `repeats` times (see `run_overhead`)."""
    variants = {"queue": ("queue", default_stepup()), "poll": ("poll", default_stepup())}
    variants |= {name: ("other", stepup) for name, stepup in (others or {}).items()}
    jobs = chain_jobs(count, seconds)
    results: dict[str, list[RunResult]] = {name: [] for name in variants}
    for rep in range(repeats):
        for name, (kind, stepup) in variants.items():
            wf, run = boot_fresh(
                parent, f"chain-{name}-{rep}", stepup, kind, jobs, workers=2, timeout=600
            )
            result = measure_run(wf, "poll" if kind == "poll" else "queue", jobs, run, True)
            gaps = ", ".join(f"{gap:.2f}" for gap in result.fine_gaps)
            print(f"  chain {name} #{rep}: {result.summary()}, gaps {gaps}", flush=True)
            results[name].append(result)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with bench_folder() as parent:
        run_chain(parent, args.repeats)


if __name__ == "__main__":
    main()

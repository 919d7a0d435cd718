"""Chain of dependent jobs: each job reads the output of the one before it and sleeps 2 s.

The gap between one job's End and the next job's Submit (both in sacct) is the time a user
waits for StepUp Queue to notice the end and submit the next job.
Run alone with `python -m benchmarks.chain [--stepup PATH]`.
"""

import argparse

from path import Path

from .common import Host, add_host_option, bench_folder
from .jobs import Job, RunResult, run_variants

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
    host: Host,
    *,
    repeats: int = 1,
    count: int = 5,
    seconds: float = 2.0,
    others: dict[str, Host] | None = None,
) -> dict[str, list[RunResult]]:
    """Run the chain with each kind of step, `repeats` times (see `run_overhead`)."""
    jobs = chain_jobs(count, seconds)
    return run_variants(
        parent,
        "chain",
        jobs,
        host,
        repeats=repeats,
        slots=2,
        timeout=600,
        others=others,
        chained=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    add_host_option(parser)
    args = parser.parse_args()
    with bench_folder() as parent:
        run_chain(parent, Host.detect(args.stepup), repeats=args.repeats)


if __name__ == "__main__":
    main()

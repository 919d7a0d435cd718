"""Workflow overhead: 20 independent jobs that each sleep 2 s, with as many steps at once.

The same jobs run as StepUp Queue `sbatch()` steps and as plain steps that poll for an
exit-code file every 0.2 s (the practical limit), alternating, in fresh folders each time.
Run alone with `python -m benchmarks.overhead [--stepup PATH]`.
"""

import argparse

from path import Path

from .common import Host, add_host_option, bench_folder
from .jobs import Job, RunResult, run_variants

__all__ = ("independent_jobs", "run_overhead")


def independent_jobs(count: int, seconds: float) -> list[Job]:
    """`count` jobs that each sleep `seconds`."""
    return [Job(f"job{i:03d}/", f"sleep {seconds:g}") for i in range(count)]


def run_overhead(
    parent: Path,
    host: Host,
    *,
    repeats: int = 1,
    count: int = 20,
    seconds: float = 2.0,
    others: dict[str, Host] | None = None,
) -> dict[str, list[RunResult]]:
    """Run the independent-jobs workflow with each kind of step, `repeats` times.

    Parameters
    ----------
    parent
        The folder in which the workflow folders are made.
    host
        The install of StepUp (Queue) that runs the workflows.
    repeats
        How often each variant runs (alternating).
    count
        The number of jobs, and of steps StepUp runs at once.
    seconds
        How long each job sleeps.
    others
        Name → other StepUp Queue installs to compare with.

    Returns
    -------
    results
        Variant name (`queue`, `poll` or a name of `others`) → one result per repetition.
    """
    jobs = independent_jobs(count, seconds)
    return run_variants(
        parent, "overhead", jobs, host, repeats=repeats, slots=count, timeout=300, others=others
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    add_host_option(parser)
    args = parser.parse_args()
    with bench_folder() as parent:
        run_overhead(parent, Host.detect(args.stepup), repeats=args.repeats)


if __name__ == "__main__":
    main()

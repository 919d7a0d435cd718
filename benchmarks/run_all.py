"""Run all benchmarks of StepUp Queue on the local SLURM and print one table of figures.

Usage (from the root of the source tree, with the local SLURM running)::

    .venv/bin/python -m benchmarks.run_all            # about 6 minutes
    .venv/bin/python -m benchmarks.run_all --quick    # about 3 minutes
    .venv/bin/python -m benchmarks.run_all --other orig=/path/to/venv/bin/stepup

StepUp Queue runs with its default settings; only `STEPUP_QUEUE_CACHE_DIR` points to a fresh
folder per workflow, so every workflow starts with a cold scheduler cache.
See `benchmarks/README.md` for what each figure means.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from importlib.metadata import version

from path import Path

from .chain import run_chain
from .common import (
    bench_folder,
    cancel_leftovers,
    median,
    percentile,
    sdiag_counts,
    tests_running,
)
from .jobs import RETRIES, RunResult
from .load import LoadResult, import_cost, run_load
from .overhead import run_overhead
from .rpc import RPCProfile, profile_queries

__all__ = ("main",)

# Targets of the issue "notice a finished job within seconds, without loading the scheduler".
TARGET_OVERHEAD = 1.05
TARGET_MEDIAN = 1.0
TARGET_P95 = 3.0
TARGET_PER_30S = 1
TARGET_CPU = 1.0
TARGET_RSS_MB = 2.0
MB_PER_MIB = 1.048576


class NoiseWatch:
    """Checks every few seconds, in the background, whether some pytest runs."""

    def __init__(self, interval: float = 5.0):
        self.seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(interval,), daemon=True)
        self._thread.start()

    def _watch(self, interval: float):
        while not self._stop.is_set():
            self.seen = self.seen or tests_running()
            self._stop.wait(interval)

    def stop(self):
        self._stop.set()
        self._thread.join()


class Table:
    """Rows of (measurement, value, target, verdict), printed as one Markdown table."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []
        self.misses: list[str] = []

    def section(self, title: str):
        self.rows.append((f"**{title}**", "", "", ""))

    def add(self, what: str, value: str, target: str = "", ok: bool | None = None):
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        if ok is False:
            self.misses.append(what)
        self.rows.append((what, value, target, verdict))

    def render(self) -> str:
        header = ("Measurement", "Value", "Target", "Verdict")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(4)]
        lines = []
        for i, row in enumerate([header, *self.rows]):
            cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            lines.append("| " + " | ".join(cells) + " |")
            if i == 0:
                lines.append("| " + " | ".join("-" * w for w in widths) + " |")
        return "\n".join(lines)


def _all(results: list[RunResult], attr: str) -> list[float]:
    return [value for result in results for value in getattr(result, attr)]


def _s(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def _latency_rows(table: Table, name: str, results: list[RunResult], target: bool):
    lat = _all(results, "latencies")
    end_lat = _all(results, "end_latencies")
    if len(lat) > 0:
        med, p95 = median(lat), percentile(lat, 95)
        table.add(
            f"{name}, short jobs: script end → step done, median / p95 (n={len(lat)})",
            f"{_s(med)} / {_s(p95)} s",
            f"≤ {TARGET_MEDIAN:g} / ≤ {TARGET_P95:g} s" if target else "",
            (med <= TARGET_MEDIAN and p95 <= TARGET_P95) if target else None,
        )
    if len(end_lat) > 0:
        table.add(
            f"{name}, short jobs: sacct End → step done, median / p95 (n={len(end_lat)})",
            f"{_s(median(end_lat))} / {_s(percentile(end_lat, 95))} s",
        )


def build_table(
    overhead: dict[str, list[RunResult]],
    chain: dict[str, list[RunResult]],
    *,
    load: LoadResult,
    profiles: list[RPCProfile],
    imports: tuple[float, float],
    settings: dict[str, object],
) -> Table:
    """Turn all measurements into one table with the targets of the issue."""
    table = Table()
    n_jobs = settings["overhead_jobs"]
    table.section(
        f"Workflow overhead: {n_jobs} jobs x {settings['job_seconds']:g} s, "
        f"stepup boot -n {n_jobs}, median of {len(overhead['queue'])} run(s)"
    )
    walls = {name: median([r.wall for r in results]) for name, results in overhead.items()}
    spans = {name: median([r.makespan for r in results]) for name, results in overhead.items()}
    table.add("wall time, StepUp Queue", f"{_s(walls['queue'])} s")
    table.add("wall time, practical limit (runsh + sbatch + 0.2 s poll)", f"{_s(walls['poll'])} s")
    table.add(
        "SLURM makespan (sacct first Submit → last End), queue / limit",
        f"{spans['queue']:.0f} / {spans['poll']:.0f} s",
    )
    # Each pair ran back to back, under the same conditions: the median of the pairs' ratios.
    pairs = zip(overhead["queue"], overhead["poll"], strict=True)
    ratios = [queue.wall / poll.wall for queue, poll in pairs]
    ratio = median(ratios)
    table.add(
        "overhead ratio: StepUp Queue / practical limit, median (min-max) of pairs",
        f"{ratio:.3f} ({min(ratios):.2f}-{max(ratios):.2f})",
        f"≤ {TARGET_OVERHEAD:g}",
        ratio <= TARGET_OVERHEAD,
    )
    # SLURM starts a burst of jobs 0 to 3 s after their submission, at random, and StepUp's
    # start-up varies by half a second: both dominate the ratio. Hence the wall time in phases.
    names = ("start", "submit", "slurm", "notice", "exit")
    phases = {
        name: {phase: median([r.phases[phase] for r in results if r.phases]) for phase in names}
        for name, results in overhead.items()
    }
    for phase, what in [
        ("start", "boot → first job step starts (StepUp, plan)"),
        ("submit", "→ first sbatch call"),
        ("slurm", "→ last script end (SLURM)"),
        ("notice", "→ last step done"),
        ("exit", "→ exit"),
    ]:
        table.add(
            f"phase {what}, median: queue / limit",
            f"{_s(phases['queue'][phase])} / {_s(phases['poll'][phase])} s",
        )
    # Phases that do not depend on the kind of step: their median over all runs, for both.
    common = {
        phase: median([r.phases[phase] for v in overhead.values() for r in v if r.phases])
        for phase in ("start", "slurm")
    }

    def total(name: str) -> float:
        return sum(common.get(phase, phases[name][phase]) for phase in names)

    adjusted = total("queue") / total("poll")
    table.add(
        "overhead ratio from the median phases, start-up and SLURM equal for both",
        f"{adjusted:.3f}",
        f"≤ {TARGET_OVERHEAD:g}",
        adjusted <= TARGET_OVERHEAD,
    )
    table.add(
        "wall / SLURM makespan: StepUp Queue, practical limit",
        f"{_s(walls['queue'] / spans['queue'])}, {_s(walls['poll'] / spans['poll'])}",
    )
    for name in overhead:
        if name not in ("queue", "poll"):
            table.add(
                f"wall time, {name} (other install); StepUp Queue / {name}",
                f"{_s(walls[name])} s; {_s(walls['queue'] / walls[name])}",
            )

    table.section("Completion latency: short jobs (overhead, chain), long jobs (load)")
    for name, results in overhead.items():
        label = {"queue": "StepUp Queue", "poll": "practical limit"}.get(name, name)
        _latency_rows(table, label, results + chain.get(name, []), name == "queue")
    n_max = max(load.workflows)
    long = [x for size, wl in load.workflows.items() if size != n_max for x in wl.latencies]
    if long:
        med, p95 = median(long), percentile(long, 95)
        table.add(
            f"StepUp Queue, long jobs (waited > {settings['load_wait']:g} s, ends 1 s apart): "
            f"script end → step done, median / p95 (n={len(long)})",
            f"{_s(med)} / {_s(p95)} s",
            f"≤ {TARGET_MEDIAN:g} / ≤ {TARGET_P95:g} s",
            med <= TARGET_MEDIAN and p95 <= TARGET_P95,
        )

    n_chain = settings["chain_jobs"]
    table.section(
        f"Chain of {n_chain} dependent jobs x {settings['job_seconds']:g} s, "
        f"{len(chain['queue'])} run(s)"
    )
    for name, results in chain.items():
        label = {"queue": "StepUp Queue", "poll": "practical limit"}.get(name, name)
        gaps = _all(results, "gaps")
        fine = _all(results, "fine_gaps")
        table.add(
            f"{label}: End → next Submit (sacct, whole s), mean / max",
            f"{_s(sum(gaps) / len(gaps))} / {max(gaps):.0f} s" if gaps else "n/a",
        )
        table.add(
            f"{label}: script end → next sbatch call, mean / max",
            f"{_s(sum(fine) / len(fine))} / {_s(max(fine))} s" if fine else "n/a",
        )
        table.add(f"{label}: wall time", f"{_s(median([r.wall for r in results]))} s")

    table.section(
        f"Scheduler load: all steps wait ≥ {settings['load_wait']:g} s at once, "
        "one cold cache per N"
    )
    for size, wl in load.workflows.items():
        split = f" ({wl.workflows} workflows, 1 cache)" if wl.workflows > 1 else ""
        table.add(
            f"N = {size}{split}: status queries in {wl.span:.0f} s; per minute; max in 30 s",
            f"{len(wl.queries)}; {_s(wl.per_minute)}; {wl.max_per_30s}",
            f"≤ {2 * TARGET_PER_30S}/min; ≤ {TARGET_PER_30S} per 30 s",
            wl.max_per_30s <= TARGET_PER_30S and wl.per_minute <= 2 * TARGET_PER_30S,
        )
    sacct_calls = sum(wl.sacct_calls for wl in load.workflows.values())
    table.add("sacct calls (all N)", str(sacct_calls))
    noisy = " (includes other SLURM users)" if settings["noisy"] else ""
    if load.rpcs is None:
        table.add(f"sdiag status RPCs in {load.duration:.0f} s", "n/a: slurmctld restarted")
    else:
        total = sum(load.rpcs.values())
        rpcs = ", ".join(f"{k.removeprefix('REQUEST_')} {v}" for k, v in load.rpcs.items())
        table.add(
            f"sdiag status RPCs in {load.duration:.0f} s{noisy}",
            f"{total} = {60 * total / load.duration:.1f}/min: {rpcs or 'none'}",
        )
    for profile in profiles:
        own = "JOB_USER_INFO" in profile.describe() or "INFO_SINGLE" in profile.describe()
        target = "own jobs only" if profile.name == "squeue" and profile.user != "root" else ""
        table.add(
            f"RPCs per {profile.name} query, as {profile.user}; bytes",
            f"{profile.describe()}; {profile.size}",
            target,
            own if target else None,
        )
    n_max = max(load.workflows)
    lat = load.workflows[n_max].latencies
    table.add(
        f"latency at N = {n_max}, all ending at once on {settings['cpus']} cores, median / p95",
        f"{_s(median(lat))} / {_s(percentile(lat, 95))} s" if lat else "n/a",
    )

    table.section(f"Waiting steps: CPU over {load.window:g} s and memory, from /proc")
    cpu_q, cpu_i = load.cpu_queue, load.cpu_idle
    table.add(
        f"CPU per waiting StepUp Queue worker, median / max (n={len(cpu_q)})",
        f"{median(cpu_q):.3f} / {max(cpu_q, default=0):.3f} %",
        f"< {TARGET_CPU:g} %",
        max(cpu_q, default=0) < TARGET_CPU,
    )
    table.add(
        f"CPU per waiting runsh worker, median / max (n={len(cpu_i)})",
        f"{median(cpu_i):.3f} / {max(cpu_i, default=0):.3f} %",
    )
    rss_q = median(load.rss_queue) * MB_PER_MIB
    rss_i = median(load.rss_idle) * MB_PER_MIB
    table.add("RSS per worker, StepUp Queue / runsh, median", f"{rss_q:.1f} / {rss_i:.1f} MB")
    added = rss_q - rss_i
    base, with_queue = (value * MB_PER_MIB for value in imports)
    imported = with_queue - base
    table.add(
        "added by StepUp Queue: in waiting workers; by importing it",
        f"{added:.2f} MB; {imported:.2f} MB",
        f"≤ {TARGET_RSS_MB:g} MB",
        max(added, imported) <= TARGET_RSS_MB,
    )

    table.section("Conditions")
    for key in ("date", "source", "slurm", "stepup-queue", "stepup", "cpus", "duration"):
        table.add(key, str(settings[key]))
    table.add("runs repeated after failures outside StepUp Queue", "; ".join(RETRIES) or "none")
    table.add(
        "slurmctld restarted during the benchmark",
        "yes: sdiag figures may be missing" if settings["restarted"] else "no",
    )
    table.add(
        "other SLURM users (pytest) seen",
        "yes: sdiag counts and timings are noisy" if settings["noisy"] else "no",
    )
    return table


def _load_with_retry(parent: Path, settings: dict[str, object]) -> LoadResult:
    """Run the load benchmark; when StepUp itself fails (not StepUp Queue), once more."""
    for attempt in range(2):
        tag = "load" if attempt == 0 else "load-retry"
        try:
            return run_load(
                parent,
                settings["load_sizes"],
                wait=settings["load_wait"],
                window=settings["load_window"],
                tag=tag,
            )
        except (RuntimeError, TimeoutError) as exc:
            cancel_leftovers(parent)
            if attempt == 1:
                raise
            reason = str(exc).splitlines()[0]
            RETRIES.append(f"{tag}: {reason}")
            print(f"  {tag} failed ({reason}); trying again", flush=True)
    raise AssertionError("unreachable")


def _source_state() -> str:
    """The git commit of the source tree, and a digest of uncommitted changes of the package."""
    root = Path(__file__).parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    diff = git("diff", "HEAD", "--", "stepup/queue")
    untracked = git("ls-files", "--others", "--exclude-standard", "stepup/queue")
    if diff == "" and untracked == "":
        return f"{commit}, stepup/queue unmodified"
    digest = hashlib.sha256((diff + untracked).encode()).hexdigest()[:8]
    return f"{commit} + uncommitted changes in stepup/queue (diff digest {digest})"


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description="Run the StepUp Queue benchmarks on the local SLURM and print one table."
    )
    parser.add_argument("--quick", action="store_true", help="Fewer repetitions, shorter waits.")
    parser.add_argument(
        "--other",
        action="append",
        default=[],
        metavar="NAME=STEPUP",
        help="Also run the overhead and chain workflows with the stepup executable of another "
        "StepUp Queue install, e.g. orig=/tmp/venv/bin/stepup. May be repeated.",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the benchmark folder.")
    parser.add_argument("--json", type=Path, help="Also write all raw figures to this file.")
    args = parser.parse_args(argv)
    others = {}
    for item in args.other:
        name, _, stepup = item.partition("=")
        if stepup == "" or not Path(stepup).is_file():
            parser.error(f"--other {item!r}: give NAME=PATH of an existing stepup executable")
        others[name] = Path(stepup).absolute()
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        sys.exit("No SLURM: start it with `bash tools/local-slurm.sh start` (as root).")
    settings: dict[str, object] = {
        "overhead_jobs": 20,
        "job_seconds": 2.0,
        "chain_jobs": 5,
        "overhead_repeats": 1 if args.quick else 15,
        "chain_repeats": 1 if args.quick else 2,
        "load_sizes": (1, 20, 200),
        "load_wait": 40.0 if args.quick else 100.0,
        "load_window": 20.0 if args.quick else 60.0,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "slurm": subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip(),
        "source": _source_state(),
        "stepup-queue": version("stepup-queue"),
        "stepup": version("stepup"),
        "cpus": os.cpu_count(),
    }
    t_start = time.time()
    sdiag_start = sdiag_counts()
    watch = NoiseWatch()
    with bench_folder(args.keep) as parent:
        print("RPCs per status query ...", flush=True)
        profiles = profile_queries()
        print("Workflow overhead ...", flush=True)
        overhead = run_overhead(
            parent,
            settings["overhead_repeats"],
            settings["overhead_jobs"],
            settings["job_seconds"],
            others,
        )
        print("Chain of dependent jobs ...", flush=True)
        chain = run_chain(
            parent,
            settings["chain_repeats"],
            settings["chain_jobs"],
            settings["job_seconds"],
            others,
        )
        print("Scheduler load, CPU and memory ...", flush=True)
        load = _load_with_retry(parent, settings)
        imports = import_cost()
    watch.stop()
    settings["noisy"] = watch.seen
    settings["restarted"] = sdiag_counts().since != sdiag_start.since
    settings["duration"] = f"{time.time() - t_start:.0f} s"
    table = build_table(
        overhead, chain, load=load, profiles=profiles, imports=imports, settings=settings
    )
    print()
    print(table.render())
    if table.misses:
        print("\nTargets missed: " + "; ".join(table.misses))
    if args.json is not None:
        raw = {
            "settings": {k: str(v) for k, v in settings.items()},
            "overhead": {k: [asdict(r) for r in v] for k, v in overhead.items()},
            "chain": {k: [asdict(r) for r in v] for k, v in chain.items()},
            "load": asdict(load),
            "profiles": [asdict(p) for p in profiles],
            "imports": imports,
        }
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()

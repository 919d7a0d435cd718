"""Run all benchmarks of StepUp Queue on the local SLURM and print one table of figures.

Usage (from the root of the source tree, with the local SLURM running)::

    .venv/bin/python -m benchmarks.run_all --quick    # StepUp 4 (.venv)
    .venv/bin/python -m benchmarks.run_all --quick --stepup .venv3/bin/stepup    # StepUp 3
    .venv/bin/python -m benchmarks.run_all --stepup .venv/bin/stepup --stepup .venv3/bin/stepup
    .venv/bin/python -m benchmarks.run_all --other orig=/path/to/venv/bin/stepup

Each `--stepup` names a host: the `stepup` executable of a venv with StepUp Core 3 or 4 and
StepUp Queue. Every host runs all benchmarks and gets its own table; with more than one host,
a last table puts their key figures side by side.
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

from path import Path

from stepup.queue.config import Config
from tests.sdiag import sdiag_counts

from .chain import run_chain
from .common import (
    Host,
    add_host_option,
    bench_folder,
    cancel_leftovers,
    default_stepup,
    median,
    percentile,
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
# At most one status query per cache timeout of StepUp Queue's default settings.
CACHE_TIMEOUT = Config().cache_timeout
TARGET_PER_TIMEOUT = 1
TARGET_CPU = 1.0
TARGET_RSS_MB = 2.0
MB_PER_MIB = 1.048576


class NoiseWatch:
    """Checks every few seconds, in the background, whether some pytest runs, and the load.

    Attributes
    ----------
    seen
        Whether a pytest ran at one of the checks.
    loads
        The 1-minute load average of the machine at each check.
    """

    def __init__(self, interval: float = 5.0):
        self.seen = False
        self.loads: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(interval,), daemon=True)
        self._thread.start()

    def _watch(self, interval: float):
        while not self._stop.is_set():
            self.seen = self.seen or tests_running()
            self.loads.append(os.getloadavg()[0])
            self._stop.wait(interval)

    def describe(self) -> str:
        """The load average during the benchmark: median and largest."""
        return f"{median(self.loads):.1f} (max {max(self.loads, default=0.0):.1f})"

    def stop(self):
        self._stop.set()
        self._thread.join()


def render(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table with aligned columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for i, row in enumerate([header, *rows]):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


class Table:
    """Rows of (measurement, value, target, verdict), printed as one Markdown table.

    Attributes
    ----------
    rows
        The rows, with section titles as rows of their own.
    misses
        The measurements whose target was missed.
    keys
        Short name → (value, target, verdict) of the key figures, to compare hosts.
    """

    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []
        self.misses: list[str] = []
        self.keys: dict[str, tuple[str, str, str]] = {}

    def section(self, title: str):
        self.rows.append((f"**{title}**", "", "", ""))

    def add(
        self,
        what: str,
        value: str,
        target: str = "",
        ok: bool | None = None,
        key: str | None = None,
    ):
        """Add a row; `key` also makes it a key figure under that short name."""
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        if ok is False:
            self.misses.append(what)
        self.rows.append((what, value, target, verdict))
        if key is not None:
            self.keys[key] = (value, target, verdict)

    def render(self) -> str:
        return render(("Measurement", "Value", "Target", "Verdict"), self.rows)


def compare_hosts(tables: dict[str, Table]) -> str:
    """One Markdown table with the key figures of each host side by side."""
    names = list(tables)
    keys = list(dict.fromkeys(key for table in tables.values() for key in table.keys))
    rows = []
    for key in keys:
        figures = [tables[name].keys.get(key, ("n/a", "", "")) for name in names]
        target = next((target for _, target, _ in figures if target), "")
        cells = [f"{value} ({verdict})" if verdict else value for value, _, verdict in figures]
        rows.append((key, target, *cells))
    return render(("Key figure", "Target", *names), rows)


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
            "latency, short jobs, median / p95" if target else None,
        )
    if len(end_lat) > 0:
        table.add(
            f"{name}, short jobs: sacct End → step done, median / p95 (n={len(end_lat)})",
            f"{_s(median(end_lat))} / {_s(percentile(end_lat, 95))} s",
        )


def build_table(
    host: Host,
    overhead: dict[str, list[RunResult]],
    chain: dict[str, list[RunResult]],
    *,
    load: LoadResult,
    profiles: list[RPCProfile],
    imports: tuple[float, float],
    settings: dict[str, object],
) -> Table:
    """Turn all measurements of one host into one table with the targets of the issue."""
    table = Table()
    n_jobs = settings["overhead_jobs"]
    limit = "runsh" if host.major < 4 else "Python script"
    table.section(
        f"Workflow overhead on {host.name}: {n_jobs} jobs x {settings['job_seconds']:g} s, "
        f"{host.describe(n_jobs)}, median of {len(overhead['queue'])} run(s)"
    )
    walls = {name: median([r.wall for r in results]) for name, results in overhead.items()}
    spans = {name: median([r.makespan for r in results]) for name, results in overhead.items()}
    table.add("wall time, StepUp Queue", f"{_s(walls['queue'])} s")
    table.add(
        f"wall time, practical limit ({limit} step: sbatch + 0.2 s poll)", f"{_s(walls['poll'])} s"
    )
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
        "overhead ratio, median of pairs",
    )
    # SLURM starts a burst of jobs 0 to 3 s after their submission, at random, and StepUp's
    # start-up varies by half a second: both dominate the ratio. Hence the wall time in phases.
    names = ("start", "submit", "slurm", "notice", "exit")
    phases = {
        name: {phase: median([r.phases[phase] for r in results if r.phases]) for phase in names}
        for name, results in overhead.items()
    }
    for phase, what in [
        ("start", "start → first job step starts (StepUp, plan)"),
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
        "overhead ratio, median phases",
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
            "latency, long jobs, median / p95",
        )

    n_chain = settings["chain_jobs"]
    table.section(
        f"Chain of {n_chain} dependent jobs x {settings['job_seconds']:g} s, "
        f"{host.describe(2)}, {len(chain['queue'])} run(s)"
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
        per_window = wl.max_in(CACHE_TIMEOUT)
        table.add(
            f"N = {size}{split}: status queries in {wl.span:.0f} s; per minute; "
            f"max in one cache timeout ({CACHE_TIMEOUT:g} s)",
            f"{len(wl.queries)}; {_s(wl.per_minute)}; {per_window}",
            f"≤ {60 * TARGET_PER_TIMEOUT / CACHE_TIMEOUT:g}/min; ≤ {TARGET_PER_TIMEOUT}",
            per_window <= TARGET_PER_TIMEOUT
            and wl.per_minute <= 60 * TARGET_PER_TIMEOUT / CACHE_TIMEOUT,
            f"N = {size}: queries; per minute; max per {CACHE_TIMEOUT:g} s"
            if size == n_max
            else None,
        )
    sacct_calls = sum(wl.sacct_calls for wl in load.workflows.values())
    table.add("sacct calls (all N)", str(sacct_calls))
    table.add(
        "scontrol calls that ask for no job (e.g. show config), per N",
        ", ".join(f"{size}: {wl.other_calls}" for size, wl in load.workflows.items()),
        key="scontrol calls that ask for no job, per N",
    )
    noisy = " (includes other SLURM users)" if settings["noisy"] else ""
    if load.rpcs is None:
        table.add(f"sdiag status RPCs in {load.duration:.0f} s", "n/a: slurmctld restarted")
    else:
        total_rpcs = sum(load.rpcs.values())
        rpcs = ", ".join(f"{k.removeprefix('REQUEST_')} {v}" for k, v in load.rpcs.items())
        table.add(
            f"sdiag status RPCs in {load.duration:.0f} s{noisy}",
            f"{total_rpcs} = {60 * total_rpcs / load.duration:.1f}/min: {rpcs or 'none'}",
            key="sdiag status RPCs during the load benchmark",
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
    lat = load.workflows[n_max].latencies
    table.add(
        f"latency at N = {n_max}, all ending at once on {settings['cpus']} cores, median / p95",
        f"{_s(median(lat))} / {_s(percentile(lat, 95))} s" if lat else "n/a",
        key=f"latency at N = {n_max} ending at once, median / p95",
    )
    _memory_rows(table, host, load, imports)

    table.section("Conditions")
    for key in ("date", "source", "slurm", "stepup-queue", "stepup", "cpus", "duration"):
        table.add(key, str(settings[key]))
    table.add("machine load average (1 min) during the benchmark, median (max)", settings["load"])
    table.add("runs repeated after failures outside StepUp Queue", "; ".join(RETRIES) or "none")
    table.add(
        "slurmctld restarted during the benchmark",
        "yes: sdiag figures may be missing" if settings["restarted"] else "no",
    )
    table.add(
        "other SLURM users (pytest) seen",
        "yes: sdiag counts and timings are noisy" if settings["noisy"] else "no",
    )
    table.add(
        "stepup/queue edited during the benchmark",
        "yes: steps may have run different code" if settings["edited"] else "no",
    )
    return table


def _memory_rows(table: Table, host: Host, load: LoadResult, imports: tuple[float, float]):
    """The rows of the CPU use and memory of waiting steps."""
    proc = "worker" if host.major < 4 else "forkserver child"
    table.section(
        f"Waiting steps: CPU over {load.window:g} s and memory, from /proc; "
        f"plain steps: {load.idle}"
    )
    cpu_q, cpu_i = load.cpu_queue, load.cpu_idle
    table.add(
        f"CPU per waiting StepUp Queue {proc}, median / max (n={len(cpu_q)})",
        f"{median(cpu_q):.3f} / {max(cpu_q, default=0):.3f} %",
        f"< {TARGET_CPU:g} %",
        max(cpu_q, default=0) < TARGET_CPU,
        "CPU per waiting step, median / max",
    )
    table.add(
        f"CPU per plain {proc}, median / max (n={len(cpu_i)})",
        f"{median(cpu_i):.3f} / {max(cpu_i, default=0):.3f} %",
    )
    rss_q, rss_i, pss_q, pss_i = (
        median(values) * MB_PER_MIB
        for values in (load.rss_queue, load.rss_idle, load.pss_queue, load.pss_idle)
    )
    n_max = max(load.workflows)
    table.add(
        f"RSS per {proc}, StepUp Queue (N = {n_max}) / plain, median",
        f"{rss_q:.1f} / {rss_i:.1f} MB",
    )
    table.add(
        f"PSS per {proc}, StepUp Queue (N = {n_max}) / plain, median",
        f"{pss_q:.1f} / {pss_i:.1f} MB",
        key="PSS per waiting step, StepUp Queue / plain",
    )
    n_queue = n_max // load.workflows[n_max].workflows
    table.add(
        f"PSS of all StepUp processes per step: workflows of {n_queue} StepUp Queue steps / "
        f"of {load.idle}",
        f"{load.tree_queue * MB_PER_MIB:.1f} / {load.tree_idle * MB_PER_MIB:.1f} MB",
        key="PSS of all StepUp processes per step, StepUp Queue / plain",
    )
    base, with_queue = (value * MB_PER_MIB for value in imports)
    imported = with_queue - base
    # StepUp 3 workers are separate interpreters: their RSS difference is StepUp Queue's cost.
    # StepUp 4's forkserver children share the pages of their forkserver: PSS counts those fairly.
    added = rss_q - rss_i if host.major < 4 else pss_q - pss_i
    kind = "RSS" if host.major < 4 else "PSS"
    table.add(
        f"added by StepUp Queue per waiting step: {kind}; by importing it",
        f"{added:.2f} MB; {imported:.2f} MB",
        f"≤ {TARGET_RSS_MB:g} MB",
        max(added, imported) <= TARGET_RSS_MB,
        "memory added per waiting step; by importing",
    )


def _load_with_retry(parent: Path, host: Host, settings: dict[str, object]) -> LoadResult:
    """Run the load benchmark; when StepUp itself fails (not StepUp Queue), once more."""
    for attempt in range(2):
        tag = "load" if attempt == 0 else "load-retry"
        try:
            return run_load(
                parent,
                host,
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


def run_host(
    parent: Path,
    host: Host,
    others: dict[str, Host],
    profiles: list[RPCProfile],
    settings: dict[str, object],
) -> tuple[Table, dict[str, object]]:
    """Run all benchmarks on one host.

    Parameters
    ----------
    parent
        The folder in which the workflow folders are made.
    host
        The install of StepUp (Queue) that runs the workflows.
    others
        Name → other StepUp Queue installs to compare with in the overhead and the chain.
    profiles
        The RPCs of the status queries (the same on every host).
    settings
        The settings common to all hosts; a copy gets the figures of this host's run.

    Returns
    -------
    table
        The table of all figures.
    raw
        All raw figures, for `--json`.
    """
    settings = settings | {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "source": _source_state(),
        "stepup": host.version,
        "stepup-queue": host.queue_version,
    }
    RETRIES.clear()
    t_start = time.time()
    sdiag_start = sdiag_counts()
    watch = NoiseWatch()
    print(f"{host.name} ({host.stepup}): workflow overhead ...", flush=True)
    overhead = run_overhead(
        parent,
        host,
        repeats=settings["overhead_repeats"],
        count=settings["overhead_jobs"],
        seconds=settings["job_seconds"],
        others=others,
    )
    print(f"{host.name}: chain of dependent jobs ...", flush=True)
    chain = run_chain(
        parent,
        host,
        repeats=settings["chain_repeats"],
        count=settings["chain_jobs"],
        seconds=settings["job_seconds"],
        others=others,
    )
    print(f"{host.name}: scheduler load, CPU and memory ...", flush=True)
    load = _load_with_retry(parent, host, settings)
    imports = import_cost(host)
    watch.stop()
    settings["noisy"] = watch.seen
    settings["load"] = watch.describe()
    settings["restarted"] = sdiag_counts().since != sdiag_start.since
    # Steps import StepUp Queue from the source tree when they start: an edit meanwhile counts.
    settings["edited"] = _source_state() != settings["source"]
    settings["duration"] = f"{time.time() - t_start:.0f} s"
    table = build_table(
        host, overhead, chain, load=load, profiles=profiles, imports=imports, settings=settings
    )
    raw = {
        "settings": {k: str(v) for k, v in settings.items()},
        "overhead": {k: [asdict(r) for r in v] for k, v in overhead.items()},
        "chain": {k: [asdict(r) for r in v] for k, v in chain.items()},
        "load": asdict(load),
        "imports": imports,
        "retries": list(RETRIES),
    }
    return table, raw


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description="Run the StepUp Queue benchmarks on the local SLURM and print one table "
        "per host."
    )
    parser.add_argument("--quick", action="store_true", help="Fewer repetitions, shorter waits.")
    add_host_option(parser, repeat=True)
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
        others[name] = Host.detect(Path(stepup))
    for stepup in args.stepup:
        if not stepup.is_file():
            parser.error(f"--stepup {stepup}: no such file")
    hosts = [Host.detect(stepup) for stepup in args.stepup or [default_stepup()]]
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
        "slurm": subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip(),
        "cpus": os.cpu_count(),
    }
    tables = {}
    raw: dict[str, object] = {}
    with bench_folder(args.keep) as parent:
        print("RPCs per status query ...", flush=True)
        profiles = profile_queries()
        raw["profiles"] = [asdict(p) for p in profiles]
        for i, host in enumerate(hosts):
            folder = parent / f"host{i}-stepup{host.major}"
            folder.makedirs_p()
            table, raw[host.name] = run_host(folder, host, others, profiles, settings)
            tables[f"{host.name} ({host.stepup})"] = table
            print(f"\n{host.name} ({host.stepup})\n")
            print(table.render())
            if table.misses:
                print("\nTargets missed: " + "; ".join(table.misses))
            print(flush=True)
    if len(tables) > 1:
        print(compare_hosts(tables))
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()

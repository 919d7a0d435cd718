"""Did an ended job use what it asked for? CPU, memory and time from sacct's own figures.

`stepup jobs` asks sacct once per cluster, with the lines of the job steps (no `-X`). From a
job's line come its run time (`Elapsed`), CPU time of all its steps (`TotalCPU`), CPUs
(`AllocCPUS`), requested memory (`ReqMem`) and time limit (`Timelimit`); its peak memory is the
largest peak of its steps (`ID.batch`, `ID.0`, ...: the job's own line has none). A step's peak
is the sum of the peaks of its tasks (the `mem=` of `TRESUsageInTot`), else the largest peak of
one task (`MaxRSS`), which is all there is for a step of one task. These are pure functions
over sacct's text, tested on captured real output.

SLURM samples memory every `JobAcctGatherFrequency` seconds (30 by default) while a step
runs: a job shorter than that may have no `MaxRSS` at all (`#SBATCH --acctg-freq=task=1`
samples every second).
"""

import re
from dataclasses import dataclass

from .slurm.parsers import parse_elapsed, parse_time_limit, readable

__all__ = (
    "HIGH_TIME",
    "LOW_USE",
    "Advice",
    "Usage",
    "format_size",
    "parse_memory",
    "step_peak",
    "usage_by_run",
)

# A job that used less than this fraction of its CPUs or memory asked for too much, one that
# ran longer than HIGH_TIME of its time limit risks a TIMEOUT.
LOW_USE = 0.25
HIGH_TIME = 0.9

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
# sacct's sizes: a number, a unit (powers of 1024), and in ReqMem of SLURM before 21.08 `n`
# (per node) or `c` (per CPU). SLURM 21.08 and later print the job's total without a suffix.
_RE_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)([nc]?)")
_RE_TRES_MEMORY = re.compile(r"(?:^|,)mem=([^,]*)")
_RE_STEP = re.compile(r"([0-9]+)(?:\+[0-9]+)?\.[^|]+")
_RE_JOB = re.compile(r"([0-9]+)(?:\+[0-9]+)?")


def parse_memory(
    text: str, cpus: int | None = None, nodes: int | None = None, unit: str = ""
) -> int | None:
    """Bytes of a sacct memory size (`221232K`, `300M`), `None` when empty, zero or unknown.

    Parameters
    ----------
    text
        The field: `MaxRSS`, or `ReqMem`, which SLURM before 21.08 prints per node (`4000Mn`)
        or per CPU (`2000Mc`), and later versions as the job's total (`4000M`).
    cpus, nodes
        `AllocCPUS` and `NNodes` of the job, to turn a per-CPU or per-node ReqMem into the
        job's total.
    unit
        The unit of a number without one: none (bytes) for MaxRSS, `M` for ReqMem.
    """
    match = _RE_SIZE.fullmatch(text.strip())
    if match is None:
        return None
    number, prefix, per = match.groups()
    size = float(number) * _UNITS[prefix or unit]
    if per:
        count = cpus if per == "c" else nodes
        if count is None:
            return None
        size *= count
    return round(size) or None


def format_size(size: float) -> str:
    """A short size, in powers of 1024: `512K`, `216M`, `1.5G`."""
    for prefix in "KMGTP":
        size /= 1024
        if size < 999.5 or prefix == "P":
            break
    return f"{size:.1f}{prefix}" if size < 9.95 else f"{size:.0f}{prefix}"


@dataclass(frozen=True)
class Advice:
    """A resource that a job asked too little or too much of.

    Attributes
    ----------
    kind
        `cpu`, `memory` or `time`.
    option
        The `#SBATCH` line to change, e.g. `#SBATCH --cpus-per-task`.
    change
        What to do, e.g. `lower #SBATCH --cpus-per-task`.
    message
        What the job used, and what to do, e.g.
        `used 0.4 of its 2 CPUs (21%): lower #SBATCH --cpus-per-task`.
    """

    kind: str
    option: str
    change: str
    message: str


@dataclass(frozen=True)
class Usage:
    """What one run of a job asked for and used, according to sacct.

    Attributes
    ----------
    elapsed
        Seconds the job ran (`Elapsed`).
    total_cpu
        CPU seconds of all its steps (`TotalCPU`, user and system time).
    cpus
        CPUs allocated (`AllocCPUS`).
    requested_memory
        Bytes of memory requested (`ReqMem`, for the whole job).
    peak_memory
        The largest peak memory of a step (see `step_peak`), `None` when SLURM sampled none.
    time_limit
        Seconds of the time limit (`Timelimit`), `None` when unlimited.
    """

    elapsed: float | None
    total_cpu: float | None
    cpus: int | None
    requested_memory: int | None
    peak_memory: int | None
    time_limit: float | None

    @property
    def cpu_efficiency(self) -> float | None:
        """TotalCPU / (Elapsed * AllocCPUS), `None` when unknown (or the job did not run)."""
        if not self.elapsed or not self.cpus or self.total_cpu is None:
            return None
        return self.total_cpu / (self.elapsed * self.cpus)

    @property
    def memory_use(self) -> float | None:
        """The peak memory as a fraction of the requested memory, `None` when unknown."""
        if self.peak_memory is None or not self.requested_memory:
            return None
        return self.peak_memory / self.requested_memory

    @property
    def time_use(self) -> float | None:
        """The run time as a fraction of the time limit, `None` when unknown or unlimited."""
        if self.elapsed is None or not self.time_limit:
            return None
        return self.elapsed / self.time_limit

    def advice(self) -> list[Advice]:
        """The `#SBATCH` lines to change: a quarter of the CPUs (of more than one) or of the
        memory left unused, or more than 90 % of the time limit used."""
        found = []
        cpu = self.cpu_efficiency
        if cpu is not None and cpu < LOW_USE and self.cpus > 1:
            used = f"used {self.total_cpu / self.elapsed:.1f} of its {self.cpus} CPUs ({cpu:.0%})"
            found.append(_advice("cpu", "#SBATCH --cpus-per-task", "lower", used))
        memory = self.memory_use
        if memory is not None and memory < LOW_USE:
            used = (
                f"used {format_size(self.peak_memory)} of its "
                f"{format_size(self.requested_memory)} memory ({memory:.0%})"
            )
            found.append(_advice("memory", "#SBATCH --mem", "lower", used, " (or --mem-per-cpu)"))
        time = self.time_use
        if time is not None and time > HIGH_TIME:
            used = f"ran {time:.0%} of its time limit"
            found.append(_advice("time", "#SBATCH --time", "raise", used))
        return found

    def to_json(self) -> dict:
        """The documented fields of `efficiency` in `stepup jobs --json`."""
        return {
            "cpus": self.cpus,
            "cpu_seconds": self.total_cpu,
            "cpu_efficiency": self.cpu_efficiency,
            "requested_memory_bytes": self.requested_memory,
            "peak_memory_bytes": self.peak_memory,
            "memory_use": self.memory_use,
            "time_limit_seconds": self.time_limit,
            "time_use": self.time_use,
        }


def _advice(kind: str, option: str, verb: str, used: str, alternative: str = "") -> Advice:
    change = f"{verb} {option}{alternative}"
    return Advice(kind, option, change, f"{used}: {change}")


def usage_by_run(text: str, fields: tuple[str, ...]) -> dict[tuple[int, str], Usage]:
    """Read `sacct -D -n -P -o <fields>` output (without `-X`) into the usage of each run.

    Parameters
    ----------
    text
        What sacct printed: a line per run of a job, each followed by the lines of its steps.
    fields
        The fields asked, `JobIDRaw` first, with `Submit` and `slurm.queries.USAGE_FIELDS`
        (`TRESUsageInTot` may be left out); the last field takes the rest of the line.

    Returns
    -------
    usage
        (job id, `Submit` of the run) → its usage. Array tasks are left out.
    """
    runs: dict[tuple[int, str], dict[str, str]] = {}
    peaks: dict[tuple[int, str], list[int]] = {}
    current: dict[int, tuple[int, str]] = {}
    for line in map(str.strip, text.splitlines()):
        parts = line.split("|", len(fields) - 1)
        if len(parts) < 2:
            continue
        record = dict(zip(fields, parts + [""] * (len(fields) - len(parts)), strict=True))
        job = _RE_JOB.fullmatch(parts[0])
        if job is not None:
            key = (int(job.group(1)), record["Submit"])
            # A heterogeneous job's components share the id: the first one is the job.
            runs.setdefault(key, record)
            peaks.setdefault(key, [])
            current[key[0]] = key
            continue
        step = _RE_STEP.fullmatch(parts[0])
        if step is not None and int(step.group(1)) in current:
            peak = step_peak(record)
            if peak is not None:
                peaks[current[int(step.group(1))]].append(peak)
    return {key: _usage(record, peaks[key]) for key, record in runs.items()}


def step_peak(record: dict[str, str]) -> int | None:
    """Bytes of a step's peak memory: the sum of its tasks' peaks (`TRESUsageInTot`), else the
    largest peak of one task (`MaxRSS`); `None` when SLURM sampled none."""
    tres = _RE_TRES_MEMORY.search(record.get("TRESUsageInTot", ""))
    total = None if tres is None else parse_memory(tres.group(1))
    return total if total is not None else parse_memory(record["MaxRSS"])


def _usage(record: dict[str, str], peaks: list[int]) -> Usage:
    cpus = _count(record["AllocCPUS"])
    limit = readable(parse_time_limit, record["Timelimit"])
    return Usage(
        elapsed=readable(parse_elapsed, record["Elapsed"]),
        total_cpu=readable(parse_elapsed, record["TotalCPU"]),
        cpus=cpus,
        requested_memory=parse_memory(record["ReqMem"], cpus, _count(record["NNodes"]), "M"),
        peak_memory=max(peaks, default=None),
        time_limit=None if limit is None else float(limit),
    )


def _count(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None

"""Parsers of what SLURM's commands print: plain functions over strings.

Each is unit-tested on outputs captured from a real SLURM (tests/data/). A line that cannot be
read raises `UnreadableOutputError`: a job it would hide must never be taken for a job that
ended, so the callers treat such an answer as no answer.
"""

import os
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple, TypeVar

from ..states import is_active

__all__ = (
    "CLOCK_SLACK",
    "SQUEUE_FORMAT",
    "SUBMISSION_FIELDS",
    "SUBMISSION_FORMAT",
    "Listing",
    "UnreadableOutputError",
    "array_tasks",
    "last_run",
    "parse_array_states",
    "parse_cluster_name",
    "parse_elapsed",
    "parse_job_records",
    "parse_job_runs",
    "parse_key_values",
    "parse_max_array_size",
    "parse_requeue_codes",
    "parse_scontrol",
    "parse_squeue",
    "parse_time",
    "parse_time_limit",
    "readable",
)

_Parsed = TypeVar("_Parsed")

# Comment first, as in the cache files of StepUp Queue 1.1.0 (see parse_squeue).
SQUEUE_FORMAT = "%i|%T|%k|%r|%Z"
# What tells the job of a submission (see `identity.find_by_token`), as sacct fields. WorkDir
# last: it is the one field of our jobs that may contain a `|`.
SUBMISSION_FIELDS = ("JobIDRaw", "State", "Submit", "Comment", "WorkDir")
# The same fields as a squeue format. slurmctld knows a job as soon as sbatch returns, sacct
# only once slurmctld has sent it to the accounting database (a second later here, much later
# on a busy cluster).
SUBMISSION_FORMAT = "%i|%T|%V|%k|%Z"
# How far apart two times of one event in SLURM's records may be: sacct shows whole seconds, and
# the controller's clock may be a little behind ours. Short, so that an older job from the same
# folder is not taken for a newer one.
CLOCK_SLACK = timedelta(seconds=10)


class Listing(NamedTuple):
    """What a status query says about each job it lists, job id → value.

    Attributes
    ----------
    states
        The SLURM state of every job listed.
    comments
        The comment of jobs that have one.
    reasons
        Why a pending job waits (squeue's `%r`, e.g. `Priority`, `PartitionTimeLimit`).
    workdirs
        The folder each job runs in (of an array job: the folder sbatch ran in).
    tasks
        The SLURM state of every array task listed, (array job id, task index) → state. A
        pending range (`ID_[0-99%4]`) gives one entry per task. The comment, work directory
        and pending reason of an array job are in `comments`, `workdirs` and `reasons` under
        its array job id.
    """

    states: dict[int, str]
    comments: dict[int, str]
    reasons: dict[int, str]
    workdirs: dict[int, str]
    tasks: dict[tuple[int, int], str]

    @classmethod
    def empty(cls) -> "Listing":
        return cls({}, {}, {}, {}, {})

    def active(self) -> list[int]:
        """The jobs listed that have not ended: those that count against a submit limit."""
        return sorted(job_id for job_id, state in self.states.items() if is_active(state))

    def queued(self) -> int:
        """How many jobs and array tasks listed have not ended: each counts against a submit
        limit (MaxSubmitJobs)."""
        tasks = sum(1 for state in self.tasks.values() if is_active(state))
        return len(self.active()) + tasks


class UnreadableOutputError(ValueError):
    """SLURM printed a line that StepUp Queue cannot read: the answer is no proof of anything."""

    def __init__(self, line: str):
        super().__init__(f"SLURM printed a line that StepUp Queue cannot read: {line!r}")


def _job_id(line: str, field: str) -> int | None:
    """The job of a line of squeue or sacct, from its job id field.

    The components `ID+N` of a heterogeneous job count as job `ID`. Array tasks (`ID_N`,
    `ID_[N-M]`), no job of StepUp Queue, job steps (`ID.batch`) and a header line give `None`.
    Anything else raises UnreadableOutputError.
    """
    if field in ("JOBID", "JobIDRaw"):
        return None
    match = _RE_JOB_ID.fullmatch(field)
    if match is None:
        raise UnreadableOutputError(line)
    return None if match.group(2) else int(match.group(1))


_RE_JOB_ID = re.compile(r"([0-9]+)(?:\+[0-9]+)?((?:_[0-9\[]|\.)[^|]*)?")
_RE_TASK_ID = re.compile(r"([0-9]+)_(?:([0-9]+)|\[([0-9,\-]+)(?:%[0-9]+)?\])")


def array_tasks(field: str) -> tuple[int, list[int]] | None:
    """The array job id and task indices of an array task id: `ID_N`, or a pending range
    `ID_[0-3,7%2]` (`%2`: at most two at once). `None` for anything else (e.g. `ID_N.batch`).
    """
    match = _RE_TASK_ID.fullmatch(field)
    if match is None:
        return None
    if match.group(2) is not None:
        return int(match.group(1)), [int(match.group(2))]
    indices = []
    for part in match.group(3).split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or not (last == "" or last.isdigit()):
            return None
        indices.extend(range(int(first), int(last or first) + 1))
    return int(match.group(1)), indices


def readable(parse: Callable[..., _Parsed], text: str, *args) -> _Parsed | None:
    """`parse(text, *args)`; `None` when SLURM printed a line that cannot be read."""
    try:
        return parse(text, *args)
    except UnreadableOutputError:
        return None


def parse_squeue(text: str) -> Listing:
    """Parse `squeue -h -o '%i|%T|%k|%r|%Z'` output (a `CLUSTER:` line from -M is skipped).

    A comment or a work directory may contain `|`, a pending reason never does: the work
    directory starts at the first `|REASON|/`. Lines with only `%i|%T|%k` (the cache files of
    StepUp Queue 1.1.0) give no reason or work directory. The components `ID+N` of a
    heterogeneous job count as job `ID`, which has not ended while one of them has not. Array
    tasks (`ID_N`, and pending ranges `ID_[N-M%K]`) go to `Listing.tasks`.

    Raises
    ------
    UnreadableOutputError
        For any other line: a job it hides must not be taken for a job that ended.
    """
    listing = Listing.empty()
    for line in map(str.strip, text.splitlines()):
        if line == "" or line.startswith("CLUSTER: "):
            continue
        match = _RE_SQUEUE_LINE.fullmatch(line)
        if match is not None:
            job, state, comment, reason, workdir = match.groups()
        else:
            job, _, rest = line.partition("|")
            state, bar, comment = rest.partition("|")
            reason = workdir = ""
            if bar == "" or state == "":
                raise UnreadableOutputError(line)
        tasks = array_tasks(job)
        if tasks is not None:
            array_id, indices = tasks
            for index in indices:
                listing.tasks[array_id, index] = state
            # The tasks of an array wait for the same reasons: under the array job id.
            if state == "PENDING" and reason not in ("", "None"):
                listing.reasons[array_id] = reason
            if comment not in ("", "(null)"):
                listing.comments[array_id] = comment
            if workdir != "":
                listing.workdirs[array_id] = workdir
            continue
        job_id = _job_id(line, job)
        if job_id is None:
            continue
        if not is_active(listing.states.get(job_id)):
            listing.states[job_id] = state
            if reason not in ("", "None"):
                listing.reasons[job_id] = reason
        if comment not in ("", "(null)"):
            listing.comments[job_id] = comment
        if workdir != "":
            listing.workdirs[job_id] = workdir
    return listing


_RE_SQUEUE_LINE = re.compile(r"([^|]*)\|([^|]*)\|(.*?)\|([^|]*)\|(/.*)")


_RE_SCONTROL_JOB = re.compile(r"^JobId=([0-9]+)\s", re.MULTILINE)
_RE_SCONTROL_ARRAY = re.compile(r"\bArrayJobId=([0-9]+) ArrayTaskId=(\S+)")
_RE_SCONTROL_UID = re.compile(r"\bUserId=\S*?\(([0-9]+)\)")
_RE_SCONTROL_FIELDS = {
    "states": re.compile(r"\bJobState=([A-Z_]+)"),
    "comments": re.compile(r"\bComment=(\S+)"),
    "reasons": re.compile(r"\bReason=([A-Za-z0-9_]+)"),
    "workdirs": re.compile(r"\bWorkDir=(\S+)"),
}


def parse_scontrol(text: str) -> Listing:
    """Parse `scontrol show job` output, in the multi-line or the one-line (-o) format.

    The jobs of other users (`UserId`) are left out, as `squeue --me` leaves them out: they
    must not count against the user's submit limit.

    Raises
    ------
    UnreadableOutputError
        When the text before the first job is not empty or `No jobs in the system`, or when
        a job has no state.
    """
    listing = Listing.empty()
    matches = list(_RE_SCONTROL_JOB.finditer(text))
    head = text[: matches[0].start()] if matches else text
    if head.strip() not in ("", "No jobs in the system"):
        raise UnreadableOutputError(head.strip().splitlines()[0])
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        block = text[match.start() : end]
        job_id = int(match.group(1))
        if _RE_SCONTROL_FIELDS["states"].search(block) is None:
            raise UnreadableOutputError(block.splitlines()[0])
        user = _RE_SCONTROL_UID.search(block)
        if user is not None and int(user.group(1)) != os.getuid():
            continue
        array = _RE_SCONTROL_ARRAY.search(block)
        if array is not None:
            # A task (ArrayTaskId=N) or the pending rest of an array (ArrayTaskId=2-9%4).
            index = array.group(2)
            tasks = array_tasks(f"{array.group(1)}_{index if index.isdigit() else f'[{index}]'}")
            if tasks is not None:
                state = _RE_SCONTROL_FIELDS["states"].search(block).group(1)
                for task in tasks[1]:
                    listing.tasks[tasks[0], task] = state
                reason = _RE_SCONTROL_FIELDS["reasons"].search(block)
                if state == "PENDING" and reason is not None and reason.group(1) != "None":
                    listing.reasons[tasks[0]] = reason.group(1)
                for name in "comments", "workdirs":
                    found = _RE_SCONTROL_FIELDS[name].search(block)
                    if found is not None and found.group(1) != "None":
                        getattr(listing, name)[tasks[0]] = found.group(1)
                continue
        for name, pattern in _RE_SCONTROL_FIELDS.items():
            found = pattern.search(block)
            if found is not None and found.group(1) != "None":
                getattr(listing, name)[job_id] = found.group(1)
    return listing


def parse_job_records(
    text: str, fields: tuple[str, ...] = SUBMISSION_FIELDS
) -> dict[int, dict[str, str]]:
    """Parse `sacct -X -n -P -o <fields>` output; the first field must be `JobIDRaw`.

    Also reads squeue's output in the same fields, where the job id field is squeue's `%i`.
    Of a job with several records (`sacct -D`), the last one is kept: see `parse_job_runs`.

    Returns
    -------
    jobs
        Job id → {field name: value} for the fields after `JobIDRaw`.
    """
    return {job_id: runs[-1] for job_id, runs in parse_job_runs(text, fields).items()}


def parse_job_runs(
    text: str, fields: tuple[str, ...] = SUBMISSION_FIELDS
) -> dict[int, list[dict[str, str]]]:
    """Parse `sacct -X -n -P -o <fields>` output, with every record of a job id (`-D`).

    The first field must be `JobIDRaw`. The last field takes the rest of the line, so it may
    contain `|`. Fields missing at the end of a line are empty. A state like `CANCELLED by 0`
    becomes `CANCELLED`, an empty one `UNKNOWN`. Array tasks are skipped (see `parse_squeue`).

    Returns
    -------
    jobs
        Job id → the records of that id in the order printed, each {field name: value} for
        the fields after `JobIDRaw`.

    Raises
    ------
    UnreadableOutputError
        For a line that holds no job id and a field after it.
    """
    jobs: dict[int, list[dict[str, str]]] = {}
    for line in map(str.strip, text.splitlines()):
        if line == "":
            continue
        parts = line.split("|", len(fields) - 1)
        if len(parts) < 2:
            raise UnreadableOutputError(line)
        job_id = _job_id(line, parts[0])
        if job_id is None:
            continue
        parts += [""] * (len(fields) - len(parts))
        record = dict(zip(fields[1:], parts[1:], strict=True))
        if "State" in record:
            record["State"] = record["State"].split()[0] if record["State"].strip() else "UNKNOWN"
        jobs.setdefault(job_id, []).append(record)
    return jobs


def parse_time(text: str | None) -> datetime | None:
    """A time stamp printed by SLURM (`2026-12-07T21:39:10`, SLURM's standard format); `None`
    for `Unknown`, `None`, an empty field or no field."""
    try:
        return None if text is None else datetime.fromisoformat(text)
    except ValueError:
        return None


# What SLURM prints for no time limit: scontrol's `UNLIMITED`, sbatch's `INFINITE`, a partition's
# `DefaultTime=NONE`, sacct's `Partition_Limit` for a job that set none (the partition's applies).
_NO_LIMIT = frozenset({"UNLIMITED", "INFINITE", "NONE", "Partition_Limit", ""})
# man sbatch, --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds". scontrol and sacct print limits as
# `[D-]HH:MM:SS`, which is one of these.
_RE_TIME_LIMIT = re.compile(r"(?:([0-9]+)-)?([0-9]+)(?::([0-9]+))?(?::([0-9]+))?")
# man sacct: elapsed time fields are `[DD-[HH:]]MM:SS`, with `.mmm` in the CPU fields (TotalCPU
# `00:08.766`); the RAW fields (ElapsedRaw) are bare seconds.
_RE_ELAPSED = re.compile(r"(?:(?:([0-9]+)-)?([0-9]+):)?([0-9]+):([0-9]+(?:\.[0-9]+)?)|([0-9]+)")


def parse_time_limit(text: str) -> int | None:
    """Seconds of a time limit in the syntax of sbatch's `--time`, as scontrol and sacct print
    limits (`TimeLimit`, `MaxTime`, `Timelimit`).

    A bare number is minutes (`5`), two numbers are minutes and seconds (`5:30`), three hours,
    minutes and seconds (`1:02:03`); after `days-` they are hours (`2-03`), hours and minutes
    (`2-03:04`), or hours, minutes and seconds (`2-03:04:05`, `1-00:00:00`).

    Returns
    -------
    seconds
        The limit; `None` for no limit of the job's own (`UNLIMITED`, `INFINITE`, `NONE`,
        `Partition_Limit` or an empty field).

    Raises
    ------
    UnreadableOutputError
        For any other text, e.g. `INVALID` or `00:01.234`.
    """
    text = text.strip()
    if text in _NO_LIMIT:
        return None
    match = _RE_TIME_LIMIT.fullmatch(text)
    if match is None:
        raise UnreadableOutputError(text)
    days, *numbers = match.groups()
    numbers = [int(number) for number in numbers if number is not None]
    if days is not None:
        # Hours first after the days.
        hours, minutes, seconds = [*numbers, 0, 0][:3]
    elif len(numbers) == 3:
        hours, minutes, seconds = numbers
    else:
        hours, (minutes, seconds) = 0, [*numbers, 0][:2]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_elapsed(text: str) -> float | None:
    """Seconds of a duration as sacct prints what a job used: `Elapsed` (`00:00:21`,
    `1-00:00:00`), `TotalCPU` (`00:08.766`, minutes and seconds with milliseconds), or a RAW
    field (`ElapsedRaw`: bare seconds).

    Unlike a time limit (see `parse_time_limit`), two numbers are always minutes and seconds,
    a bare number is seconds, and days come with hours, minutes and seconds.

    Returns
    -------
    seconds
        The duration; `None` for sacct's `INVALID` or an empty field.

    Raises
    ------
    UnreadableOutputError
        For any other text, e.g. `UNLIMITED` or `2-03`.
    """
    text = text.strip()
    if text in ("INVALID", ""):
        return None
    match = _RE_ELAPSED.fullmatch(text)
    if match is None:
        raise UnreadableOutputError(text)
    days, hours, minutes, seconds, raw = match.groups()
    if raw is not None:
        return float(raw)
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


_RE_KEY_VALUE = re.compile(r"(\w+)=(\S*)")


def parse_key_values(text: str) -> list[dict[str, str]]:
    """Parse `scontrol show KIND -o`: one dictionary of `Key=Value` pairs per record.

    Values that hold spaces (a job's Command or Comment) are cut at the first space: the
    callers read only limits, counts, states and names. `CLUSTER:` lines (from -M) are skipped.
    """
    return [
        dict(_RE_KEY_VALUE.findall(line))
        for line in text.splitlines()
        if "=" in line and not line.startswith("CLUSTER:")
    ]


_RE_CLUSTER_NAME = re.compile(r"^ClusterName\s*=\s*(\S+)\s*$", re.MULTILINE)


def parse_cluster_name(config: str) -> str | None:
    """The ClusterName in `scontrol show config` output, `None` when it names none."""
    match = _RE_CLUSTER_NAME.search(config)
    return None if match is None else match.group(1)


_RE_REQUEUE_EXIT = re.compile(r"^(RequeueExit|RequeueExitHold)\s*=\s*(\S*)\s*$", re.MULTILINE)


_RE_MAX_ARRAY_SIZE = re.compile(r"^MaxArraySize\s*=\s*([0-9]+)\s*$", re.MULTILINE)


def parse_max_array_size(config: str) -> int | None:
    """SLURM's MaxArraySize in `scontrol show config` output: task indices must be below it.
    `None` when the output names none."""
    match = _RE_MAX_ARRAY_SIZE.search(config)
    return None if match is None else int(match.group(1))


def parse_array_states(text: str) -> dict[tuple[int, int], str]:
    """Parse `sacct -X -n -P -o JobID,State` of array jobs: (array job id, task) → state.

    A pending range (`ID_[2-9]`) gives one entry per task. Lines of jobs that are no array
    task are skipped. A state like `CANCELLED by 0` becomes `CANCELLED`.

    Raises
    ------
    UnreadableOutputError
        For a line without a `|`.
    """
    states = {}
    for line in map(str.strip, text.splitlines()):
        if line == "":
            continue
        field, bar, state = line.partition("|")
        if bar == "":
            raise UnreadableOutputError(line)
        tasks = array_tasks(field)
        if tasks is None:
            continue
        state = state.split("|")[0].split()[0] if state.strip() else "UNKNOWN"
        for index in tasks[1]:
            states[tasks[0], index] = state
    return states


def parse_requeue_codes(config: str) -> frozenset[int] | None:
    """The exit codes of a batch script after which SLURM runs the job again.

    Parameters
    ----------
    config
        The output of `scontrol show config`.

    Returns
    -------
    codes
        The codes in `RequeueExit` and `RequeueExitHold` (lists of codes and ranges, e.g.
        `1-9,18`); `None` for a list it cannot parse.
    """
    codes = set()
    for _, value in _RE_REQUEUE_EXIT.findall(config):
        if value == "(null)":
            continue
        for part in value.split(","):
            first, _, last = part.partition("-")
            if not (first.isdigit() and (last == "" or last.isdigit())):
                return None
            codes.update(range(int(first), int(last or first) + 1))
    return frozenset(codes)


def last_run(runs: list[dict[str, str]]) -> dict[str, str]:
    """The record of a job's last run, with `FirstSubmit`: the `Submit` of its first run.

    A run that SLURM requeued ends when the next one is submitted. An earlier record of the
    same id that ended at another time (or in another folder) is an older job whose id was
    reused: it is no run of this job.

    Parameters
    ----------
    runs
        The records of one job id (`sacct -D`, with `Submit`, `End` and `WorkDir`), in any
        order.
    """
    runs = sorted(runs, key=lambda run: _time_or_min(run["Submit"]))
    first = len(runs) - 1
    while first > 0:
        earlier, later = runs[first - 1], runs[first]
        gap = abs(_time_or_min(later["Submit"]) - _time_or_min(earlier["End"]))
        if gap > CLOCK_SLACK or earlier["WorkDir"] != later["WorkDir"]:
            break
        first -= 1
    return runs[-1] | {"FirstSubmit": runs[first]["Submit"]}


def _time_or_min(text: str) -> datetime:
    """A time stamp, `datetime.min` when unknown: the earliest in a sort."""
    return parse_time(text) or datetime.min

"""Cluster limits: which sbatch refusals mean "wait for room" and which pending jobs never start.

The reason codes come from `man squeue` (JOB REASON CODES) and SLURM's resource limits page.
"""

import re
from enum import Enum

from .slurm.parsers import UnreadableOutputError, parse_time_limit
from .states import hopeless_fix

__all__ = (
    "Refusal",
    "admitting_partitions",
    "refusal_fix",
    "submit_refusal",
)

# Reasons that speak of one partition: for a job that lists several (`-p a,b`, or partitions
# added by a site's job_submit plugin), squeue shows one partition's reason, while another
# partition may run the job.
# What scontrol writes for no limit.
_UNLIMITED = frozenset({"UNLIMITED", "INFINITE", "NONE", "Partition_Limit", ""})


class Refusal(Enum):
    """Why sbatch refused a job for an accounting or QOS policy, and so what helps."""

    # A limit on the queued jobs of the user alone: room appears when one of them leaves.
    OWN_LIMIT = "own"
    # A limit on the queued jobs of a group, account or QOS: colleagues' jobs count too.
    SHARED_LIMIT = "shared"
    # SLURM's generic policy message without a reason code: a limit on queued jobs or not.
    UNNAMED = "unnamed"
    # Anything else, e.g. a per-job limit under DenyOnLimit: the job breaks it by itself.
    POLICY = "policy"


# sbatch prints the reason code of a policy refusal on a line of its own, before the generic
# message of ESLURM_ACCOUNTING_POLICY, e.g. `sbatch: error: AssocMaxSubmitJobLimit`.
_RE_REASON = re.compile(r"^sbatch: error: ([A-Za-z]+)\s*$", re.MULTILINE)
_GENERIC = "job violates accounting/qos policy"
_OWN_LIMITS = frozenset({"AssocMaxSubmitJobLimit", "QOSMaxSubmitJobPerUserLimit"})
# MaxSubmitJobsPerAccount is what slurm-wlm 22.05 prints for QOSMaxSubmitJobPerAccountLimit.
_SHARED_LIMITS = frozenset(
    {
        "AssocGrpSubmitJobsLimit",
        "QOSGrpSubmitJobsLimit",
        "QOSMaxSubmitJobPerAccountLimit",
        "MaxSubmitJobsPerAccount",
    }
)
_RE_WALL = re.compile(r"(Assoc|QOS)MaxWallDurationPerJobLimit")
_WALL_FIX = (
    "lower --time in the job script to at most the MaxWall of your QOS or association "
    "(`sacctmgr show qos`, `sacctmgr show assoc user=$USER`), or pick a QOS that allows it "
    "(--qos)"
)
_POLICY_FIX = (
    "compare the job's request with the limits of your association and QOS "
    "(`sacctmgr show assoc user=$USER`, `sacctmgr show qos`) and change the request, "
    "--account or --qos"
)


def submit_refusal(message: str) -> tuple[Refusal, str] | None:
    """Tell an accounting or QOS policy refusal of sbatch from its error message.

    Parameters
    ----------
    message
        What the failed sbatch printed.

    Returns
    -------
    refusal, code
        The kind of refusal and sbatch's reason code (empty when it printed none);
        `None` when the message is no policy refusal.
    """
    match = _RE_REASON.search(message)
    code = "" if match is None else match.group(1)
    if code in _OWN_LIMITS:
        return Refusal.OWN_LIMIT, code
    if code in _SHARED_LIMITS:
        return Refusal.SHARED_LIMIT, code
    if _GENERIC not in message.lower():
        return None
    return (Refusal.POLICY, code) if code else (Refusal.UNNAMED, code)


def refusal_fix(code: str) -> str:
    """The likely fix for a policy refusal that waiting does not resolve."""
    if _RE_WALL.fullmatch(code):
        return _WALL_FIX
    return hopeless_fix(code) or _POLICY_FIX


def _limit(text: str, unreadable: int | None) -> int | None:
    """Seconds of a time limit (see `parse_time_limit`), `None` for no limit, `unreadable` for
    text that is no time limit."""
    try:
        return parse_time_limit(text)
    except UnreadableOutputError:
        return unreadable


def _count(text: str) -> int | None:
    """A node count or the lower end of a range (`1-4`); `None` for no limit."""
    return None if text in _UNLIMITED else int(text.split("-", maxsplit=1)[0])


def admitting_partitions(job: dict[str, str], partitions: list[dict[str, str]]) -> list[str]:
    """The partitions listed by a pending job whose limits admit its time and node count.

    A partition that is down still admits a job: it runs there once the partition is up.
    With a node count inside the limits, PartitionNodeLimit means the nodes are down.

    Parameters
    ----------
    job
        `scontrol show job -o` of the job, as key-value pairs (Partition, TimeLimit, NumNodes).
    partitions
        `scontrol show partition -o`, as key-value pairs per partition.

    Returns
    -------
    names
        The admitting partitions; empty when none can ever run the job as it is.
    """
    by_name = {partition.get("PartitionName"): partition for partition in partitions}
    # What cannot be read rules out no partition: a job is cancelled only for what is certain.
    time_limit = _limit(job.get("TimeLimit", ""), unreadable=0)
    nodes = _count(job.get("NumNodes", "1")) or 1
    admitting = []
    for name in job.get("Partition", "").split(","):
        partition = by_name.get(name)
        if partition is None:
            # Not shown (hidden, or not allowed to see): it may run the job.
            admitting.append(name)
            continue
        max_time = _limit(partition.get("MaxTime", ""), unreadable=None)
        max_nodes = [
            count
            for count in (_count(partition.get(key, "")) for key in ("MaxNodes", "TotalNodes"))
            if count is not None
        ]
        if max_time is not None and (time_limit is None or time_limit > max_time):
            continue
        if nodes < (_count(partition.get("MinNodes", "")) or 0) or nodes > min(
            max_nodes, default=nodes
        ):
            continue
        admitting.append(name)
    return admitting

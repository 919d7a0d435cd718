"""SLURM's job states and pending reasons, each classified once, for every module to use.

A job state is active or final (has the job ended for good, or not yet?); a final state is a
success (COMPLETED) or a failure; COMPLETED and FAILED mean the script ran to its own end, so
that its exit code is in `slurmjob.ret`. A pending reason is hopeless when the job never starts
without a change by the user, see `hopeless_fix`.

The states are those of JOB STATE CODES in `man squeue` and `man sacct` (SLURM 22.05) and the
state flags that newer releases print instead of the base state (`job_state_string()` in
SLURM's `slurm_protocol_defs.c`). A state that is in neither list, e.g. one of a release newer
than this table, counts as active: waiting for it longer is safe, submitting the job a second
time or taking it for failed is not.
"""

import re
from collections.abc import Iterable

__all__ = (
    "FAILED_STATES",
    "FINAL_STATES",
    "INFRASTRUCTURE_STATES",
    "OPT_IN_RETRY_STATES",
    "PARTITION_REASONS",
    "SCRIPT_ENDED_STATES",
    "STATES",
    "hopeless_fix",
    "is_active",
    "retried_states",
)

# State → True when SLURM will not run the job's script again.
STATES = {
    # Ended for good.
    "BOOT_FAIL": True,
    "CANCELLED": True,
    "COMPLETED": True,
    "DEADLINE": True,
    "FAILED": True,
    "NODE_FAIL": True,
    "OUT_OF_MEMORY": True,
    "PREEMPTED": True,
    "REVOKED": True,
    "TIMEOUT": True,
    # Queued, running, or about to run again. SPECIAL_EXIT is held (RequeueExitHold) and runs
    # again once released.
    "COMPLETING": False,
    "CONFIGURING": False,
    "PENDING": False,
    "REQUEUED": False,
    "REQUEUE_FED": False,
    "REQUEUE_HOLD": False,
    "RESIZING": False,
    "RESV_DEL_HOLD": False,
    "RUNNING": False,
    "SIGNALING": False,
    "SPECIAL_EXIT": False,
    "STAGE_OUT": False,
    "STOPPED": False,
    "SUSPENDED": False,
    # Printed by releases after 22.05: the job is requeued (EXPEDITING, LAUNCH_FAILED,
    # RECONFIG_FAIL), waits for its nodes to boot (POWER_UP_NODE), or is between two states
    # while slurmctld updates the accounting (UPDATE_DB).
    "EXPEDITING": False,
    "LAUNCH_FAILED": False,
    "POWER_UP_NODE": False,
    "RECONFIG_FAIL": False,
    "UPDATE_DB": False,
}

FINAL_STATES = frozenset(state for state, final in STATES.items() if final)
FAILED_STATES = FINAL_STATES - {"COMPLETED"}
# The job script ran and ended by itself: slurmjob.ret should hold its exit code (perhaps after
# a delay of the shared file system).
SCRIPT_ENDED_STATES = frozenset({"COMPLETED", "FAILED"})

# Failures of the cluster, not of the job: a new submission of the same script may well succeed.
INFRASTRUCTURE_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL", "PREEMPTED"})
# Retried only when the user asks: the same job may hit its limit again, unless it continues
# from a checkpoint.
OPT_IN_RETRY_STATES = frozenset({"TIMEOUT", "OUT_OF_MEMORY"})


def retried_states(retry_on: Iterable[str]) -> frozenset[str]:
    """The end states after which a job is submitted again: the infrastructure failures and
    those of `retry_on` (TIMEOUT, OUT_OF_MEMORY, or infrastructure states again).

    Raises
    ------
    ValueError
        When `retry_on` names another state, with the states that may be named.
    """
    allowed = INFRASTRUCTURE_STATES | OPT_IN_RETRY_STATES
    extra = frozenset(state.strip().upper() for state in retry_on)
    unknown = extra - allowed
    if unknown:
        raise ValueError(
            f"retry_on names {', '.join(sorted(unknown))}, after which a job is never "
            f"submitted again: use some of {', '.join(sorted(allowed))}."
        )
    return INFRASTRUCTURE_STATES | extra


def is_active(state: str | None) -> bool:
    """True when a job in `state` has not ended for good; `None` (no state) is not active."""
    return state is not None and state not in FINAL_STATES


# Pending reasons that speak of one partition's limits: with several partitions listed, another
# may still run the job (see `limits.admitting_partitions`).
PARTITION_REASONS = frozenset({"PartitionTimeLimit", "PartitionNodeLimit"})

# Pending reasons that never resolve without a change to the job or by an administrator,
# each with the likely fix. Not here, because they resolve by themselves: Priority, Resources,
# Dependency, BeginTime, Licenses, Reservation, the Assoc/QOS limits on running jobs or on
# aggregate usage (AssocMaxJobsLimit, QOSMaxJobsPerUserLimit, AssocGrp*, QOSGrp*, ...), and
# what an administrator is fixing anyway (NodeDown, PartitionDown, ReqNodeNotAvail). Not here
# either: JobHeldUser and JobHeldAdmin, the user's or an administrator's decision.
_HOPELESS = {
    # The job asks more than its partition allows (with EnforcePartLimits=NO it is accepted).
    "PartitionTimeLimit": "the requested --time is above the partition's MaxTime: lower it "
    "or pick another partition (sinfo -o '%P %l')",
    "PartitionNodeLimit": "the requested number of nodes is outside the partition's limits "
    "(or its nodes are down): change --nodes or the partition (sinfo)",
    # The request itself cannot be met or is not allowed.
    "BadConstraints": "no node has the requested features or resources (--constraint, "
    "--gres, --mem, --cpus-per-task): change the request (sinfo -o '%N %f %G %m %c')",
    "DependencyNeverSatisfied": "a job it depends on (--dependency) ended in a way that "
    "the dependency rules out: fix and rerun that job, or change the dependency",
    "InvalidAccount": "the --account is not valid for you: pick one of "
    "`sacctmgr show assoc user=$USER`",
    "InvalidQOS": "the --qos is not valid for you: pick one of `sacctmgr show assoc user=$USER`",
}
# Per-job limits of an association or QOS (AssocMax*PerJob*, QOSMax*PerJob*, QOSMin*): the job
# asks more (or less) than one job may.
_RE_PER_JOB = re.compile(r"(Assoc|QOS)Max\w*PerJob\w*|QOSMin\w+")
_PER_JOB_FIX = (
    "the job asks more than one job may under your association or QOS: lower the request "
    "(see `sacctmgr show assoc user=$USER` and `sacctmgr show qos`)"
)


def hopeless_fix(reason: str) -> str | None:
    """The likely fix for a pending reason that never resolves by itself, else `None`."""
    if reason in _HOPELESS:
        return _HOPELESS[reason]
    if _RE_PER_JOB.fullmatch(reason):
        return _PER_JOB_FIX
    return None

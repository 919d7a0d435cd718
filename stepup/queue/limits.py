"""Cluster limits: which sbatch refusals mean "wait for room" and which pending jobs never start.

The reason codes come from `man squeue` (JOB REASON CODES) and SLURM's resource limits page.
"""

import re

__all__ = ("hopeless_fix", "is_submit_limit")

# sbatch's refusals because the user, account or QOS already has the maximum number of jobs in
# the queue: they go away when jobs leave the queue. The last one is SLURM's generic message
# (ESLURM_ACCOUNTING_POLICY), printed alone by some sites.
_SUBMIT_LIMITS = (
    "assocmaxsubmitjoblimit",
    "assocgrpsubmitjobslimit",
    "qosmaxsubmitjobperuserlimit",
    "qosmaxsubmitjobperaccountlimit",
    "qosgrpsubmitjobslimit",
    "job submit limit",
)

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


def is_submit_limit(message: str) -> bool:
    """True when sbatch's error message says that a submit limit was reached."""
    text = message.lower()
    return any(part in text for part in _SUBMIT_LIMITS)


def hopeless_fix(reason: str) -> str | None:
    """The likely fix for a pending reason that never resolves by itself, else `None`."""
    if reason in _HOPELESS:
        return _HOPELESS[reason]
    if _RE_PER_JOB.fullmatch(reason):
        return _PER_JOB_FIX
    return None

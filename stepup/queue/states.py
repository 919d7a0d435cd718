"""SLURM's job states, each classified once: has the job ended for good, or not yet?

The states are those of JOB STATE CODES in `man squeue` and `man sacct` (SLURM 22.05) and the
state flags that newer releases print instead of the base state (`job_state_string()` in
SLURM's `slurm_protocol_defs.c`). A state that is in neither list, e.g. one of a release newer
than this table, counts as active: waiting for it longer is safe, submitting the job a second
time or taking it for failed is not.
"""

__all__ = ("FINAL_STATES", "STATES", "is_active")

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


def is_active(state: str | None) -> bool:
    """True when a job in `state` has not ended for good; `None` (no state) is not active."""
    return state is not None and state not in FINAL_STATES

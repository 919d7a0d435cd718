"""The one table of SLURM's job states: every state of this SLURM and of newer releases."""

import gzip
import re
import subprocess

import pytest
from path import Path

from stepup.queue.slurm.parsers import parse_squeue
from stepup.queue.states import (
    FINAL_STATES,
    INFRASTRUCTURE_STATES,
    STATES,
    hopeless_fix,
    is_active,
    retried_states,
)

# A state in JOB STATE CODES of the man pages, e.g. `\fBCA  CANCELLED\fR` (squeue) or
# `\f3CA  CANCELLED\fP` (sacct).
_RE_MAN_STATE = re.compile(r"^\\f[B3][A-Z]{1,3}\s+([A-Z_]+)\\f[RP]", re.MULTILINE)


def man_states(command: str) -> set[str]:
    """The states in JOB STATE CODES of the installed SLURM's man page of `command`."""
    found = subprocess.run(["man", "-w", command], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(f"No man page of {command}: is SLURM installed with its documentation?")
    path = Path(found.stdout.strip())
    text = gzip.decompress(path.read_bytes()).decode() if path.endswith(".gz") else path.read_text()
    section = text.split('.SH "JOB STATE CODES"', 1)[1].split("\n.SH ", 1)[0]
    return set(_RE_MAN_STATE.findall(section))


@pytest.mark.parametrize("command", ["squeue", "sacct"])
def test_every_state_of_the_man_pages_is_classified(command):
    states = man_states(command)
    assert len(states) >= 15, states
    assert states <= STATES.keys(), states - STATES.keys()


@pytest.mark.parametrize(
    "state", ["EXPEDITING", "LAUNCH_FAILED", "POWER_UP_NODE", "RECONFIG_FAIL", "UPDATE_DB"]
)
def test_states_of_newer_releases_are_active(state):
    """Newer SLURM prints these for jobs that have not ended: never a reason to submit again."""
    assert is_active(state)
    listing = parse_squeue(f"7|{state}|stepup-queue-0123456789abcdef|None|/home/u/job\n")
    assert listing.active() == [7]


def test_an_unknown_state_counts_as_active():
    assert is_active("SOME_FUTURE_STATE")
    assert not is_active(None)
    listing = parse_squeue("7|SOME_FUTURE_STATE||None|/home/u/job\n8|COMPLETED||None|/home/u/j\n")
    assert listing.active() == [7]


def test_final_states():
    assert {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    } == FINAL_STATES


@pytest.mark.parametrize(
    "reason",
    [
        "PartitionTimeLimit",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "AssocMaxWallDurationPerJobLimit",
        "QOSMaxCpuPerJobLimit",
        "QOSMinCpuNotSatisfied",
    ],
)
def test_hopeless_reasons(reason):
    assert hopeless_fix(reason)


@pytest.mark.parametrize(
    "reason",
    [
        "",
        "None",
        "Priority",
        "Resources",
        "Dependency",
        "BeginTime",
        "JobHeldUser",
        "JobHeldAdmin",
        "AssocMaxJobsLimit",
        "QOSMaxJobsPerUserLimit",
        "AssocGrpCpuLimit",
        "ReqNodeNotAvail",
        "NodeDown",
    ],
)
def test_reasons_that_resolve_by_themselves(reason):
    assert hopeless_fix(reason) is None


def test_infrastructure_failures_are_retried_by_default():
    assert retried_states(()) == {"NODE_FAIL", "BOOT_FAIL", "PREEMPTED"}
    assert INFRASTRUCTURE_STATES <= FINAL_STATES


@pytest.mark.parametrize(
    ("retry_on", "extra"),
    [
        (["TIMEOUT"], {"TIMEOUT"}),
        (["timeout", " OUT_OF_MEMORY"], {"TIMEOUT", "OUT_OF_MEMORY"}),
        (["NODE_FAIL"], set()),
    ],
)
def test_retry_on_adds_states(retry_on, extra):
    assert retried_states(retry_on) == INFRASTRUCTURE_STATES | extra


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED", "CANCELLED", "DEADLINE", "RUNNING", "T"])
def test_other_states_are_never_retried(state):
    """A job's own failure (or a cancellation by a person) would fail again: never retried."""
    with pytest.raises(ValueError, match=f"retry_on names {state}, after which a job is never"):
        retried_states([state])

"""Cluster limits: waiting for room at a submit limit, and jobs that can never start.

The limits are set on the real local SLURM (sacctmgr, scontrol) and restored after each test.
"""

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from conftest import FAILED_RC, SIMPLE_PLAN, Workflow, sacct, wait_for
from path import Path

from benchmarks.common import diff_counts, sdiag_counts
from stepup.queue.joblog import read_log
from stepup.queue.limits import hopeless_fix, is_submit_limit

# What sbatch printed here (slurm-wlm 22.05) at MaxSubmitJobs=3 with three jobs queued.
SBATCH_AT_SUBMIT_LIMIT = (
    "sbatch: error: AssocMaxSubmitJobLimit\n"
    "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
    "(job submit limit, user's size and/or time limits)\n"
)


@pytest.mark.parametrize(
    "message",
    [
        SBATCH_AT_SUBMIT_LIMIT,
        "sbatch: error: QOSMaxSubmitJobPerUserLimit\n",
        (
            "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
            "(job submit limit, user's size and/or time limits)\n"
        ),
    ],
)
def test_submit_limit_messages(message):
    assert is_submit_limit(message)


@pytest.mark.parametrize(
    "message",
    [
        "sbatch: error: invalid partition specified: nosuch\n",
        "sbatch: error: QOSMaxJobsPerUserLimit\n",
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller\n",
    ],
)
def test_other_sbatch_errors_are_no_submit_limit(message):
    assert not is_submit_limit(message)


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


# Submit limits: they apply to every job of the user, so these tests run alone (serial).


def sacctmgr_max_submit(value: int):
    subprocess.run(
        ["sacctmgr", "-i", "modify", "user", "root", "set", f"MaxSubmitJobs={value}"],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def max_submit() -> Iterator:
    """Set MaxSubmitJobs of the user root; removed after the test."""
    try:
        yield sacctmgr_max_submit
    finally:
        sacctmgr_max_submit(-1)


def max_overlap(jobs: list[dict[str, str]]) -> int:
    """The largest number of jobs queued (pending or running) at one moment, per sacct."""
    events = []
    for job in jobs:
        events.append((datetime.fromisoformat(job["Submit"]), 1))
        events.append((datetime.fromisoformat(job["End"]), -1))
    # An end and a submission in the same second: the end first, as SLURM frees the slot.
    events.sort()
    queued = peak = 0
    for _, step in events:
        queued += step
        peak = max(peak, queued)
    return peak


@pytest.mark.serial
def test_submit_limit_waits_for_room(workflow: Workflow, max_submit, tmp_path):
    """Ten steps under MaxSubmitJobs=3: all succeed, never more than 3 queued, few sbatch calls.

    sbatch is counted by a wrapper on PATH that logs each call and runs the real sbatch, and by
    slurmctld itself (sdiag), which is why no other test may run meanwhile.
    """
    calls = tmp_path / "calls.txt"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "sbatch"
    wrapper.write_text(f'#!/bin/sh\necho "sbatch $*" >> {calls}\nexec /usr/bin/sbatch "$@"\n')
    wrapper.chmod(0o755)
    lines = "\n".join(f'static("j{i}/", "j{i}/slurmjob.sh")\nsbatch("j{i}/")' for i in range(10))
    workflow.plan(lines)
    for i in range(10):
        workflow.job(f"j{i}", f"#!/usr/bin/env bash\nsleep 2\necho {i} > done.txt\n")
    max_submit(3)
    before = sdiag_counts()
    env = {"PATH": f"{bindir}:{workflow.env['PATH']}"}
    result = workflow.boot("-n", "10", env=env, timeout=300)
    rpcs = diff_counts(before, sdiag_counts())
    assert result.returncode == 0, result.stdout
    assert "a submit limit is reached" in result.stdout
    jobs = workflow.final_jobs(10)
    # Exactly one job per folder, each completed.
    assert sorted(Path(job["WorkDir"]).name for job in jobs) == [f"j{i}" for i in range(10)]
    assert {job["State"] for job in jobs} == {"COMPLETED"}
    for i in range(10):
        assert (workflow.root / f"j{i}/done.txt").read_text() == f"{i}\n"
    assert max_overlap(jobs) <= 3
    sbatch_calls = len(calls.read_text().splitlines())
    # The 7 refused at the start, then about one call per freed slot.
    assert 10 <= sbatch_calls <= 20, sbatch_calls
    assert rpcs is not None, "slurmctld restarted during the test"
    assert rpcs.get("REQUEST_SUBMIT_BATCH_JOB", 0) == sbatch_calls


@pytest.mark.serial
def test_submit_limit_with_no_job_queued_fails(workflow: Workflow, max_submit):
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho never\n")
    max_submit(0)
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    assert "AssocMaxSubmitJobLimit" in result.stdout
    assert "while you have no job queued" in result.stdout
    assert workflow.jobs() == []


# Jobs that can never start.

GRACE = 3.0
CACHE_TIMEOUT = float(os.environ.get("STEPUP_SBATCH_CACHE_TIMEOUT", "2"))


@pytest.fixture
def tiny_partition() -> Iterator[str]:
    """A partition with MaxTime=1 (minute) on the local node; removed after the test."""
    name = "sq_tiny"
    subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)
    subprocess.run(
        ["scontrol", "create", f"PartitionName={name}", "Nodes=ALL", "MaxTime=1", "State=UP"],
        check=True,
    )
    try:
        yield name
    finally:
        # slurm-wlm 22.05 removes the partition but may exit 1 ("Invalid partition name").
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)
        shown = subprocess.run(["scontrol", "show", "partition", name], capture_output=True)
        assert shown.returncode != 0, f"partition {name} was not removed"


def check_cancelled_within_grace(workflow: Workflow, result, reason: str):
    """The step failed naming the reason, the job is CANCELLED in sacct, the log says why."""
    assert result.returncode & FAILED_RC, result.stdout
    log = read_log(workflow.root / "job/slurmjob.log")
    # sacct -S (workflow.jobs) skips jobs that were never eligible: ask for the job itself.
    states = lambda: [job["State"] for job in sacct("-j", str(log.job_id))]  # noqa: E731
    wait_for(lambda: states() == ["CANCELLED by 0"], 60, "sacct to record the cancellation")
    assert f"Job {log.job_id} was pending with SLURM's reason {reason}" in result.stdout
    assert log.hopeless == reason
    assert log.last_state == "CANCELLED"
    # Asked first one cache period after the submission, cancelled after the grace period.
    waited = (log.states[-1][0] - log.submitted_time).total_seconds()
    assert waited <= GRACE + 2 * CACHE_TIMEOUT + 2, waited


def test_partition_time_limit_is_cancelled(workflow: Workflow, tiny_partition):
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job", f"#!/usr/bin/env bash\n#SBATCH -p {tiny_partition}\n#SBATCH --time=5\necho x\n"
    )
    result = workflow.boot(env={"STEPUP_SBATCH_HOPELESS_GRACE": str(GRACE)})
    check_cancelled_within_grace(workflow, result, "PartitionTimeLimit")
    assert "the requested --time is above the partition's MaxTime" in result.stdout


def test_dependency_never_satisfied_is_cancelled(workflow: Workflow):
    failed = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "exit 1"],
        # Outside the workflow's folder, so that workflow.jobs() lists only the step's job.
        cwd=workflow.root.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wait_for(lambda: [r["State"] for r in sacct("-j", failed)] == ["FAILED"], 60, "a failed job")
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", f"#!/usr/bin/env bash\n#SBATCH --dependency=afterok:{failed}\necho x\n")
    result = workflow.boot(env={"STEPUP_SBATCH_HOPELESS_GRACE": str(GRACE)})
    check_cancelled_within_grace(workflow, result, "DependencyNeverSatisfied")


def test_held_job_is_never_cancelled(workflow: Workflow):
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\n#SBATCH --hold\necho released > out.txt\n")
    proc = workflow.popen(env={"STEPUP_SBATCH_HOPELESS_GRACE": "1"})
    try:
        log = workflow.root / "job/slurmjob.log"
        wait_for(lambda: log.exists() and read_log(log).job_id is not None, 60, "the job")
        job_id = read_log(log).job_id
        # Well past the grace period and a few cache periods.
        time.sleep(1 + 4 * CACHE_TIMEOUT)
        assert proc.poll() is None
        listed = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"], capture_output=True, text=True
        )
        assert listed.stdout.strip() == "PENDING|JobHeldUser"
        subprocess.run(["scontrol", "release", str(job_id)], check=True)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            workflow.kill(proc)
    assert proc.returncode == 0, stdout
    assert (workflow.root / "job/out.txt").read_text() == "released\n"
    assert read_log(log).hopeless is None


# One live job per folder (issue 12.4).


def test_live_job_without_log_blocks_a_second_submission(workflow: Workflow):
    """A job still queued from a folder whose log was removed: no second job, a clear error."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 60\n")
    first = subprocess.run(
        ["sbatch", "--parsable", "slurmjob.sh"],
        cwd=workflow.root / "job",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    assert f"SLURM still has job(s) {first} of yours" in result.stdout
    assert f"scancel {first}" in result.stdout
    wait_for(lambda: workflow.jobs() != [], 60, "sacct to list the first job")
    assert [job["JobIDRaw"] for job in workflow.jobs()] == [first]
    # No Submitting record: nothing was sent to SLURM.
    assert "Submitting" not in (workflow.root / "job/slurmjob.log").read_text()

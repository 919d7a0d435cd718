"""Cluster limits: waiting for room at a submit limit, and jobs that can never start.

The limits are set on the real local SLURM (sacctmgr, scontrol) and restored after each test.
"""

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from conftest import (
    FAILED_RC,
    HOST,
    SIMPLE_PLAN,
    Workflow,
    fake_command,
    sacct,
    scontrol_state,
    submit_as_nobody,
    wait_for,
    with_bin,
)
from path import Path
from sdiag import diff_counts, sdiag_counts

from stepup.queue.joblog import read_log
from stepup.queue.limits import (
    Refusal,
    admitting_partitions,
    refusal_fix,
    submit_refusal,
)

# What sbatch printed here (slurm-wlm 22.05) at MaxSubmitJobs=3 with three jobs queued.
SBATCH_AT_SUBMIT_LIMIT = (
    "sbatch: error: AssocMaxSubmitJobLimit\n"
    "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
    "(job submit limit, user's size and/or time limits)\n"
)


# The generic message of ESLURM_ACCOUNTING_POLICY, which sbatch prints after the reason code.
GENERIC_POLICY = (
    "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
    "(job submit limit, user's size and/or time limits)\n"
)


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        (SBATCH_AT_SUBMIT_LIMIT, (Refusal.OWN_LIMIT, "AssocMaxSubmitJobLimit")),
        (
            "sbatch: error: QOSMaxSubmitJobPerUserLimit\n",
            (Refusal.OWN_LIMIT, "QOSMaxSubmitJobPerUserLimit"),
        ),
        # Printed here (slurm-wlm 22.05) for the QOS and account GrpSubmitJobs and for the
        # QOS MaxSubmitJobsPerAccount; newer SLURM names the last QOSMaxSubmitJobPerAccountLimit.
        (
            f"sbatch: error: AssocGrpSubmitJobsLimit\n{GENERIC_POLICY}",
            (Refusal.SHARED_LIMIT, "AssocGrpSubmitJobsLimit"),
        ),
        (
            f"sbatch: error: QOSGrpSubmitJobsLimit\n{GENERIC_POLICY}",
            (Refusal.SHARED_LIMIT, "QOSGrpSubmitJobsLimit"),
        ),
        (
            f"sbatch: error: MaxSubmitJobsPerAccount\n{GENERIC_POLICY}",
            (Refusal.SHARED_LIMIT, "MaxSubmitJobsPerAccount"),
        ),
        (
            "sbatch: error: QOSMaxSubmitJobPerAccountLimit\n",
            (Refusal.SHARED_LIMIT, "QOSMaxSubmitJobPerAccountLimit"),
        ),
        # Printed here under a QOS with Flags=DenyOnLimit for a job above its MaxWall.
        (
            f"sbatch: error: QOSMaxWallDurationPerJobLimit\n{GENERIC_POLICY}",
            (Refusal.POLICY, "QOSMaxWallDurationPerJobLimit"),
        ),
        (
            f"sbatch: error: QOSMaxCpuPerJobLimit\n{GENERIC_POLICY}",
            (Refusal.POLICY, "QOSMaxCpuPerJobLimit"),
        ),
        (GENERIC_POLICY, (Refusal.UNNAMED, "")),
    ],
)
def test_policy_refusals(message, refusal):
    assert submit_refusal(message) == refusal


@pytest.mark.parametrize(
    "message",
    [
        "sbatch: error: invalid partition specified: nosuch\n",
        "sbatch: error: QOSMaxJobsPerUserLimit\n",
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller\n",
    ],
)
def test_other_sbatch_errors_are_no_policy_refusal(message):
    assert submit_refusal(message) is None


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        ("QOSMaxWallDurationPerJobLimit", "lower --time"),
        ("AssocMaxWallDurationPerJobLimit", "lower --time"),
        ("QOSMaxCpuPerJobLimit", "lower the request"),
        ("SomeFutureLimit", "change the request, --account or --qos"),
    ],
)
def test_refusal_fixes(code, fix):
    assert fix in refusal_fix(code)


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


# Other policy refusals (issue 15.3, 15.4): they change the limits of everyone, so serial.


def sacctmgr_modify(entity: str, *settings: str):
    subprocess.run(
        ["sacctmgr", "-i", "modify", *entity.split(), "set", *settings],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def limits() -> Iterator[Callable[..., None]]:
    """Set limits with sacctmgr, e.g. `limits("qos normal", "MaxWall=5")`; removed after."""
    changed = []

    def set_limits(entity: str, *settings: str):
        changed.append((entity, [f"{setting.split('=')[0]}=-1" for setting in settings]))
        sacctmgr_modify(entity, *settings)

    try:
        yield set_limits
    finally:
        for entity, resets in reversed(changed):
            sacctmgr_modify(entity, *resets)


@pytest.fixture
def held_job(tmp_path) -> Iterator[int]:
    """A held job of the user, queued from outside the workflow; cancelled after the test."""
    folder = Path(tmp_path) / "held"
    folder.makedirs_p()
    result = subprocess.run(
        ["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "sleep 300"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = int(result.stdout)
    try:
        yield job_id
    finally:
        subprocess.run(["scancel", str(job_id)], check=False)


@pytest.fixture
def colleague(tmp_path) -> Iterator[int]:
    """A held job of user nobody, in the same account as the user; cancelled after the test."""
    job_id = submit_as_nobody(Path(tmp_path) / "nobody")
    try:
        yield job_id
    finally:
        subprocess.run(["scancel", str(job_id)], check=False)


@pytest.mark.serial
def test_per_job_policy_refusal_fails_at_once(workflow: Workflow, limits, held_job):
    """A job above its QOS's MaxWall under DenyOnLimit fails at once, with sbatch's reason.

    With a job of the user queued, the step used to wait for room as at a submit limit, until
    it was killed.
    """
    limits("qos normal", "Flags=DenyOnLimit", "MaxWall=00:05:00")
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\n#SBATCH --time=10\necho never\n")
    start = time.monotonic()
    result = workflow.boot(timeout=60)
    assert result.returncode & FAILED_RC, result.stdout
    assert time.monotonic() - start < 30
    assert f"SLURM refused {workflow.root / 'job/slurmjob.sh'}" in result.stdout
    assert "for its policy QOSMaxWallDurationPerJobLimit" in result.stdout
    assert "lower --time" in result.stdout
    assert "submit limit is reached" not in result.stdout
    assert workflow.jobs() == []


# The reason code sbatch prints here for each limit on the queued jobs of a group.
SHARED_LIMITS = {
    "AssocGrpSubmitJobsLimit": ("account root", "GrpSubmitJobs"),
    "QOSGrpSubmitJobsLimit": ("qos normal", "GrpSubmitJobs"),
    "MaxSubmitJobsPerAccount": ("qos normal", "MaxSubmitJobsPerAccount"),
}


def start_at_shared_limit(workflow: Workflow, limits, code: str) -> subprocess.Popen:
    """Start a workflow of one job under a group limit that a colleague's job fills.

    Returns once the step was refused a few times (with the tests' back-off of 1 s).
    The limit is the number of jobs queued now (all in account root and QOS normal here), so
    that a job left by another test cannot keep the room from appearing.
    """
    queued = subprocess.run(
        ["squeue", "-h", "-t", "PD,R,S,CF", "-o", "%i"], capture_output=True, text=True, check=True
    ).stdout.split()
    entity, setting = SHARED_LIMITS[code]
    limits(entity, f"{setting}={max(len(queued), 1)}")
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho done > out.txt\n")
    proc = workflow.popen()
    log = workflow.root / "job/slurmjob.log"
    wait_for(lambda: log.exists() and "Submitting" in log.read_text(), 60, "the first sbatch")
    time.sleep(4)
    assert proc.poll() is None, proc.communicate()[0]
    return proc


@pytest.mark.serial
@pytest.mark.parametrize("code", sorted(SHARED_LIMITS))
def test_shared_submit_limit_waits_for_colleagues(workflow: Workflow, limits, colleague, code):
    """A group limit filled by a colleague's job: the step waits (the user has no job queued,
    which used to fail with "probably 0"), and submits once the colleague's job left."""
    proc = start_at_shared_limit(workflow, limits, code)
    try:
        subprocess.run(["scancel", str(colleague)], check=True)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            workflow.kill(proc)
    assert proc.returncode == 0, stdout
    assert f"SLURM refused the job: {code}" in stdout
    assert "probably 0" not in stdout
    (record,) = workflow.final_jobs(1)
    assert record["State"] == "COMPLETED"
    assert (workflow.root / "job/out.txt").read_text() == "done\n"


@pytest.mark.serial
@pytest.mark.skipif(
    HOST < 4,
    reason="StepUp 3's director stops its workers only after the running steps ended, so a "
    "Ctrl-C of the whole workflow does not interrupt a waiting step there",
)
def test_interrupt_while_waiting_for_room(workflow: Workflow, limits, colleague):
    """Ctrl-C while the step waits for room says that no job was submitted, which is true.
    It used to say that the job was left alone."""
    proc = start_at_shared_limit(workflow, limits, "AssocGrpSubmitJobsLimit")
    try:
        # To `stepup build` alone, as StepUp 4 forwards it once to its director: a SIGINT to
        # the whole group could reach the director twice, which then kills the steps at once.
        os.kill(proc.pid, signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            workflow.kill(proc)
    assert "Interrupted while submitting. No job was submitted" in stdout
    assert "left alone" not in stdout
    assert workflow.jobs() == []


def test_unnamed_policy_refusal_is_tried_a_bounded_number_of_times(workflow: Workflow, tmp_path):
    """SLURM's generic policy message without a reason code: a few tries, then a clear error.

    A fake `sbatch` prints that message alone, as some sites' sbatch does: SLURM 22.05 here
    always prints the reason code too.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho never\n")
    bindir = Path(tmp_path) / "bin"
    calls = Path(tmp_path) / "calls"
    fake_command(
        bindir, "sbatch", f"echo call >> {calls}\necho {GENERIC_POLICY.strip()!r} >&2\nexit 1\n"
    )
    env = with_bin(workflow, bindir) | {"STEPUP_SBATCH_SUBMIT_RETRIES": "2"}
    result = workflow.boot(env=env, timeout=60)
    assert result.returncode & FAILED_RC, result.stdout
    assert f"SLURM refused {workflow.root / 'job/slurmjob.sh'} 3 times" in result.stdout
    assert "STEPUP_SBATCH_SUBMIT_RETRIES" in result.stdout
    assert calls.read_text().count("call") == 3


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


@pytest.fixture
def two_partitions() -> Iterator[tuple[str, str]]:
    """A small (MaxTime=1) and a big (MaxTime=10, down) partition; removed after the test.

    Named per process: two tests that change them must not share them under pytest-xdist.
    """
    names = (f"sq_small{os.getpid()}", f"sq_big{os.getpid()}")
    for name, settings in zip(names, (["MaxTime=1"], ["MaxTime=10", "State=DOWN"]), strict=True):
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)
        subprocess.run(
            ["scontrol", "create", f"PartitionName={name}", "Nodes=ALL", *settings], check=True
        )
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)


def test_job_that_another_partition_can_run_is_not_cancelled(workflow: Workflow, two_partitions):
    """`-p big,small` with a --time above small's MaxTime: while big is down, squeue shows
    small's PartitionTimeLimit. The job is not cancelled, and runs once big is up.
    It used to be cancelled after the grace period."""
    small, big = two_partitions
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job", f"#!/usr/bin/env bash\n#SBATCH -p {big},{small}\n#SBATCH --time=5\necho x\n"
    )
    proc = workflow.popen(env={"STEPUP_SBATCH_HOPELESS_GRACE": str(GRACE)})
    try:
        log = workflow.root / "job/slurmjob.log"
        wait_for(lambda: log.exists() and "Submitted" in log.read_text(), 60, "the submission")
        job_id = read_log(log).job_id
        squeue = ["squeue", "-h", "-j", str(job_id), "-o", "%r"]

        def reason() -> str:
            return subprocess.run(squeue, capture_output=True, text=True).stdout.strip()

        wait_for(lambda: reason() == "PartitionTimeLimit", 60, "the reason PartitionTimeLimit")
        # Three grace periods and cache periods: the old code had cancelled it by then.
        deadline = time.monotonic() + 3 * (GRACE + 2 * CACHE_TIMEOUT)
        while time.monotonic() < deadline:
            assert scontrol_state(job_id) == "PENDING"
            time.sleep(0.5)
        subprocess.run(["scontrol", "update", f"PartitionName={big}", "State=UP"], check=True)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            workflow.kill(proc)
    assert proc.returncode == 0, stdout
    assert f"Job {job_id} pends with SLURM's reason PartitionTimeLimit, but it may run" in stdout
    (record,) = workflow.final_jobs(1)
    assert record["State"] == "COMPLETED"


def test_job_that_no_partition_can_run_is_cancelled(workflow: Workflow, two_partitions):
    """`-p big,small` with a --time above both MaxTimes is cancelled after the grace period."""
    small, big = two_partitions
    subprocess.run(["scontrol", "update", f"PartitionName={big}", "State=UP"], check=True)
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job", f"#!/usr/bin/env bash\n#SBATCH -p {big},{small}\n#SBATCH --time=20\necho x\n"
    )
    result = workflow.boot(env={"STEPUP_SBATCH_HOPELESS_GRACE": str(GRACE)})
    check_cancelled_within_grace(workflow, result, "PartitionTimeLimit")


@pytest.mark.parametrize(
    ("job", "admitting"),
    [
        ({"Partition": "big,small", "TimeLimit": "00:05:00", "NumNodes": "1"}, ["big"]),
        ({"Partition": "small", "TimeLimit": "00:05:00", "NumNodes": "1"}, []),
        ({"Partition": "big,small", "TimeLimit": "00:00:30", "NumNodes": "1"}, ["big", "small"]),
        ({"Partition": "big", "TimeLimit": "UNLIMITED", "NumNodes": "1"}, []),
        ({"Partition": "big", "TimeLimit": "1-00:00:00", "NumNodes": "1"}, []),
        ({"Partition": "big", "TimeLimit": "00:05:00", "NumNodes": "2-2"}, []),
        ({"Partition": "open", "TimeLimit": "UNLIMITED", "NumNodes": "2"}, ["open"]),
        ({"Partition": "hidden", "TimeLimit": "00:05:00", "NumNodes": "1"}, ["hidden"]),
        # A limit that cannot be read rules out no partition: the job is not cancelled for it.
        ({"Partition": "big,small", "TimeLimit": "INVALID", "NumNodes": "1"}, ["big", "small"]),
        ({"Partition": "odd", "TimeLimit": "1-00:00:00", "NumNodes": "1"}, ["odd"]),
    ],
)
def test_admitting_partitions(job, admitting):
    """Key-value pairs as `scontrol show partition -o` prints them (slurm-wlm 22.05)."""
    partitions = [
        {"PartitionName": "small", "MaxTime": "00:01:00", "MinNodes": "1", "MaxNodes": "UNLIMITED",
         "TotalNodes": "1", "State": "UP"},
        {"PartitionName": "big", "MaxTime": "00:10:00", "MinNodes": "1", "MaxNodes": "UNLIMITED",
         "TotalNodes": "1", "State": "DOWN"},
        {"PartitionName": "open", "MaxTime": "UNLIMITED", "MinNodes": "0", "MaxNodes": "UNLIMITED",
         "TotalNodes": "4", "State": "UP"},
        {"PartitionName": "odd", "MaxTime": "INVALID", "MinNodes": "1", "MaxNodes": "UNLIMITED",
         "TotalNodes": "1", "State": "UP"},
    ]  # fmt: skip
    assert admitting_partitions(job, partitions) == admitting


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

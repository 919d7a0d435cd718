"""Attempts of a job: the retry settings of a folder, the files of earlier attempts, and
retries of jobs that SLURM ended with a retried state, on the real local SLURM.

The retries of a real infrastructure failure (NODE_FAIL) take the node down: they are in
test_faults.py, with the other disruptive tests. Here a TIMEOUT (with retry_on) stands in.
"""

import json
import time

import pytest
from conftest import JobTools, Workflow, fake_command, table, wait_for, with_bin
from path import Path

from stepup.queue.attempts import (
    archive_attempt,
    attempt_files,
    earlier_attempts,
    read_retry_settings,
    write_retry_settings,
)
from stepup.queue.errors import JobError
from stepup.queue.joblog import FORMAT_LINE, read_log
from stepup.queue.states import INFRASTRUCTURE_STATES

LOG = f"{FORMAT_LINE}\n{{digest}}\n2026-01-01T00:00:00.000000 Submitted {{job_id}}\n"


def write_log(path: Path, job_id: int, digest: str = "d", state: str = "NODE_FAIL"):
    path.write_text(
        LOG.format(digest=digest, job_id=job_id) + f"2026-01-01T00:00:01.000000 {state}\n"
    )


def test_retry_settings_round_trip(tmp_path):
    folder = Path(tmp_path) / "job"
    assert read_retry_settings(folder, 3) == (3, INFRASTRUCTURE_STATES)
    write_retry_settings(folder, 2, ("TIMEOUT",))
    assert read_retry_settings(folder, 3) == (2, INFRASTRUCTURE_STATES | {"TIMEOUT"})
    # retry_on alone: the number comes from STEPUP_QUEUE_RETRIES.
    write_retry_settings(folder, None, ("OUT_OF_MEMORY",))
    assert read_retry_settings(folder, 3) == (3, INFRASTRUCTURE_STATES | {"OUT_OF_MEMORY"})
    write_retry_settings(folder, None, ())
    assert not (folder / "slurmjob.retries").exists()


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("{", "Expecting"),
        ('{"retries": 1}', "'retry_on'"),
        ('{"retries": -2, "retry_on": []}', "retries=-2 is not a whole number >= 0"),
        ('{"retries": 1, "retry_on": ["FAILED"]}', "retry_on names FAILED"),
    ],
)
def test_bad_retry_settings(tmp_path, text, what):
    path = Path(tmp_path) / "slurmjob.retries"
    path.write_text(text)
    with pytest.raises(JobError) as excinfo:
        read_retry_settings(Path(tmp_path), 0)
    message = str(excinfo.value)
    assert message.startswith(f"Cannot read {path}: ")
    assert what in message
    assert "remove it and run the workflow again" in message


def test_archive_attempt(tmp_path):
    folder = Path(tmp_path)
    log = folder / "slurmjob.log"
    write_log(log, 11)
    (folder / "slurmjob.out").write_text("out 1\n")
    (folder / "slurmjob.err").write_text("err 1\n")
    assert archive_attempt(log) == 1
    assert not log.exists()
    assert (folder / "slurmjob.out.1").read_text() == "out 1\n"
    assert (folder / "slurmjob.err.1").read_text() == "err 1\n"
    write_log(log, 12, state="PREEMPTED")
    # An attempt may end before SLURM opened its output files.
    assert archive_attempt(log) == 2
    assert [p.name for p in attempt_files(folder)] == [
        "slurmjob.err.1",
        "slurmjob.log.1",
        "slurmjob.log.2",
        "slurmjob.out.1",
    ]
    assert [(a.job_id, a.last_state) for a in earlier_attempts(log, "d")] == [
        (11, "NODE_FAIL"),
        (12, "PREEMPTED"),
    ]
    # Attempts of other inputs are another series.
    assert earlier_attempts(log, "other") == []


def test_archive_attempt_after_a_kill(tmp_path):
    """Killed after the output was moved but before the log was: the move completes."""
    folder = Path(tmp_path)
    log = folder / "slurmjob.log"
    write_log(log, 11)
    (folder / "slurmjob.out.1").write_text("out 1\n")
    (folder / "slurmjob.err").write_text("err 1\n")
    assert archive_attempt(log) == 1
    assert sorted(p.name for p in folder.files()) == [
        "slurmjob.err.1",
        "slurmjob.log.1",
        "slurmjob.out.1",
    ]


def test_archive_attempt_never_overwrites(tmp_path):
    folder = Path(tmp_path)
    log = folder / "slurmjob.log"
    write_log(log, 11)
    (folder / "slurmjob.out").write_text("new\n")
    (folder / "slurmjob.out.1").write_text("mine\n")
    with pytest.raises(JobError) as excinfo:
        archive_attempt(log)
    assert str(excinfo.value) == (
        f"Cannot keep {folder / 'slurmjob.out'} of the earlier attempt as "
        f"{folder / 'slurmjob.out.1'}: that file exists. Move {folder / 'slurmjob.out.1'} "
        "elsewhere and run the workflow again."
    )
    assert (folder / "slurmjob.out.1").read_text() == "mine\n"
    assert log.exists()


# The first attempt runs into its time limit (SLURM's are whole minutes), the second finishes.
TIMES_OUT_ONCE = """\
#!/usr/bin/env bash
#SBATCH --time=0:05
#SBATCH --no-requeue
echo "attempt of job $SLURM_JOB_ID"
if [ ! -e slurmjob.log.1 ]; then sleep 600; fi
"""
RETRY_PLAN = """
static("job/", "job/slurmjob.sh")
sbatch("job/", retries={retries}, retry_on="TIMEOUT")
"""


def check_attempts(workflow: Workflow, states: list[str]):
    """SLURM ran one job per attempt, with these end states; the logs and outputs agree."""
    job = workflow.root / "job"
    records = workflow.final_jobs(len(states))
    assert [r["State"] for r in records] == states
    ids = [int(r["JobIDRaw"]) for r in records]
    logs = [job / f"slurmjob.log.{n}" for n in range(1, len(states))] + [job / "slurmjob.log"]
    assert [read_log(p).job_id for p in logs] == ids
    outs = [job / f"slurmjob.out.{n}" for n in range(1, len(states))] + [job / "slurmjob.out"]
    assert [p.read_text() for p in outs] == [f"attempt of job {i}\n" for i in ids]


def test_timeout_retried(jobtools: JobTools):
    """retry_on=TIMEOUT with retries=1: the second attempt succeeds; both are on record, and
    `stepup jobs` shows the earlier attempt."""
    workflow = jobtools.workflow
    workflow.plan(RETRY_PLAN.format(retries=1))
    workflow.job("job", TIMES_OUT_ONCE)
    result = workflow.boot(timeout=400)
    assert result.returncode == 0, result.stdout
    check_attempts(workflow, ["TIMEOUT", "COMPLETED"])
    assert "ended with TIMEOUT: submitting it again, attempt 2 of at most 2" in result.stdout
    first = read_log(workflow.root / "job/slurmjob.log.1")
    assert first.last_state == "TIMEOUT"
    shown = jobtools.run("jobs", "--json")
    assert shown.returncode == 0, shown.stderr
    (row,) = json.loads(shown.stdout)["jobs"]
    assert row["state"] == "COMPLETED"
    assert row["attempts"] == [{"job_id": first.job_id, "state": "TIMEOUT"}]
    (cells,) = table(jobtools.run("jobs").stdout)
    assert cells["REASON/EXIT"] == "exit 0, attempt 2"
    # A changed number of retries is no change of the job's inputs: nothing is submitted.
    for retries in 3, 0:
        workflow.plan(RETRY_PLAN.format(retries=retries))
        result = workflow.boot()
        assert result.returncode == 0, result.stdout
        check_attempts(workflow, ["TIMEOUT", "COMPLETED"])


def test_no_retry_left(workflow: Workflow):
    """retries=0 fails as without retries; a higher number then retries the failed job."""
    workflow.plan(RETRY_PLAN.format(retries=0))
    workflow.job("job", TIMES_OUT_ONCE)
    result = workflow.boot(timeout=400)
    assert result.returncode != 0
    assert "Last state reported by SLURM: TIMEOUT" in result.stdout
    check_attempts(workflow, ["TIMEOUT"])
    workflow.plan(RETRY_PLAN.format(retries=1))
    result = workflow.boot(timeout=400)
    assert result.returncode == 0, result.stdout
    check_attempts(workflow, ["TIMEOUT", "COMPLETED"])


def test_killed_during_retry(workflow: Workflow, tmp_path):
    """SIGKILL of the step right after the second attempt's sbatch: one job per attempt.

    A fake `sbatch` on PATH runs the real one and then kills its caller, but only once the
    first attempt's log was moved aside: a real SLURM cannot stop its client on demand.
    """
    bindir = Path(tmp_path) / "bin"
    marker = bindir / "killed"
    fake_command(
        bindir,
        "sbatch",
        'if [ ! -e slurmjob.log.1 ]; then exec /usr/bin/sbatch "$@"; fi\n'
        f'out=$(/usr/bin/sbatch "$@")\ntouch {marker}\nkill -9 "$PPID"\necho "$out"\n',
    )
    workflow.plan(RETRY_PLAN.format(retries=2))
    workflow.job("job", TIMES_OUT_ONCE)
    proc = workflow.popen(env=with_bin(workflow, bindir))
    wait_for(marker.exists, 300, "the second attempt's sbatch")
    time.sleep(1)
    workflow.kill(proc)
    log = read_log(workflow.root / "job/slurmjob.log")
    assert (log.job_id, log.token is not None) == (None, True)
    result = workflow.boot(timeout=300)
    assert result.returncode == 0, result.stdout
    assert "Earlier attempts of this job: job " in result.stdout
    check_attempts(workflow, ["TIMEOUT", "COMPLETED"])

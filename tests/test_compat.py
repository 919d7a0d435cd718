"""Job folders move both ways between the original releases and this package.

A workflow is started by one release, SIGKILLed while its job runs, and finished by the other
on the real local SLURM: the job is never submitted again. The originals come from PyPI, each
in a venv of its own (`tools/setup-venv.sh orig3` for stepup-queue 1.0.2 on StepUp 3,
`tools/setup-venv.sh orig4` for 2.0.1 on StepUp 4), and run only as black boxes.

The tests drive the workflows of both hosts themselves, each with the `stepup` of its venv, so
they run once, from the StepUp 4 run of the suite, and are skipped on StepUp 3.
"""

from dataclasses import dataclass, field

import pytest
from conftest import HOST, Workflow, scontrol_state, wait_for
from path import Path

from stepup.queue.joblog import read_log

pytestmark = pytest.mark.skipif(
    HOST < 4, reason="run once, from the StepUp 4 run: it drives the workflows of both hosts"
)

PROJECT = Path(__file__).parent.parent
PLAN = """
static("job/", "job/slurmjob.sh")
sbatch("job/")
"""


@dataclass(frozen=True)
class Venv:
    """A venv in the project folder that runs workflows of one StepUp Queue release."""

    folder: str
    host: int
    setup: str
    env: dict[str, str] = field(default_factory=dict)


VENVS = {
    # 1.0.2 reads its polling variables as integers (a float fails at import).
    "orig3": Venv(
        ".venv-orig3",
        3,
        "orig3",
        {"STEPUP_SBATCH_POLLING_INTERVAL": "1", "STEPUP_SBATCH_TIME_MARGIN": "1"},
    ),
    "ours3": Venv(".venv3", 3, "3 test"),
    # 2.0.1 ignores the polling variables of 1.0.2 and ours, and has integer ones of its own.
    "orig4": Venv(
        ".venv-orig4",
        4,
        "orig4",
        {"STEPUP_SBATCH_POLLING_MIN": "1", "STEPUP_SBATCH_POLLING_MAX": "2"},
    ),
    "ours4": Venv(".venv", 4, "4 dev"),
}


def run_with(workflow: Workflow, name: str) -> Workflow:
    """The workflow, run by the stepup of one of the VENVS."""
    venv = VENVS[name]
    bindir = PROJECT / venv.folder / "bin"
    if not (bindir / "stepup").is_file():
        pytest.fail(f"{bindir / 'stepup'} is missing: run `tools/setup-venv.sh {venv.setup}`.")
    # 1.0.2 keeps its cache in ~/.cache/stepup-queue, whatever XDG_CACHE_HOME says.
    home = workflow.root.parent / "home"
    home.makedirs_p()
    return workflow.using(bindir, venv.host, venv.env | {"HOME": str(home)})


def submitted(log_path: Path) -> bool:
    return log_path.exists() and "Submitted" in log_path.read_text()


@pytest.mark.parametrize(
    ("first", "second"),
    [("orig3", "ours3"), ("ours3", "orig3"), ("orig4", "ours4"), ("ours4", "orig4")],
)
def test_killed_workflow_finished_by_other_release(workflow: Workflow, first: str, second: str):
    """SIGKILL the workflow of one release while its job runs: the other finishes that job."""
    starter = run_with(workflow, first)
    starter.plan(PLAN)
    starter.job("job", "#!/usr/bin/env bash\ntouch started\nsleep 6\necho survived\n")
    job = workflow.root / "job"
    proc = starter.popen()
    wait_for(lambda: submitted(job / "slurmjob.log"), 60, "the submission")
    wait_for((job / "started").exists, 60, "the job to start")
    starter.kill(proc)
    job_id = read_log(job / "slurmjob.log").job_id
    assert scontrol_state(job_id) == "RUNNING"
    result = run_with(workflow, second).boot()
    assert result.returncode == 0, result.stdout + result.stderr
    log = read_log(job / "slurmjob.log")
    assert log.job_id == job_id
    assert (job / "slurmjob.out").read_text() == "survived\n"
    assert (job / "slurmjob.ret").read_text() == "0\n"
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(job_id)
    # The wrapper of 1.0.2 ends with a typo (`exot`): SLURM sees its jobs fail with 127,
    # while slurmjob.ret holds the script's exit code, which decides the step.
    assert record["State"] == ("FAILED" if first == "orig3" else "COMPLETED")


def test_bare_submitting_record_of_2_0_1(workflow: Workflow, tmp_path):
    """The original 2.0.1 is killed in sbatch: ours finds that job by folder and time.

    2.0.1 writes a bare `Submitting` record (no token: its job has no comment) before it runs
    sbatch. A fake `sbatch` first on PATH of the original's workflow runs the real one and then
    sleeps, so that the job is in SLURM while the log has no `Submitted` record yet: a real
    SLURM cannot stop its client between the submission and its answer on demand.
    Ours starts at once, so the job is often not yet in sacct (slurmctld sends it to the
    accounting database a second or so later) and must be found in squeue's list.
    """
    bindir = Path(tmp_path) / "bin"
    bindir.makedirs_p()
    marker = bindir / "job_id"
    fake = bindir / "sbatch"
    fake.write_text(
        f'#!/usr/bin/env bash\nout=$(/usr/bin/sbatch "$@") || exit\necho "$out" > {marker}\n'
        'sleep 300\necho "$out"\n'
    )
    fake.chmod(0o755)
    original = run_with(workflow, "orig4")
    original.plan(PLAN)
    original.job("job", "#!/usr/bin/env bash\nsleep 6\necho found\n")
    proc = original.using(bindir, 4).popen()
    wait_for(marker.exists, 60, "the real sbatch in the fake one")
    original.kill(proc)
    job = workflow.root / "job"
    log = read_log(job / "slurmjob.log")
    assert (log.job_id, log.token) == (None, None)
    assert log.submitting_time is not None
    job_id = int(marker.read_text())
    assert scontrol_state(job_id) in ("PENDING", "RUNNING")
    result = run_with(workflow, "ours4").boot()
    assert result.returncode == 0, result.stdout + result.stderr
    log = read_log(job / "slurmjob.log")
    assert log.job_id == job_id
    assert (job / "slurmjob.out").read_text() == "found\n"
    assert (job / "slurmjob.ret").read_text() == "0\n"
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(job_id)


@pytest.mark.parametrize(("ours", "original"), [("ours3", "orig3"), ("ours4", "orig4")])
def test_retried_job_finished_by_original(workflow: Workflow, ours: str, original: str):
    """Ours retries a job after a TIMEOUT and is killed while the second attempt runs: the
    original finishes that attempt, since slurmjob.log holds only the current attempt (the
    originals take its first Submitted record for the job), and submits nothing."""
    starter = run_with(workflow, ours)
    starter.plan("""
        static("job/", "job/slurmjob.sh")
        sbatch("job/", retries=1, retry_on="TIMEOUT")
    """)
    starter.job(
        "job",
        "#!/usr/bin/env bash\n#SBATCH --time=0:05\n#SBATCH --no-requeue\n"
        "if [ ! -e slurmjob.log.1 ]; then sleep 600; fi\ntouch started\nsleep 6\necho second\n",
    )
    job = workflow.root / "job"
    proc = starter.popen()
    wait_for((job / "started").exists, 300, "the second attempt to start")
    starter.kill(proc)
    job_id = read_log(job / "slurmjob.log").job_id
    assert read_log(job / "slurmjob.log.1").last_state == "TIMEOUT"
    # The original's sbatch() knows no retries: the step (command, digest) stays the same.
    finisher = run_with(workflow, original)
    finisher.plan(PLAN)
    result = finisher.boot()
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_log(job / "slurmjob.log").job_id == job_id
    assert (job / "slurmjob.out").read_text() == "second\n"
    records = workflow.final_jobs(2)
    assert [r["JobIDRaw"] for r in records][-1] == str(job_id)
    assert records[0]["State"] == "TIMEOUT"

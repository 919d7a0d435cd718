"""Faults a workflow must survive, on the real local SLURM and with real `stepup boot`.

Tests marked `disruptive` stop SLURM daemons or take the node down; tools/test.sh runs them
one at a time after the parallel part of the suite, so they cannot disturb other tests.
Fake commands on PATH appear only where SLURM cannot produce the fault on demand; each such
test says so in its docstring.
"""

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import (
    KILL_POINTS,
    SIMPLE_PLAN,
    Workflow,
    fake_command,
    scontrol_state,
    wait_for,
    with_bin,
)
from path import Path

from stepup.queue.joblog import FORMAT_LINE, JobLog, append_record, read_log
from stepup.queue.slurm.parsers import CLOCK_SLACK

TOOLS = Path(__file__).parent.parent / "tools"
SLURM_RUN = Path("/var/lib/stepup-queue-slurm/run")


def submitted(workflow: Workflow, folder: str = "job") -> bool:
    path = workflow.root / folder / "slurmjob.log"
    return path.exists() and "Submitted" in path.read_text()


def check_one_job_on_localcluster(workflow: Workflow, env: dict[str, str]):
    """Run the workflow to its end: one job ran, logged with its cluster, and printed once."""
    result = workflow.boot(env=env)
    assert result.returncode == 0, result.stdout
    (record,) = workflow.final_jobs(1)
    log = read_log(workflow.root / "job/slurmjob.log")
    assert (log.job_id, log.cluster) == (int(record["JobIDRaw"]), "localcluster")
    assert (workflow.root / "job/slurmjob.out").read_text() == "once\n"


def kill_during_submission(
    workflow: Workflow, bindir: Path, point: str, env: dict[str, str] | None = None
) -> JobLog:
    """Boot the workflow with a fake sbatch that kills the worker at `point`; return the log."""
    marker = bindir / "fake-ran"
    fake_command(bindir, "sbatch", f"touch {marker}\n{KILL_POINTS[point]}")
    proc = workflow.popen(env=(env or {}) | with_bin(workflow, bindir))
    wait_for(marker.exists, 60, "the fake sbatch to run")
    time.sleep(1)
    workflow.kill(proc)
    log = read_log(workflow.root / "job/slurmjob.log")
    assert log.token is not None
    assert log.job_id is None
    return log


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_exactly_once_when_killed_during_submission(workflow: Workflow, tmp_path, point):
    """SIGKILL of the worker around sbatch: one job in SLURM, and the next boot finishes it.

    A fake `sbatch` on PATH kills its caller at the chosen point (before, while or after the
    real sbatch runs): a real SLURM cannot make a client die at a given instruction.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 1\necho once\n")
    log = kill_during_submission(workflow, Path(tmp_path) / "bin", point)
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    (record,) = workflow.final_jobs(1)
    assert record["Comment"] == log.token
    assert record["JobIDRaw"] == str(read_log(workflow.root / "job/slurmjob.log").job_id)
    assert (workflow.root / "job/slurmjob.out").read_text() == "once\n"


@pytest.mark.parametrize("where", ["environment", "rc"])
def test_interrupted_submission_to_a_cluster_named_in_the_environment(
    workflow: Workflow, tmp_path, where
):
    """With SBATCH_CLUSTERS set, the job found after a kill is logged with that cluster.

    sbatch takes the cluster from the environment over the script's -M: the job is looked up
    there and logged as `ID;CLUSTER`, as sbatch prints it for a submission that was not cut
    off. The variable is set in the workflow's environment, or by rc (as `module swap
    cluster/NAME` does on some sites). A fake `sbatch` kills the worker right after the real
    sbatch ran.
    """
    env = {"SBATCH_CLUSTERS": "localcluster"}
    if where == "rc":
        workflow.plan("""
            static("job/", "job/slurmjob.sh")
            sbatch("job/", rc="export SBATCH_CLUSTERS=localcluster; echo noise")
        """)
        env = {}
    else:
        workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    kill_during_submission(workflow, Path(tmp_path) / "bin", "after_sbatch", env)
    check_one_job_on_localcluster(workflow, env)


def test_changed_inputs_after_interrupted_submission(workflow: Workflow, tmp_path):
    """Killed right after sbatch, then the inputs change: resubmit finds the old job by token.

    While SLURM cannot be asked, the step refuses to submit (the old job would be left
    running unnoticed); once it can, the old job is cancelled and the new one runs.
    A fake `sbatch` kills the worker right after the real sbatch, and a fake `squeue` fails
    as when the controller does not answer: neither can be had from SLURM on demand.
    """
    workflow.plan("""
        static("job/", "job/slurmjob.sh", "job/word.txt")
        sbatch("job/", inp="word.txt")
    """)
    # The job script must not change while the old job runs it: the input file changes.
    workflow.job(
        "job",
        """\
        #!/usr/bin/env bash
        read -r word < word.txt
        echo "$word" > seen.txt
        if [ "$word" = old ]; then sleep 300; fi
        echo "$word"
        """,
    )
    word = workflow.root / "job/word.txt"
    word.write_text("old\n")
    log = kill_during_submission(workflow, Path(tmp_path) / "bin", "after_sbatch")
    listed = subprocess.run(
        ["squeue", "--me", "-h", "-o", "%i %k"], capture_output=True, text=True, check=True
    ).stdout.split()
    old = int(listed[listed.index(log.token) - 1])
    wait_for((workflow.root / "job/seen.txt").exists, 60, "the old job to read its input")
    word.write_text("new\n")
    env = {"STEPUP_QUEUE_ONCHANGE": "resubmit"}
    broken = Path(tmp_path) / "broken"
    fake_command(
        broken,
        "squeue",
        'echo "squeue: error: Unable to contact slurm controller (connect failure)" >&2\nexit 1\n',
    )
    result = workflow.boot(env=env | with_bin(workflow, broken))
    assert result.returncode != 0
    assert "SLURM could not be asked whether that submission reached it" in result.stdout
    assert scontrol_state(old) in ("PENDING", "RUNNING")
    assert read_log(log.path) == log
    result = workflow.boot(env=env)
    assert result.returncode == 0, result.stdout
    assert f"cancelled the old job {old}" in result.stdout
    records = {r["JobIDRaw"]: r for r in workflow.final_jobs(2)}
    assert records.pop(str(old))["State"].startswith("CANCELLED")
    ((new_id, record),) = records.items()
    assert record["State"] == "COMPLETED"
    assert read_log(log.path).job_id == int(new_id)
    assert (workflow.root / "job/slurmjob.out").read_text() == "new\n"


def test_exactly_once_when_killed_before_first_record(workflow: Workflow):
    """A kill right after the log was started (no Submitting record) submits exactly once."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    digest = workflow.step_digest("job")
    (workflow.root / "job/slurmjob.log").write_text(
        f"StepUp Queue sbatch wait log format version 2\n{digest}\n"
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert len(workflow.final_jobs(1)) == 1


def test_sbatch_transient_failure_is_retried(workflow: Workflow, tmp_path):
    """sbatch cannot reach the controller twice, then works: one job, the step succeeds.

    A fake `sbatch` on PATH fails twice with SLURM's own message before running the real one:
    stopping slurmctld for exactly two calls is not possible on demand.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho retried\n")
    bindir = Path(tmp_path) / "bin"
    calls = Path(tmp_path) / "calls"
    fake_command(
        bindir,
        "sbatch",
        f'echo call >> {calls}\nif [ "$(wc -l < {calls})" -le 2 ]; then\n'
        '  echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller'
        ' (connect failure)" >&2\n  exit 1\nfi\nexec /usr/bin/sbatch "$@"\n',
    )
    result = workflow.boot(env=with_bin(workflow, bindir))
    assert result.returncode == 0, result.stdout
    assert calls.read_text().count("call") == 3
    assert len(workflow.final_jobs(1)) == 1
    assert (workflow.root / "job/slurmjob.out").read_text() == "retried\n"


def test_sbatch_transient_failure_gives_up(workflow: Workflow, tmp_path):
    """A controller that never answers: bounded retries, then a clear failure, no job.

    A fake `sbatch` on PATH always fails with SLURM's message for an unreachable controller.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho never\n")
    bindir = Path(tmp_path) / "bin"
    calls = Path(tmp_path) / "calls"
    fake_command(
        bindir,
        "sbatch",
        f"echo call >> {calls}\n"
        'echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller'
        ' (connect failure)" >&2\nexit 1\n',
    )
    env = with_bin(workflow, bindir) | {"STEPUP_SBATCH_SUBMIT_RETRIES": "2"}
    result = workflow.boot(env=env)
    assert result.returncode != 0
    assert f"Could not submit {workflow.root / 'job/slurmjob.sh'}" in result.stdout
    assert "Unable to contact slurm controller" in result.stdout
    # One squeue lookup before each retry may find the job; none did, so 1 + 2 calls.
    assert calls.read_text().count("call") == 3
    time.sleep(2)
    assert workflow.jobs() == []


def test_sbatch_permanent_failure_is_not_retried(workflow: Workflow, tmp_path):
    """The real sbatch refuses an unknown partition: one call, sbatch's message shown."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\n#SBATCH --partition=nosuchpartition\necho no\n")
    bindir = Path(tmp_path) / "bin"
    calls = Path(tmp_path) / "calls"
    fake_command(bindir, "sbatch", f'echo call >> {calls}\nexec /usr/bin/sbatch "$@"\n')
    start = time.monotonic()
    result = workflow.boot(env=with_bin(workflow, bindir))
    assert result.returncode != 0
    assert "invalid partition" in result.stdout.lower()
    assert calls.read_text().count("call") == 1
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("query", ["squeue", "scontrol"])
def test_status_query_hangs(workflow: Workflow, tmp_path, query):
    """A status query that hangs is killed after the command timeout; the job still finishes.

    A fake `squeue`/`scontrol` on PATH that never returns: a real controller hangs only by
    accident.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 6\necho done\n")
    bindir = Path(tmp_path) / "bin"
    calls = Path(tmp_path) / "calls"
    fake_command(bindir, query, f"echo call >> {calls}\nsleep 600\n")
    env = with_bin(workflow, bindir) | {
        "STEPUP_SBATCH_QUERY": query,
        "STEPUP_SBATCH_COMMAND_TIMEOUT": "2",
    }
    start = time.monotonic()
    result = workflow.boot(env=env)
    assert result.returncode == 0, result.stdout
    assert calls.exists()
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("query", ["squeue", "scontrol"])
def test_status_query_fails(workflow: Workflow, tmp_path, query):
    """A failing status query is transient: the job still finishes and is not resubmitted.

    A fake `squeue`/`scontrol` on PATH fails with SLURM's message for an unreachable controller.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 6\necho done\n")
    bindir = Path(tmp_path) / "bin"
    calls = Path(tmp_path) / "calls"
    fake_command(
        bindir,
        query,
        f"echo call >> {calls}\n"
        'echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2\n'
        "exit 1\n",
    )
    env = with_bin(workflow, bindir) | {"STEPUP_SBATCH_QUERY": query}
    result = workflow.boot(env=env)
    assert result.returncode == 0, result.stdout
    assert calls.exists()
    assert len(workflow.final_jobs(1)) == 1


def test_job_purged_while_workflow_down(workflow: Workflow):
    """Jobs that ended and left slurmctld's memory (MinJobAge) while no workflow ran.

    The one with an exit code in slurmjob.ret succeeds at once; the one killed without one
    fails with the state recorded in the accounting database.
    """
    workflow.plan("""
        static("ok/", "ok/slurmjob.sh", "killed/", "killed/slurmjob.sh")
        sbatch("ok/")
        sbatch("killed/")
    """)
    # Still running when the workflow is killed, so that it ends while no workflow runs.
    workflow.job("ok", "#!/usr/bin/env bash\nsleep 10\necho fine\n")
    # Killing the wrapper (the script's parent) leaves slurmjob.ret empty.
    workflow.job("killed", '#!/usr/bin/env bash\nkill -9 "$PPID"\n')
    proc = workflow.popen("-n", "2")
    wait_for(lambda: submitted(workflow, "ok") and submitted(workflow, "killed"), 60, "submission")
    workflow.kill(proc)
    ids = [read_log(workflow.root / f / "slurmjob.log").job_id for f in ("ok", "killed")]
    wait_for(lambda: all(scontrol_state(i) is None for i in ids), 180, "SLURM to purge the jobs")
    start = time.monotonic()
    result = workflow.boot("-n", "2")
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    assert (workflow.root / "ok/slurmjob.out").read_text() == "fine\n"
    assert f"SUCCESS │ {workflow.label('ok')}" in result.stdout
    assert f"Job {ids[1]} ended without an exit code" in result.stdout
    assert "Last state reported by SLURM: FAILED" in result.stdout
    assert read_log(workflow.root / "killed/slurmjob.log").last_state == "FAILED"


def assert_ended_in(workflow: Workflow, result: subprocess.CompletedProcess, state: str):
    """The step failed naming the job, SLURM's end state and slurmjob.err; sacct agrees."""
    assert result.returncode != 0
    job_id = read_log(workflow.root / "job/slurmjob.log").job_id
    assert f"Job {job_id} ended without an exit code in slurmjob.ret" in result.stdout
    assert f"Last state reported by SLURM: {state}" in result.stdout
    assert "slurmjob.err" in result.stdout
    (record,) = workflow.final_jobs(1)
    assert record["State"] == state


def test_timeout(workflow: Workflow, jobtools):
    """A job that exceeds its time limit: the step fails and names TIMEOUT, as `stepup jobs`
    does."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\n#SBATCH --time=0:05\nsleep 600\n")
    assert_ended_in(workflow, workflow.boot(), "TIMEOUT")
    result = jobtools.run("jobs", "--json")
    assert result.returncode == 0, result.stderr
    (job,) = json.loads(result.stdout)["jobs"]
    assert (job["folder"], job["state"], job["exit_code"]) == ("job", "TIMEOUT", None)
    # SLURM's time limits are whole minutes.
    assert job["ran_seconds"] >= 60
    assert "TIMEOUT" in jobtools.run("jobs").stdout


def test_cache_folder_not_usable(workflow: Workflow):
    """A cache folder that cannot be created: clear error before anything is submitted."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho never\n")
    result = workflow.boot(env={"STEPUP_QUEUE_CACHE_DIR": "/proc/no-such-folder"})
    assert result.returncode != 0
    assert "Cannot use the shared scheduler cache in /proc/no-such-folder" in result.stdout
    assert "STEPUP_QUEUE_CACHE_DIR" in result.stdout
    assert not (workflow.root / "job/slurmjob.log").exists()


def test_home_unset(workflow: Workflow):
    """Without HOME, XDG_CACHE_HOME and STEPUP_QUEUE_CACHE_DIR: a clear error, no job."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho never\n")
    env = {k: v for k, v in workflow.env.items() if k not in ("HOME", "XDG_CACHE_HOME")}
    env.pop("STEPUP_QUEUE_CACHE_DIR")
    workflow.env = env
    result = workflow.boot()
    assert result.returncode != 0
    assert "HOME and XDG_CACHE_HOME are unset" in result.stdout
    assert not (workflow.root / "job/slurmjob.log").exists()


def test_job_folder_not_writable(workflow: Workflow):
    """A job folder where the log cannot be written: clear error, no job, and a later run works.

    `chattr +i` makes the folder immutable, even for root (the tests run as root, so a mode
    of 555 would not stop the write).
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho later\n")
    folder = workflow.root / "job"
    subprocess.run(["chattr", "+i", folder], check=True)
    try:
        result = workflow.boot()
    finally:
        subprocess.run(["chattr", "-i", folder], check=True)
    assert result.returncode != 0
    assert f"Error: Operation not permitted: {folder / 'slurmjob.log'}" in result.stdout
    assert "run the workflow again" in result.stdout
    assert "Traceback" not in result.stdout
    assert workflow.jobs() == []
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert len(workflow.final_jobs(1)) == 1
    assert (folder / "slurmjob.out").read_text() == "later\n"


def test_log_not_writable_after_sbatch(workflow: Workflow, tmp_path):
    """The log cannot take the Submitted record (e.g. quota exceeded): one job all the same.

    A fake `sbatch` on PATH runs the real one and then makes `slurmjob.log` immutable
    (`chattr +i`): a file system that fails at exactly that moment cannot be had otherwise.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 1\necho once\n")
    bindir = Path(tmp_path) / "bin"
    fake_command(bindir, "sbatch", '/usr/bin/sbatch "$@"\nchattr +i slurmjob.log\n')
    log = workflow.root / "job/slurmjob.log"
    try:
        result = workflow.boot(env=with_bin(workflow, bindir))
    finally:
        subprocess.run(["chattr", "-i", log], check=False)
    assert result.returncode != 0
    assert f"Error: Operation not permitted: {log}" in result.stdout
    assert "Traceback" not in result.stdout
    assert read_log(log).job_id is None
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(read_log(log).job_id)
    assert (workflow.root / "job/slurmjob.out").read_text() == "once\n"


# Disruptive tests: they stop daemons of the shared local cluster.


def stop_daemon(name: str):
    pid = int((SLURM_RUN / f"{name}.pid").read_text())
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, f"{name} to stop")


def start_daemons(cgroup: bool = False):
    """Start what does not run, with the usual settings or with jobs confined by cgroups."""
    env = os.environ | {"STEPUP_QUEUE_SLURM_CGROUP": "1" if cgroup else "0"}
    subprocess.run(["bash", TOOLS / "local-slurm.sh", "start"], env=env, check=True)


@pytest.fixture
def restore_slurm():
    """Whatever happens in the test, leave every daemon running and the node up."""
    yield
    start_daemons()


@pytest.fixture
def cgroup_slurm():
    """For one test, memory limits enforced by cgroups: the daemons restart twice."""
    if not os.access("/sys/fs/cgroup/memory/cgroup.procs", os.W_OK):
        pytest.skip("no writable cgroup v1 memory controller: SLURM cannot limit memory here")
    start_daemons(cgroup=True)
    try:
        yield
    finally:
        start_daemons()


@pytest.mark.disruptive
def test_out_of_memory(workflow: Workflow, cgroup_slurm):
    """A job over its --mem limit is killed by the kernel: the step names OUT_OF_MEMORY.

    The kernel kills python, so the script ends with exit code 137, which the step reports
    with SLURM's state.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """\
        #!/usr/bin/env bash
        #SBATCH --mem=64M
        python3 -c 'chunks = [bytearray(2**25) for _ in range(40)]'
        """,
    )
    result = workflow.boot()
    assert result.returncode != 0
    job_id = read_log(workflow.root / "job/slurmjob.log").job_id
    assert f"Job {job_id} ended with exit code 137 (SLURM: OUT_OF_MEMORY)." in result.stdout
    assert (workflow.root / "job/slurmjob.ret").read_text() == "137\n"
    (record,) = workflow.final_jobs(1)
    assert record["State"] == "OUT_OF_MEMORY"
    assert "oom-kill" in (workflow.root / "job/slurmjob.err").read_text()


@pytest.fixture
def accounting_without_comments():
    """For one test, SLURM's default: the accounting database does not store job comments."""
    conf = Path("/etc/slurm/slurm.conf")
    original = conf.read_text()
    assert "AccountingStoreFlags=job_comment\n" in original
    conf.write_text(original.replace("AccountingStoreFlags=job_comment\n", ""))
    subprocess.run(["scontrol", "reconfigure"], check=True)
    try:
        yield
    finally:
        conf.write_text(original)
        subprocess.run(["scontrol", "reconfigure"], check=True)


@pytest.mark.disruptive
def test_exactly_once_without_comments_in_accounting(
    workflow: Workflow, tmp_path, accounting_without_comments
):
    """Killed right after sbatch, restarted after SLURM purged the job, sacct without comments.

    Then neither squeue nor sacct shows the token: the job is found as the one submitted from
    the job folder after the Submitting record. A fake `sbatch` on PATH kills its caller right
    after the real sbatch, as in test_exactly_once_when_killed_during_submission.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    log = kill_during_submission(workflow, Path(tmp_path) / "bin", "after_sbatch").path
    (record,) = workflow.final_jobs(1)
    assert record["Comment"] == ""
    job_id = int(record["JobIDRaw"])
    wait_for(lambda: scontrol_state(job_id) is None, 180, "SLURM to purge the job")
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert read_log(log).job_id == job_id
    assert [r["JobIDRaw"] for r in workflow.final_jobs(1)] == [str(job_id)]
    assert (workflow.root / "job/slurmjob.out").read_text() == "once\n"


@pytest.mark.disruptive
def test_slurmctld_outage(workflow: Workflow, restore_slurm):
    """slurmctld stops for 30 s while steps wait and one step submits: all finish, no error.

    `short` ends during the outage (noticed through slurmjob.ret), `long` ends after it,
    and `next` becomes ready during the outage, so its sbatch retries until slurmctld is back.
    """
    workflow.plan("""
        static("short/", "short/slurmjob.sh", "long/", "long/slurmjob.sh")
        static("next/", "next/slurmjob.sh")
        sbatch("short/", out="done.txt")
        sbatch("long/")
        sbatch("next/", inp="../short/done.txt")
    """)
    workflow.job("short", "#!/usr/bin/env bash\nsleep 10\ntouch done.txt\n")
    workflow.job("long", "#!/usr/bin/env bash\nsleep 50\necho long\n")
    workflow.job("next", "#!/usr/bin/env bash\ncat ../short/done.txt\necho next\n")
    env = {"STEPUP_SBATCH_SUBMIT_RETRIES": "10", "STEPUP_SBATCH_SUBMIT_BACKOFF": "2"}
    proc = workflow.popen("-n", "3", env=env)
    wait_for(lambda: submitted(workflow, "short") and submitted(workflow, "long"), 60, "jobs")
    stop_daemon("slurmctld")
    # The outage outlasts `short`, the cache period and several submit retries.
    time.sleep(30)
    start_daemons()
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert (workflow.root / "next/slurmjob.out").read_text() == "next\n"
    assert (workflow.root / "long/slurmjob.out").read_text() == "long\n"
    records = workflow.final_jobs(3)
    assert sorted(r["State"] for r in records) == ["COMPLETED"] * 3


@pytest.mark.disruptive
def test_slurmdbd_outage(workflow: Workflow, restore_slurm):
    """slurmdbd stops for 30 s while steps wait: no crash, no hang, right outcomes.

    `cluster` uses -M, so its status queries need the database; `killed` ends without an
    exit code during the outage, so its end is decided from squeue alone.
    """
    workflow.plan("""
        static("cluster/", "cluster/slurmjob.sh", "killed/", "killed/slurmjob.sh")
        sbatch("cluster/")
        sbatch("killed/")
    """)
    workflow.job("cluster", "#!/usr/bin/env bash\n#SBATCH -M localcluster\nsleep 20\necho ok\n")
    workflow.job("killed", '#!/usr/bin/env bash\nsleep 15\nkill -9 "$PPID"\n')
    proc = workflow.popen("-n", "2")
    wait_for(lambda: submitted(workflow, "cluster") and submitted(workflow, "killed"), 60, "jobs")
    stop_daemon("slurmdbd")
    start = time.monotonic()
    # The outage outlasts both jobs.
    time.sleep(30)
    start_daemons()
    output, _ = proc.communicate(timeout=300)
    assert time.monotonic() - start < 150
    assert proc.returncode != 0
    assert (workflow.root / "cluster/slurmjob.out").read_text() == "ok\n"
    assert f"SUCCESS │ {workflow.label('cluster')}" in output
    killed_id = read_log(workflow.root / "killed/slurmjob.log").job_id
    assert f"Job {killed_id} ended without an exit code" in output
    assert "Traceback" not in output


def node_name() -> str:
    return subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()


def set_node(state: str, check: bool = True):
    """`down` fails every job running on the (only) node with NODE_FAIL; `resume` restores it."""
    command = ["scontrol", "update", f"nodename={node_name()}", f"state={state}"]
    if state == "down":
        command.append("reason=stepup-queue-test")
    subprocess.run(command, check=check)


def through_node_failure(
    workflow: Workflow, retries: int | None, script: str, resume_when=None
) -> tuple[int, str, int]:
    """Run a job, take the node down once it runs, and resume the node when `resume_when(job_id)`
    holds (or once the workflow ended, when it is None).

    Returns
    -------
    returncode, output, job_id
        Of the workflow, and the first job.
    """
    args = "" if retries is None else f", retries={retries}"
    workflow.plan(f"""
        static("job/", "job/slurmjob.sh")
        sbatch("job/"{args})
    """)
    workflow.job("job", script)
    proc = workflow.popen()
    try:
        wait_for(lambda: submitted(workflow), 60, "submission")
        job_id = read_log(workflow.root / "job/slurmjob.log").job_id
        wait_for(lambda: scontrol_state(job_id) == "RUNNING", 60, "the job to run")
        set_node("down")
        if resume_when is not None:
            wait_for(lambda: resume_when(job_id), 120, "the moment to resume the node")
            # With ReturnToService=2, the node may have come back by itself.
            set_node("resume", check=False)
        output, _ = proc.communicate(timeout=300)
    finally:
        set_node("resume", check=False)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    return proc.returncode, output, job_id


@pytest.mark.disruptive
def test_node_failure(workflow: Workflow, restore_slurm):
    """The node goes down under a running job: the step fails and names NODE_FAIL (no retries,
    the default)."""
    script = "#!/usr/bin/env bash\n#SBATCH --no-requeue\nsleep 300\n"
    returncode, output, job_id = through_node_failure(workflow, None, script)
    assert returncode != 0
    assert f"Job {job_id} ended without an exit code" in output
    assert "Last state reported by SLURM: NODE_FAIL" in output
    assert not (workflow.root / "job/slurmjob.log.1").exists()


@pytest.mark.disruptive
def test_node_failure_retried(workflow: Workflow, restore_slurm):
    """retries=1: the node goes down under the job, which is submitted again and, once the node
    is back, succeeds. SLURM ran one job per attempt."""
    script = (
        '#!/usr/bin/env bash\n#SBATCH --no-requeue\necho "attempt of job $SLURM_JOB_ID"\n'
        "if [ ! -e slurmjob.log.1 ]; then sleep 300; fi\n"
    )
    log = workflow.root / "job/slurmjob.log"

    # The second attempt pends while the node is down.
    def second_submitted(_: int) -> bool:
        return (log.parent / "slurmjob.log.1").exists() and submitted(workflow)

    returncode, output, job_id = through_node_failure(workflow, 1, script, second_submitted)
    assert returncode == 0, output
    assert f"Job {job_id} ended with NODE_FAIL: submitting it again, attempt 2 of at most 2" in (
        output
    )
    records = workflow.final_jobs(2)
    assert [r["State"] for r in records] == ["NODE_FAIL", "COMPLETED"]
    assert [int(r["JobIDRaw"]) for r in records] == [job_id, read_log(log).job_id]
    assert read_log(log.parent / "slurmjob.log.1").last_state == "NODE_FAIL"
    assert (log.parent / "slurmjob.out").read_text() == f"attempt of job {read_log(log).job_id}\n"


@pytest.mark.disruptive
def test_node_failure_requeued_by_slurm(workflow: Workflow, restore_slurm):
    """Without --no-requeue, SLURM requeues the job after the node failure (same id): that is
    not an attempt. The step waits for the job's next run, and submits nothing."""
    script = (
        '#!/usr/bin/env bash\necho "run ${SLURM_RESTART_COUNT:-0}"\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 300; fi\n'
    )
    returncode, output, job_id = through_node_failure(
        workflow, 1, script, lambda job_id: scontrol_state(job_id) not in (None, "RUNNING")
    )
    assert returncode == 0, output
    log = workflow.root / "job/slurmjob.log"
    assert read_log(log).job_id == job_id
    assert not (log.parent / "slurmjob.log.1").exists()
    (record,) = workflow.final_jobs(1)
    assert (record["JobIDRaw"], record["State"]) == (str(job_id), "COMPLETED")
    assert (log.parent / "slurmjob.out").read_text().endswith("run 1\n")


@pytest.mark.disruptive
def test_exactly_once_with_user_time_format(
    workflow: Workflow, tmp_path, accounting_without_comments
):
    """As test_exactly_once_without_comments_in_accounting, restarted with the user's
    SLURM_TIME_FORMAT=relative.

    That setting makes sacct print the submission time as `12:58:32`, which the lookup by
    folder and time must not see. A fake `sbatch` on PATH kills its caller right after the
    real sbatch, as in test_exactly_once_when_killed_during_submission.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    log = kill_during_submission(workflow, Path(tmp_path) / "bin", "after_sbatch").path
    (record,) = workflow.final_jobs(1)
    job_id = int(record["JobIDRaw"])
    wait_for(lambda: scontrol_state(job_id) is None, 180, "SLURM to purge the job")
    result = workflow.boot(env={"SLURM_TIME_FORMAT": "relative"})
    assert result.returncode == 0, result.stdout
    assert read_log(log).job_id == job_id
    assert [r["JobIDRaw"] for r in workflow.final_jobs(1)] == [str(job_id)]
    assert (workflow.root / "job/slurmjob.out").read_text() == "once\n"


@pytest.mark.parametrize("time_format", ["relative", "%a %T"])
def test_bare_submitting_record_with_user_time_format(workflow: Workflow, time_format):
    """A 2.x log killed before its Submitted record, restarted after the job left squeue.

    The job has no comment (2.x gave none), so sacct's folder and submission time tell it,
    also when the user's SLURM_TIME_FORMAT changes how sacct prints that time.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    job = workflow.root / "job"
    digest = workflow.step_digest("job")
    log = job / "slurmjob.log"
    log.write_text(f"{FORMAT_LINE}\n{digest}\n")
    append_record(log, "Submitting")
    # What 2.x submitted: a wrapper that writes slurmjob.ret, without comment.
    out = subprocess.run(
        ["sbatch", "--parsable", "-o", "slurmjob.out", "-e", "slurmjob.err"],
        input="#!/usr/bin/env bash\n./slurmjob.sh\necho $? > slurmjob.ret\n",
        cwd=job,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    job_id = int(out)
    wait_for(lambda: scontrol_state(job_id) is None, 300, "SLURM to purge the job")
    result = workflow.boot(env={"SLURM_TIME_FORMAT": time_format})
    assert result.returncode == 0, result.stdout
    assert read_log(log).job_id == job_id
    assert [r["JobIDRaw"] for r in workflow.final_jobs(1)] == [str(job_id)]
    assert (job / "slurmjob.out").read_text() == "once\n"


def test_job_found_after_interrupted_submission_is_resumed_later(workflow: Workflow, tmp_path):
    """The `Submitted` record of a job found after an interrupted submission is written when
    the job is found, long after SLURM's submit time: a later restart still takes the job for
    the logged one (issue 15.1).

    A fake `sbatch` on PATH kills its caller right after the real sbatch (see KILL_POINTS).
    """
    workflow.plan(SIMPLE_PLAN)
    release = workflow.root / "release"
    workflow.job(
        "job", f"#!/usr/bin/env bash\nwhile [ ! -e {release} ]; do sleep 0.2; done\necho once\n"
    )
    kill_during_submission(workflow, Path(tmp_path) / "bin", "after_sbatch")
    # Time passes on purpose: the job is found later than sbatch could have taken.
    time.sleep(float(workflow.env["STEPUP_SBATCH_COMMAND_TIMEOUT"]) + CLOCK_SLACK.seconds + 1)
    proc = workflow.popen()
    wait_for(lambda: submitted(workflow), 60, "the restarted workflow to find the job")
    workflow.kill(proc)
    job_id = read_log(workflow.root / "job/slurmjob.log").job_id
    release.touch()
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert "the id was reused" not in result.stdout
    assert f"Waiting for job {job_id}, submitted earlier" in result.stdout
    (record,) = workflow.final_jobs(1)
    assert (record["JobIDRaw"], record["State"]) == (str(job_id), "COMPLETED")
    assert (workflow.root / "job/slurmjob.out").read_text() == "once\n"


def test_site_sbatch_wrapper_prints_extra_lines(workflow: Workflow, tmp_path):
    """A site's sbatch wrapper prints notices before and after the job id: one job, success.

    A fake `sbatch` on PATH stands for such a site wrapper around the real sbatch.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    bindir = Path(tmp_path) / "bin"
    fake_command(
        bindir,
        "sbatch",
        'echo "Site notice: maintenance on Friday"\n/usr/bin/sbatch "$@" || exit\n'
        'echo "Your project has 1000 core hours left"\n',
    )
    result = workflow.boot(env=with_bin(workflow, bindir))
    assert result.returncode == 0, result.stdout
    (record,) = workflow.final_jobs(1)
    assert read_log(workflow.root / "job/slurmjob.log").job_id == int(record["JobIDRaw"])
    assert (workflow.root / "job/slurmjob.out").read_text() == "once\n"


def test_sbatch_timeout_with_rc_cluster(workflow: Workflow, tmp_path):
    """sbatch submits but hangs past the command timeout, rc selects the cluster: the retry
    finds the job on rc's cluster (logged as `ID;CLUSTER`), and no second job is submitted.

    It used to look on the default cluster; with the one local cluster that found the job, but
    logged it without its cluster. A fake `sbatch` runs the real one and then hangs: a real
    sbatch does not hang after submitting on demand.
    """
    workflow.plan("""
        static("job/", "job/slurmjob.sh")
        sbatch("job/", rc="export SBATCH_CLUSTERS=localcluster")
    """)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    bindir = Path(tmp_path) / "bin"
    fake_command(bindir, "sbatch", '/usr/bin/sbatch "$@"\nsleep 300\n')
    env = with_bin(workflow, bindir) | {"STEPUP_SBATCH_COMMAND_TIMEOUT": "5"}
    check_one_job_on_localcluster(workflow, env)

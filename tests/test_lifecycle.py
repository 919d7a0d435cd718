"""End-to-end behaviour of the sbatch step: real `stepup boot` on the real local SLURM."""

import os
import subprocess
import time

import pytest
from conftest import (
    FAILED_RC,
    SIMPLE_PLAN,
    Workflow,
    lock_free,
    run_requeued_again,
    scontrol_state,
    wait_for,
)
from path import Path
from sdiag import diff_counts, sdiag_counts

from stepup.queue.config import Config
from stepup.queue.joblog import FORMAT_LINE, append_record, read_log
from stepup.queue.slurm.cache import StateCache


def test_success(workflow: Workflow):
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        #SBATCH --job-name=success
        echo hello from SLURM
    """,
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout + result.stderr
    job = workflow.root / "job"
    assert (job / "slurmjob.out").read_text() == "hello from SLURM\n"
    assert (job / "slurmjob.err").read_text() == ""
    assert (job / "slurmjob.ret").read_text().strip() == "0"
    log = read_log(job / "slurmjob.log")
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(log.job_id)
    assert record["State"] == "COMPLETED"
    assert record["JobName"] == "success"
    assert log.cluster is None
    assert (job / "slurmjob.log").read_text().splitlines()[0] == FORMAT_LINE


def test_failure(workflow: Workflow):
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        echo broken >&2
        exit 3
    """,
    )
    result = workflow.boot()
    assert result.returncode != 0
    job = workflow.root / "job"
    assert (job / "slurmjob.ret").read_text().strip() == "3"
    assert (job / "slurmjob.err").read_text() == "broken\n"
    assert "FAIL" in result.stdout
    assert "exit code 3" in result.stdout
    (record,) = workflow.final_jobs(1)
    assert record["State"] == "FAILED"
    assert record["ExitCode"] == "3:0"


def test_python_script(workflow: Workflow):
    workflow.plan("""
        static("py/", "py/slurmjob.py")
        sbatch("py", ext="py")
    """)
    workflow.job(
        "py",
        """
        #!/usr/bin/env python3
        #SBATCH --job-name=pyjob
        import sys
        print("python", sys.version_info[0])
    """,
        name="slurmjob.py",
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert (workflow.root / "py/slurmjob.out").read_text() == "python 3\n"
    (record,) = workflow.final_jobs(1)
    assert record["JobName"] == "pyjob"


def test_rendered_template_without_execute_permission(workflow: Workflow):
    """A job script made by render_jinja has mode 644: it must run, unchanged."""
    workflow.plan("""
        from stepup.core.api import render_jinja
        static("template.sh")
        mkdir("job/")
        render_jinja("template.sh", {"word": "rendered"}, "job/slurmjob.sh")
        sbatch("job/")
    """)
    workflow.job(
        ".",
        """
        #!/usr/bin/env bash
        echo {{ word }}
    """,
        name="template.sh",
        mode=0o644,
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    script = workflow.root / "job/slurmjob.sh"
    assert script.stat().st_mode & 0o777 == 0o644
    assert (workflow.root / "job/slurmjob.out").read_text() == "rendered\n"
    assert "Input changed unexpectedly" not in result.stdout


def test_rc(workflow: Workflow):
    """The rc command runs in the shell that calls sbatch, so its exports reach the job."""
    workflow.plan("""
        static("job/", "job/slurmjob.sh", "job/rc.sh")
        sbatch("job/", rc="source rc.sh", inp="rc.sh")
    """)
    (workflow.root / "job").makedirs_p()
    (workflow.root / "job/rc.sh").write_text("export FROM_RC='set by rc'\n")
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        echo "$FROM_RC"
    """,
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert (workflow.root / "job/slurmjob.out").read_text() == "set by rc\n"


def test_failing_rc_submits_nothing(workflow: Workflow):
    workflow.plan("""
        static("job/", "job/slurmjob.sh")
        sbatch("job/", rc="false")
    """)
    workflow.job("job", "#!/usr/bin/env bash\necho never\n")
    result = workflow.boot()
    assert result.returncode != 0
    assert "Could not submit" in result.stdout
    time.sleep(1)
    assert workflow.jobs() == []


def test_cluster(workflow: Workflow):
    """With `#SBATCH -M`, sbatch prints ID;CLUSTER and every query names the cluster."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        #SBATCH -M localcluster
        echo on cluster
    """,
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    log = read_log(workflow.root / "job/slurmjob.log")
    assert log.cluster == "localcluster"
    assert f"Submitted {log.job_id};localcluster" in workflow.log("job")
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(log.job_id)


def test_rerun_submits_nothing(workflow: Workflow):
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho once\n")
    assert workflow.boot().returncode == 0
    log_before = workflow.log("job")
    assert workflow.boot().returncode == 0
    # Also when StepUp reruns the step: remove an output so the step is not skipped.
    (workflow.root / "job/slurmjob.out").remove()
    (workflow.root / "job/slurmjob.out").write_text("once\n")
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert workflow.log("job") == log_before
    assert len(workflow.final_jobs(1)) == 1


def test_killed_workflow_reattaches(workflow: Workflow):
    """SIGKILL the whole workflow while the job runs: the next boot waits for the same job."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        sleep 6
        echo survived
    """,
    )
    proc = workflow.popen()
    log_path = workflow.root / "job/slurmjob.log"
    wait_for(lambda: log_path.exists() and "Submitted" in log_path.read_text(), 60, "submission")
    workflow.kill(proc)
    job_id = read_log(log_path).job_id
    assert scontrol_state(job_id) in ("PENDING", "RUNNING")
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert "submitted earlier" in result.stdout
    assert read_log(log_path).job_id == job_id
    assert (workflow.root / "job/slurmjob.out").read_text() == "survived\n"
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(job_id)


def _changed_inputs_case(workflow: Workflow) -> int:
    workflow.plan("""
        static("job/", "job/slurmjob.sh", "job/input.txt")
        sbatch("job/", inp="input.txt")
    """)
    (workflow.root / "job").makedirs_p()
    # The input sets how long the job sleeps: long for the old job, short for the new one.
    (workflow.root / "job/input.txt").write_text("60\n")
    workflow.job("job", "#!/usr/bin/env bash\nt=$(cat input.txt)\ntouch read\nsleep $t\necho $t\n")
    proc = workflow.popen()
    log_path = workflow.root / "job/slurmjob.log"
    wait_for(lambda: log_path.exists() and "Submitted" in log_path.read_text(), 60, "submission")
    workflow.kill(proc)
    job_id = read_log(log_path).job_id
    # Change the input only once the old job has read it.
    wait_for((workflow.root / "job/read").exists, 60, "the old job to read its input")
    (workflow.root / "job/input.txt").write_text("0\n")
    return job_id


def test_changed_inputs_raise(workflow: Workflow):
    old_id = _changed_inputs_case(workflow)
    result = workflow.boot()
    assert result.returncode != 0
    assert "inputs of this step changed" in result.stdout
    assert "STEPUP_QUEUE_ONCHANGE" in result.stdout
    assert "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS" in result.stdout
    log = read_log(workflow.root / "job/slurmjob.log")
    assert log.digest in result.stdout
    assert log.job_id == old_id
    assert scontrol_state(old_id) in ("PENDING", "RUNNING")


@pytest.mark.parametrize(
    "env",
    [
        {"STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS": "yes"},
        {"STEPUP_QUEUE_ONCHANGE": "resubmit"},
        {"STEPUP_QUEUE_ONCHANGE": "resubmit", "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS": "no"},
    ],
)
def test_changed_inputs_resubmit(workflow: Workflow, env: dict[str, str]):
    old_id = _changed_inputs_case(workflow)
    result = workflow.boot(env=env)
    assert result.returncode == 0, result.stdout
    new_log = read_log(workflow.root / "job/slurmjob.log")
    assert new_log.job_id != old_id
    assert (workflow.root / "job/slurmjob.out").read_text() == "0\n"
    states = {r["JobIDRaw"]: r["State"] for r in workflow.final_jobs(2)}
    assert states[str(old_id)].startswith("CANCELLED")
    assert states[str(new_log.job_id)] == "COMPLETED"


def test_changed_inputs_ignore(workflow: Workflow):
    old_id = _changed_inputs_case(workflow)
    subprocess.run(["scancel", str(old_id)], check=True)
    result = workflow.boot(env={"STEPUP_QUEUE_ONCHANGE": "ignore"})
    # Still the old job, which was cancelled: the step fails and names it.
    assert result.returncode != 0
    assert read_log(workflow.root / "job/slurmjob.log").job_id == old_id
    assert f"Job {old_id}" in result.stdout
    assert "CANCELLED" in result.stdout
    assert len(workflow.final_jobs(1)) == 1


def test_cancelled_job(workflow: Workflow):
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 60\n")
    proc = workflow.popen()
    log_path = workflow.root / "job/slurmjob.log"
    wait_for(lambda: log_path.exists() and "Submitted" in log_path.read_text(), 60, "submission")
    job_id = read_log(log_path).job_id
    subprocess.run(["scancel", str(job_id)], check=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"Job {job_id} ended without an exit code in slurmjob.ret" in output
    assert "Last state reported by SLURM: CANCELLED" in output
    assert "slurmjob.err" in output
    assert read_log(log_path).last_state == "CANCELLED"


def test_resume_log_written_by_1_0_2(workflow: Workflow):
    """A job folder left by StepUp Queue 1.0.2 (no Submitting record) is resumed as is."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 3\necho old style\n")
    job = workflow.root / "job"
    digest = workflow.step_digest("job")
    # Submitted by hand with a wrapper like 1.0.2's, and logged in 1.0.2's format.
    out = subprocess.run(
        ["sbatch", "--parsable", "-o", "slurmjob.out", "-e", "slurmjob.err"],
        input="#!/usr/bin/env bash\n: > slurmjob.ret\n./slurmjob.sh\necho $? > slurmjob.ret\n",
        cwd=job,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = job / "slurmjob.log"
    # 1.0.2's time stamps have no microseconds when they are zero.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    log.write_text(f"{FORMAT_LINE}\n{digest}\n{stamp} Submitted {out}\n")
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert (job / "slurmjob.out").read_text() == "old style\n"
    assert len(workflow.final_jobs(1)) == 1
    assert read_log(log).job_id == int(out)


@pytest.mark.serial
def test_many_jobs_share_one_query(workflow: Workflow, tmp_path):
    """Ten steps waiting at once ask SLURM at most once per cache timeout (plus one).

    Counted twice: by wrappers that log each squeue/scontrol call and exec the real one, and
    by slurmctld itself (sdiag), which is why no other test may run meanwhile.
    """
    calls = tmp_path / "calls.txt"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("squeue", "scontrol"):
        wrapper = bindir / name
        wrapper.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexec /usr/bin/{name} "$@"\n')
        wrapper.chmod(0o755)
    lines = "\n".join(f'static("j{i}/", "j{i}/slurmjob.sh")\nsbatch("j{i}/")' for i in range(10))
    workflow.plan(lines)
    for i in range(10):
        # Killed jobs write no slurmjob.ret, so every step must ask SLURM to notice the end.
        workflow.job(f"j{i}", "#!/usr/bin/env bash\nsleep 4\nkill -9 $PPID\n")
    before = sdiag_counts()
    start = time.monotonic()
    env = {"PATH": f"{bindir}:{workflow.env['PATH']}", "STEPUP_SBATCH_CACHE_TIMEOUT": "3"}
    result = workflow.boot("-n", "10", env=env)
    elapsed = time.monotonic() - start
    rpcs = diff_counts(before, sdiag_counts())
    assert rpcs is not None, "slurmctld restarted during the test"
    assert result.returncode != 0
    assert result.stdout.count("ended without an exit code") == 10
    queries = [line for line in calls.read_text().splitlines() if "squeue" in line]
    assert 1 <= len(queries) <= elapsed / 3 + 1
    # As root, each squeue call is one REQUEST_JOB_INFO (an ordinary user's: JOB_USER_INFO).
    assert rpcs.get("REQUEST_JOB_INFO", 0) + rpcs.get("REQUEST_JOB_USER_INFO", 0) == len(queries)


def test_stale_exit_code_never_taken_for_a_new_submission(workflow: Workflow):
    """A crash between the Submitting record and the new job must not revive an old exit code.

    The log is left as a kill right after the Submitting record leaves it, next to the
    slurmjob.ret of the previous job: the new job's own exit code must decide the step.
    """
    workflow.plan(SIMPLE_PLAN)
    # code.txt is no input of the step: only the job reads it.
    (workflow.root / "job").makedirs_p()
    (workflow.root / "job/code.txt").write_text("0\n")
    workflow.job("job", "#!/usr/bin/env bash\nsleep 2\nexit $(cat code.txt)\n")
    assert workflow.boot().returncode == 0
    job = workflow.root / "job"
    assert (job / "slurmjob.ret").read_text().strip() == "0"
    digest = read_log(job / "slurmjob.log").digest
    token = f"stepup-queue-{os.urandom(8).hex()}"
    (job / "slurmjob.log").write_text(f"{FORMAT_LINE}\n{digest}\n")
    append_record(job / "slurmjob.log", f"Submitting {token}")
    (job / "code.txt").write_text("3\n")
    # An output of the step is gone, so that StepUp runs it again.
    (job / "slurmjob.out").remove()
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    assert "ended with exit code 3" in result.stdout
    assert (job / "slurmjob.ret").read_text().strip() == "3"
    records = workflow.final_jobs(2)
    assert len(records) == 2
    assert records[-1]["JobIDRaw"] == str(read_log(job / "slurmjob.log").job_id)
    assert records[-1]["ExitCode"] == "3:0"


def test_fixed_script_after_refused_submission(workflow: Workflow):
    """sbatch refused the job for good; once the script is fixed, the next run submits it.

    The refused attempt leaves a Submitting record and the fix changes the step's inputs:
    SLURM is certain that no job carries the token, so the log starts afresh instead of
    asking the user to remove a log that the tools do not remove.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\n#SBATCH -p nosuch\necho fixed\n")
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    assert "Could not submit" in result.stdout
    assert "invalid partition" in result.stdout.lower()
    log = read_log(workflow.root / "job/slurmjob.log")
    assert log.token is not None
    assert log.job_id is None
    workflow.job("job", "#!/usr/bin/env bash\necho fixed\n")
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert "no job was submitted with the old inputs" in result.stdout
    assert (workflow.root / "job/slurmjob.out").read_text() == "fixed\n"
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(read_log(workflow.root / "job/slurmjob.log").job_id)


def logged(workflow: Workflow, bindir: Path, calls: Path, *commands: str) -> dict[str, str]:
    """Wrappers first on PATH that log each call of the commands and run the real ones."""
    bindir.makedirs_p()
    for command in commands:
        wrapper = bindir / command
        wrapper.write_text(
            f'#!/bin/sh\necho "{command} $*" >> {calls}\nexec /usr/bin/{command} "$@"\n'
        )
        wrapper.chmod(0o755)
    return {"PATH": f"{bindir}:{workflow.env['PATH']}"}


USER_SETTINGS = [{"SQUEUE_PARTITION": "nosuch"}, {"SQUEUE_NAMES": "other"}]


@pytest.mark.parametrize("settings", USER_SETTINGS, ids="".join)
def test_user_slurm_settings_do_not_hide_the_job(workflow: Workflow, tmp_path, settings):
    """SQUEUE_* and SLURM_TIME_FORMAT from the user's shell change nothing of the waiting.

    They filter what `squeue --me` lists: the job would seem gone from squeue at every look and
    every step would ask the accounting database instead. Wrappers on PATH log each call of
    squeue and sacct and run the real ones.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 5\necho done\n")
    calls = Path(tmp_path) / "calls.txt"
    env = logged(workflow, Path(tmp_path) / "bin", calls, "squeue", "sacct")
    result = workflow.boot(env=env | settings | {"SLURM_TIME_FORMAT": "relative"})
    assert result.returncode == 0, result.stdout
    assert (workflow.root / "job/slurmjob.out").read_text() == "done\n"
    assert "RUNNING" in workflow.log("job")
    queries = calls.read_text().splitlines()
    assert any(line.startswith("squeue") for line in queries)
    assert not any(line.startswith("sacct") for line in queries)
    assert len(workflow.final_jobs(1)) == 1


@pytest.mark.parametrize("settings", USER_SETTINGS, ids="".join)
def test_canceljobs_with_user_squeue_settings(workflow: Workflow, settings):
    """`stepup canceljobs` cancels a running job also when the user's SQUEUE_* hide it."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 300\n")
    proc = workflow.popen()
    log_path = workflow.root / "job/slurmjob.log"
    wait_for(lambda: log_path.exists() and "Submitted" in log_path.read_text(), 60, "submission")
    job_id = read_log(log_path).job_id
    try:
        result = subprocess.run(
            ["stepup", "canceljobs"],
            cwd=workflow.root,
            env=workflow.env | settings | {"SLURM_TIME_FORMAT": "relative"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            workflow.kill(proc)
    assert proc.returncode != 0
    assert "Last state reported by SLURM: CANCELLED" in output
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(job_id)
    assert record["State"].startswith("CANCELLED")


def test_rc_that_changes_folder(workflow: Workflow):
    """An rc that changes folder does not move the job: sbatch runs in the job folder."""
    workflow.plan("""
        static("job/", "job/slurmjob.sh")
        sbatch("job/", rc="cd ..")
    """)
    workflow.job("job", "#!/usr/bin/env bash\npwd\n")
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    job = workflow.root / "job"
    assert (job / "slurmjob.out").read_text() == f"{job}\n"
    assert (job / "slurmjob.ret").read_text() == "0\n"
    assert not (workflow.root / "slurmjob.out").exists()
    assert not (workflow.root / "slurmjob.ret").exists()
    (record,) = workflow.final_jobs(1)
    assert record["WorkDir"] == job


def test_cache_lock_held_by_a_stopped_process(workflow: Workflow):
    """Another process holds the lock of the shared cache for ever, e.g. stopped with Ctrl-Z.

    The step waits for the lock at most the command timeout, then asks SLURM without it.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\nsleep 4\necho done\n")
    env = {"STEPUP_SBATCH_COMMAND_TIMEOUT": "5", "STEPUP_SBATCH_DEBUG": "yes"}
    # The cache file of the default cluster, found as a step finds it.
    cache = StateCache(Config.from_environ(workflow.env | env), None)
    cache.snapshot()
    cache.path.remove()
    holder = subprocess.Popen(["flock", cache.path + ".lock", "sleep", "600"])
    try:
        wait_for(lambda: not lock_free(cache.path + ".lock"), 10, "flock to take the lock")
        start = time.monotonic()
        result = workflow.boot(env=env, timeout=90)
        elapsed = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stdout
    assert (workflow.root / "job/slurmjob.out").read_text() == "done\n"
    assert "without the lock" in result.stdout
    assert elapsed < 60


def test_job_runs_a_workflow_of_its_own(workflow: Workflow):
    """A job that runs StepUp in a sub-folder is not steered by the workflow that submitted it.

    The job inherits the step's environment (sbatch exports it), but not the variables by
    which StepUp steers a step (director socket, root, step digest, ...).
    """
    workflow.plan("""
        static("job/", "job/slurmjob.sh", "job/inner/", "job/inner/plan.py")
        sbatch("job/", out="inner/inner.txt")
    """)
    inner = workflow.root / "job/inner"
    inner.makedirs_p()
    if workflow.host < 4:
        body = 'from stepup.core.api import runsh\nrunsh("echo inner > inner.txt", out="inner.txt")'
    else:
        body = 'from stepup.core.api import run\nrun("echo inner > inner.txt", out="inner.txt", '
        body += "shell=True)"
    (inner / "plan.py").write_text(f"#!/usr/bin/env python3\n{body}\n")
    (inner / "plan.py").chmod(0o755)
    command = " ".join(workflow.command("--no-progress"))
    workflow.job(
        "job",
        f"""
        #!/usr/bin/env bash
        env | grep -E '^(STEPUP_|ROOT=|HERE=)' | sort > env.txt
        cd inner
        {command} < /dev/null
        """,
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout + (workflow.root / "job/slurmjob.out").read_text()
    assert (inner / "inner.txt").read_text() == "inner\n"
    names = {line.split("=", 1)[0] for line in (workflow.root / "job/env.txt").read_text().split()}
    assert "STEPUP_DIRECTOR_SOCKET" not in names
    assert "STEPUP_STEP_INP_DIGEST" not in names
    assert "STEPUP_ROOT" not in names
    assert {"ROOT", "HERE", "STEPUP_SBATCH_CACHE_TIMEOUT"} <= names


def test_reused_job_id_is_not_waited_for(workflow: Workflow):
    """A log whose job id SLURM now gives to another job (ids are reused): no wait, no cancel.

    The job in `other/` still runs; the log in `job/` names its id as if `job/` had submitted
    it an hour ago, as a log from before a reinstall of SLURM would.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho mine\n")
    digest = workflow.step_digest("job")
    other = workflow.root / "other"
    other.makedirs_p()
    job_id = subprocess.run(
        ["sbatch", "--parsable", "--wrap", "sleep 30"],
        cwd=other,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wait_for(lambda: len(workflow.jobs()) == 1, 60, "sacct to list the other job")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    log = workflow.root / "job/slurmjob.log"
    log.write_text(f"{FORMAT_LINE}\n{digest}\n{stamp}.000000 Submitted {job_id}\n")
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    assert f"records job {job_id}, but SLURM's job {job_id} ran in {other}" in result.stdout
    assert "the id was reused" in result.stdout
    assert scontrol_state(int(job_id)) in ("PENDING", "RUNNING")
    assert read_log(log).states == []


# Identity of a logged job (issue 15.1 and 15.2).

REQUEUE_AND_SUCCEED = """
#!/usr/bin/env bash
#SBATCH --requeue
echo "run ${SLURM_RESTART_COUNT:-0}"
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then exit 0; fi
sleep 300
"""


def test_requeued_job_is_waited_for_after_a_restart(workflow: Workflow):
    """SLURM resets a job's submit time on requeue: that is no reused id (issue 15.1).

    The workflow is killed while its job runs, the job is requeued and runs again; the
    restarted workflow waits for it and succeeds with the exit code of its last run.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", REQUEUE_AND_SUCCEED)
    proc = workflow.popen()
    out = workflow.root / "job/slurmjob.out"
    log = workflow.root / "job/slurmjob.log"

    def first_run_logged() -> bool:
        # A fast start may print before the step writes its Submitted record.
        started = out.exists() and "run 0" in out.read_text()
        return started and log.exists() and " Submitted " in log.read_text()

    wait_for(first_run_logged, 60, "the first run and the Submitted record")
    job_id = read_log(log).job_id
    workflow.kill(proc)
    subprocess.run(["scontrol", "requeue", str(job_id)], check=True)
    run_requeued_again(job_id)
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert "the id was reused" not in result.stdout
    assert f"Waiting for job {job_id}, submitted earlier" in result.stdout
    assert out.read_text() == "run 1\n"
    assert (workflow.root / "job/slurmjob.ret").read_text() == "0\n"
    (record,) = workflow.final_jobs(1)
    assert record["JobIDRaw"] == str(job_id)
    assert record["State"] == "COMPLETED"


def test_resubmit_never_cancels_a_job_of_another_folder(workflow: Workflow):
    """A stale log names the id of a live job in another folder (ids are reused): when the
    inputs changed, onchange=resubmit submits afresh and leaves that job alone (issue 15.2)."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho new\n")
    other = workflow.root / "other"
    other.makedirs_p()
    stranger = subprocess.run(
        ["sbatch", "--parsable", "--hold", "-o", "/dev/null", "--wrap", "sleep 300"],
        cwd=other,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = workflow.root / "job/slurmjob.log"
    log.write_text(
        f"{FORMAT_LINE}\nOLDDIGEST\n2020-01-01T00:00:00.000000 Submitted {stranger}\n"
        "2020-01-01T00:00:10.000000 RUNNING\n"
    )
    result = workflow.boot(env={"STEPUP_QUEUE_ONCHANGE": "resubmit"})
    assert result.returncode == 0, result.stdout
    assert f"SLURM's job {stranger} ran in {other}: the id was reused" in result.stdout
    assert "so it is not cancelled" in result.stdout
    assert scontrol_state(int(stranger)) == "PENDING"
    assert read_log(log).job_id != int(stranger)
    assert (workflow.root / "job/slurmjob.out").read_text() == "new\n"


# Runaway jobs (issue 15.8).


def accounting(sql: str) -> str:
    """Run SQL on slurmdbd's database of the local cluster (`{cluster}` is its name)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    cluster = config.stdout.split("ClusterName", 1)[1].split("=", 1)[1].split()[0]
    result = subprocess.run(
        ["mysql", "-N", "slurm_acct_db", "-e", sql.format(cluster=cluster)],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_runaway_job_fails_naming_sacctmgr(workflow: Workflow):
    """A job that slurmctld forgot while the accounting still says RUNNING: the step fails.

    A runaway job comes from an end record that never reached slurmdbd (e.g. a lost message
    queue). That cannot be produced on demand without losing the records of everyone's jobs,
    so the lost record is made by hand in slurmdbd's database: the job is cancelled, and once
    slurmctld forgot it, its accounting row is set back to RUNNING without an end.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\n#SBATCH --hold\necho never\n")
    proc = workflow.popen()
    log = workflow.root / "job/slurmjob.log"
    try:
        wait_for(lambda: log.exists() and read_log(log).job_id is not None, 60, "the job")
    finally:
        workflow.kill(proc)
    job_id = read_log(log).job_id
    subprocess.run(["scancel", str(job_id)], check=True)
    wait_for(lambda: scontrol_state(job_id) is None, 120, "slurmctld to forget the job")
    where = f"id_job={job_id} AND work_dir='{workflow.root / 'job'}'"
    try:
        accounting(
            "UPDATE {cluster}_job_table SET state=1, time_start=time_submit, time_end=0 "
            f"WHERE {where}"
        )
        # sacctmgr asks whether to fix them: no.
        runaway = subprocess.run(
            ["sacctmgr", "-n", "show", "runawayjobs"],
            capture_output=True,
            text=True,
            input="n\n",
            timeout=30,
        )
        assert str(job_id) in runaway.stdout, runaway.stdout
        result = workflow.boot(env={"STEPUP_SBATCH_RUNAWAY_TIMEOUT": "3"}, timeout=120)
    finally:
        accounting(
            "UPDATE {cluster}_job_table SET state=4, time_end=UNIX_TIMESTAMP() "
            f"WHERE {where} AND time_end=0"
        )
    assert result.returncode & FAILED_RC, result.stdout
    assert f"Job {job_id} is RUNNING in SLURM's accounting" in result.stdout
    assert "`sacctmgr show runawayjobs`" in result.stdout
    assert "STEPUP_SBATCH_RUNAWAY_TIMEOUT" in result.stdout

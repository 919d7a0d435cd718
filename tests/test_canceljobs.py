"""`stepup canceljobs`, run as a real subprocess on the real local SLURM."""

import subprocess

from conftest import (
    JobTools,
    sacct,
    scontrol_state,
    snapshot,
    table,
    unreachable_squeue,
    wait_for,
)

from stepup.queue.joblog import append_record, read_log, start_log


def slurm_states() -> dict[int, str]:
    """The states of all of this user's jobs that slurmctld still knows, from one squeue."""
    result = subprocess.run(
        ["squeue", "--me", "-t", "all", "-h", "-o", "%i|%T"],
        capture_output=True,
        text=True,
        check=True,
    )
    # Array tasks (`ID_N`, `ID_[N-M]`) are no jobs of these tests.
    lines = (line.split("|") for line in result.stdout.split())
    return {int(i): s for i, s in lines if i.isdigit()}


def test_help(jobtools: JobTools):
    result = jobtools.run("canceljobs", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "never deletes or edits files" in text
    assert "--dry-run" in text
    assert "--all" in text


def test_cancel_workflow_then_boot_reports_cancelled(jobtools: JobTools):
    """Interrupt a workflow, cancel its pending and running job, and boot it again."""
    wf = jobtools.workflow
    wf.plan("""
        static("pending/", "pending/slurmjob.sh", "running/", "running/slurmjob.sh")
        sbatch("pending/")
        sbatch("running/")
    """)
    wf.job("pending", "#!/usr/bin/env bash\n#SBATCH --hold\necho never\n")
    wf.job("running", "#!/usr/bin/env bash\nsleep 300\n")
    proc = wf.popen()
    try:
        logs = [wf.root / "pending/slurmjob.log", wf.root / "running/slurmjob.log"]
        wait_for(lambda: all(p.exists() and "Submitted" in p.read_text() for p in logs), 60, "jobs")
        pending, running = (read_log(path).job_id for path in logs)
        jobtools.ids.extend([pending, running])
        wait_for(lambda: scontrol_state(running) == "RUNNING", 60, "the job to run")
    finally:
        # Interrupted: StepUp Queue leaves the jobs in SLURM.
        wf.kill(proc)
    assert scontrol_state(pending) == "PENDING"

    # The running job creates slurmjob.out and .err itself, possibly only now.
    before = snapshot(wf.root, outputs=False)
    dry = jobtools.run("canceljobs", "-n")
    assert dry.returncode == 0, dry.stderr
    assert [row["ACTION"] for row in table(dry.stdout)] == ["would cancel"] * 2
    assert "Dry run: nothing was cancelled." in dry.stdout
    assert jobtools.calls("scancel") == []
    assert snapshot(wf.root, outputs=False) == before
    assert scontrol_state(pending) == "PENDING"
    assert scontrol_state(running) == "RUNNING"

    jobtools.reset_calls()
    result = jobtools.run("canceljobs")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # No job names a cluster: no CLUSTER column. The pending job shows SLURM's reason.
    assert lines[0].split() == ["ACTION", "JOB", "SLURM", "LOG", "FOLDER", "NOTE"]
    # The log of the running job may or may not record RUNNING: the workflow was killed.
    assert [{**row, "LOG": None} for row in table(result.stdout)] == [
        {
            "ACTION": "cancelled",
            "JOB": str(pending),
            "SLURM": "PENDING (JobHeldUser)",
            "LOG": None,
            "FOLDER": "pending",
            "NOTE": "",
        },
        {
            "ACTION": "cancelled",
            "JOB": str(running),
            "SLURM": "RUNNING",
            "LOG": None,
            "FOLDER": "running",
            "NOTE": "",
        },
    ]
    assert "Summary: found 2 jobs, cancelled 2, skipped 0, errors 0. (1 scancel call)" in lines
    assert jobtools.calls("scancel") == [" ".join(map(str, sorted([pending, running])))]
    assert jobtools.calls("squeue") == ["--me -t all -h -o %i|%T|%k|%r|%Z"]
    assert snapshot(wf.root, outputs=False) == before
    wait_for(lambda: scontrol_state(pending) == scontrol_state(running) == "CANCELLED", 30)

    def accounted() -> bool:
        records = sacct("-j", f"{pending},{running}")
        return len(records) == 2 and all(r["State"].startswith("CANCELLED") for r in records)

    wait_for(accounted, 30, "sacct to record the cancellation")

    again = wf.boot()
    assert again.returncode != 0
    assert f"Job {pending} ended without an exit code" in again.stdout
    # The wrapper keeps no exit code of a script that SLURM ended, so both steps name the state.
    assert (wf.root / "running/slurmjob.ret").read_text() == ""
    assert f"Job {running} ended without an exit code" in again.stdout
    assert again.stdout.count("Last state reported by SLURM: CANCELLED") == 2
    # Nothing was submitted again.
    assert [read_log(path).job_id for path in logs] == [pending, running]


def test_live_jobs_cancelled_whatever_their_logs_say(jobtools: JobTools):
    """SLURM's live state wins over the files (issue 15.12): a job that SLURM still lists as
    pending in its own folder is cancelled although its log records an end (a requeued job)
    or slurmjob.ret holds an exit code (a job held after RequeueExitHold). A job that SLURM
    finished is left alone."""
    wf = jobtools.workflow
    wf.plan("""
        static("done/", "done/slurmjob.sh")
        sbatch("done/")
    """)
    wf.job("done", "#!/usr/bin/env bash\necho done\n")
    boot = wf.boot()
    assert boot.returncode == 0, boot.stdout
    done = read_log(wf.root / "done/slurmjob.log").job_id
    logged_end = jobtools.submit("logged_end", records=("RUNNING", "COMPLETED"))
    exit_code = jobtools.submit("exit_code", records=("RUNNING",), ret="0\n")
    jobtools.reset_calls()

    result = jobtools.run("canceljobs")
    assert result.returncode == 0, result.stderr
    rows = {row["JOB"]: row for row in table(result.stdout)}
    assert rows[str(done)]["ACTION"] == "skip"
    # Depending on MinJobAge, slurmctld may have forgotten the job already.
    assert rows[str(done)]["NOTE"].startswith(
        ("already COMPLETED in SLURM", "no longer listed by SLURM")
    )
    for job_id in logged_end, exit_code:
        assert rows[str(job_id)]["ACTION"] == "cancelled"
        assert rows[str(job_id)]["SLURM"] == "PENDING (JobHeldUser)"
        assert rows[str(job_id)]["NOTE"] == "live in SLURM, although its log says it ended"
    assert "Summary: found 3 jobs, cancelled 2, skipped 1, errors 0. (1 scancel call)" in (
        result.stdout
    )
    # The job SLURM already finished is not passed to scancel.
    assert jobtools.calls("scancel") == [" ".join(map(str, sorted([logged_end, exit_code])))]
    wait_for(lambda: scontrol_state(logged_end) == scontrol_state(exit_code) == "CANCELLED", 30)


def test_250_jobs_in_3_scancel_calls(jobtools: JobTools):
    ids = []
    for i in range(250):
        part = "first" if i < 125 else "second"
        ids.append(jobtools.submit(f"{part}/group{i % 5}/job{i:03d}", command="sleep 100"))
    result = jobtools.run("canceljobs", "first", "second")
    assert result.returncode == 0, result.stderr
    assert "Summary: found 250 jobs, cancelled 250, skipped 0, errors 0. (3 scancel calls)" in (
        result.stdout
    )
    calls = jobtools.calls("scancel")
    assert [len(call.split()) for call in calls] == [100, 100, 50]
    assert sorted(int(word) for call in calls for word in call.split()) == sorted(ids)
    assert len(jobtools.calls("squeue")) == 1
    wait_for(lambda: all(slurm_states().get(i) == "CANCELLED" for i in ids), 30, "cancellation")


def test_logs_with_and_without_cluster(jobtools: JobTools):
    plain = jobtools.submit("plain")
    clustered = jobtools.submit("clustered", cluster="localcluster")
    result = jobtools.run("canceljobs")
    assert result.returncode == 0, result.stderr
    assert sorted(jobtools.calls("scancel")) == sorted([f"-M localcluster {clustered}", f"{plain}"])
    # One squeue call per cluster: the default one and the named one.
    assert len(jobtools.calls("squeue")) == 2
    rows = [
        (row["ACTION"], row["JOB"], row["CLUSTER"], row["SLURM"]) for row in table(result.stdout)
    ]
    assert sorted(rows) == sorted(
        [
            ("cancelled", str(clustered), "localcluster", "PENDING (JobHeldUser)"),
            ("cancelled", str(plain), "", "PENDING (JobHeldUser)"),
        ]
    )
    wait_for(lambda: scontrol_state(plain) == scontrol_state(clustered) == "CANCELLED", 30)


def test_corrupt_logs_next_to_good_ones(jobtools: JobTools):
    root = jobtools.workflow.root
    first = jobtools.submit("a")
    (root / "b").makedirs_p()
    (root / "b/slurmjob.log").write_text("not a job log at all\n")
    jobtools.submit("c", records=("garbage that is no state",))
    second = jobtools.submit("d")
    # Interrupted before sbatch answered: no Submitted record.
    (root / "e").makedirs_p()
    start_log(root / "e/slurmjob.log", "0123456789abcdef")
    before = snapshot(root)
    result = jobtools.run("canceljobs")
    assert result.returncode == 0, result.stderr
    for folder in "b", "c", "e":
        assert f"./{folder}/slurmjob.log" in result.stderr
    assert result.stderr.count("Error: Skipped:") == 3
    assert "Summary: found 2 jobs, cancelled 2, skipped 0, errors 3." in result.stdout
    assert jobtools.calls("scancel") == [" ".join(map(str, sorted([first, second])))]
    assert snapshot(root) == before
    # The job of the corrupt log is not touched.
    assert slurm_states()[jobtools.ids[1]] == "PENDING"


def test_interrupted_submission_found_by_token(jobtools: JobTools):
    """A log killed between sbatch and its Submitted record: the job is found by its token."""
    root = jobtools.workflow.root
    held = jobtools.submit("held", interrupted=True)
    running = jobtools.submit("running", hold=False, interrupted=True)
    wait_for(lambda: scontrol_state(running) == "RUNNING", 60, "the job to run")
    # A token that no job carries: killed before sbatch ran.
    (root / "never").makedirs_p()
    start_log(root / "never/slurmjob.log", "0123456789abcdef")
    append_record(root / "never/slurmjob.log", "Submitting stepup-queue-0000000000000000")
    before = snapshot(root, outputs=False)
    result = jobtools.run("canceljobs")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        [row[name] for name in ("ACTION", "JOB", "SLURM", "LOG", "FOLDER")]
        for row in table(result.stdout)
    ]
    assert rows == [
        ["cancelled", str(held), "PENDING (JobHeldUser)", "SUBMITTING", "held"],
        ["cancelled", str(running), "RUNNING", "SUBMITTING", "running"],
    ]
    assert "./never/slurmjob.log has no Submitted record" in result.stderr
    assert "stepup-queue-0000000000000000" in result.stderr
    assert "Summary: found 2 jobs, cancelled 2, skipped 0, errors 1." in result.stdout
    assert jobtools.calls("squeue") == ["--me -t all -h -o %i|%T|%k|%r|%Z"]
    assert snapshot(root, outputs=False) == before
    wait_for(lambda: scontrol_state(held) == scontrol_state(running) == "CANCELLED", 30)


def test_nested_folders_and_several_paths(jobtools: JobTools):
    root = jobtools.workflow.root
    deep = jobtools.submit("p1/x/y/z")
    shallow = jobtools.submit("p1")
    other = jobtools.submit("p2/w")
    outside = jobtools.submit("outside/o")
    result = jobtools.run("canceljobs", "p1", "p2/", "missing", "p2/w/slurmjob.log", "p1/x")
    assert result.returncode == 0, result.stderr
    assert "missing does not exist: skipped." in result.stderr
    assert "p2/w/slurmjob.log is not a folder: skipped." in result.stderr
    # p1/x is inside p1: its job is found once.
    assert "Summary: found 3 jobs, cancelled 3, skipped 0, errors 2." in result.stdout
    assert [row["FOLDER"] for row in table(result.stdout)] == ["p1", "p1/x/y/z", "p2/w"]
    assert sorted(jobtools.calls("scancel")[0].split()) == sorted(map(str, [deep, shallow, other]))
    wait_for(lambda: scontrol_state(deep) == "CANCELLED", 30)
    assert scontrol_state(outside) == "PENDING"
    # From inside a job folder, the default PATH is the current folder.
    result = subprocess.run(
        ["stepup", "canceljobs"],
        cwd=root / "outside",
        env=jobtools.workflow.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "found 1 jobs, cancelled 1" in result.stdout
    wait_for(lambda: scontrol_state(outside) == "CANCELLED", 30)


def test_dry_run_changes_nothing(jobtools: JobTools):
    ids = [jobtools.submit(f"job{i}", cluster="localcluster" if i else None) for i in range(3)]
    before = snapshot(jobtools.workflow.root)
    for flag in "-n", "--dry-run":
        result = jobtools.run("canceljobs", flag, "--all")
        assert result.returncode == 0, result.stderr
        assert [row["ACTION"] for row in table(result.stdout)] == ["would cancel"] * 3
        assert "Summary: found 3 jobs, would cancel 3, skipped 0, errors 0." in result.stdout
    assert jobtools.calls("scancel") == []
    assert snapshot(jobtools.workflow.root) == before
    assert all(scontrol_state(job_id) == "PENDING" for job_id in ids)


def test_failed_scancel_exit_status(jobtools: JobTools):
    good = jobtools.submit("good")
    jobtools.submit("elsewhere", cluster="nosuchcluster")
    result = jobtools.run("canceljobs")
    assert result.returncode == 1
    # SLURM cannot be asked about that cluster: the log decides, and scancel fails.
    assert "Warning: could not ask SLURM about cluster nosuchcluster" in result.stderr
    assert "Error: `scancel -M nosuchcluster" in result.stderr
    rows = table(result.stdout)
    assert [row["ACTION"] for row in rows] == ["error", "cancelled"]
    assert rows[0]["CLUSTER"] == "nosuchcluster"
    assert rows[0]["SLURM"] == "?"
    assert rows[0]["NOTE"] == "scancel failed"
    assert "Summary: found 2 jobs, cancelled 1, skipped 0, errors 1." in result.stdout
    wait_for(lambda: scontrol_state(good) == "CANCELLED", 30)


def test_stale_log_never_cancels_a_job_of_another_folder(jobtools: JobTools):
    """A stale log (ids restart after a reinstall of SLURM) names the id of a live job that
    runs in another folder: that job is not cancelled (issue 15.2)."""
    root = jobtools.workflow.root
    (root / "elsewhere").makedirs_p()
    stranger = subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 300"],
        cwd=root / "elsewhere",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    jobtools.ids.append(int(stranger))
    (root / "old").makedirs_p()
    log = root / "old/slurmjob.log"
    start_log(log, "0123456789abcdef")
    log.write_text(
        log.read_text() + f"2020-01-01T00:00:00.000000 Submitted {stranger}\n"
        "2020-01-01T00:00:10.000000 RUNNING\n"
    )
    for args in ("canceljobs", "old/"), ("canceljobs", "--all", "old/"):
        result = jobtools.run(*args)
        assert result.returncode == 0, result.stderr
        (row,) = table(result.stdout)
        assert row["ACTION"] == "skip"
        squeezed = row["NOTE"].replace(" ", "")
        assert f"ranin{root / 'elsewhere'}:theidwasreused,nottouched" in squeezed
    assert jobtools.calls("scancel") == []
    assert scontrol_state(int(stranger)) in ("PENDING", "RUNNING")


def test_live_job_without_log_is_found_and_cancelled(jobtools: JobTools):
    """StepUp removes the log of a step that left the plan, also while its job runs: the job,
    tagged by StepUp Queue, is still found below PATH and cancelled (issue 15.10). An untagged
    job in the same tree is not StepUp Queue's and is left alone."""
    root = jobtools.workflow.root
    orphan = jobtools.submit("sweep/a", interrupted=True)
    (root / "sweep/a/slurmjob.log").remove()
    untagged = jobtools.submit("sweep/b")
    (root / "sweep/b/slurmjob.log").remove()
    outside = jobtools.submit("outside", interrupted=True)
    (root / "outside/slurmjob.log").remove()
    result = jobtools.run("canceljobs", "sweep")
    assert result.returncode == 0, result.stderr
    (row,) = table(result.stdout)
    assert (row["ACTION"], row["JOB"], row["LOG"]) == ("cancelled", str(orphan), "no log")
    assert row["FOLDER"] == "sweep/a"
    assert row["NOTE"] == "its folder has no slurmjob.log (tagged by StepUp Queue)"
    assert "Summary: found 1 jobs, cancelled 1" in result.stdout
    wait_for(lambda: scontrol_state(orphan) == "CANCELLED", 30)
    assert scontrol_state(untagged) == scontrol_state(outside) == "PENDING"


def test_all_goes_by_the_log_only_when_slurm_cannot_be_asked(jobtools: JobTools):
    """Without an answer from SLURM, a job whose log records an end is cancelled only with
    --all."""
    job_id = jobtools.submit("ended", records=("RUNNING", "COMPLETED"))
    broken = unreachable_squeue(jobtools.workflow)
    result = jobtools.run("canceljobs", env=broken)
    (row,) = table(result.stdout)
    assert (row["ACTION"], row["SLURM"]) == ("skip", "?")
    assert row["NOTE"] == "ended according to its log (--all cancels it anyway)"
    assert scontrol_state(job_id) == "PENDING"
    result = jobtools.run("canceljobs", "--all", env=broken)
    (row,) = table(result.stdout)
    assert (row["ACTION"], row["NOTE"]) == ("cancelled", "SLURM not asked: going by the log")
    wait_for(lambda: scontrol_state(job_id) == "CANCELLED", 30)

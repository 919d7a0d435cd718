"""`stepup removejobs`, run as a real subprocess on the real local SLURM."""

import os
import pwd
import subprocess

import pytest
from conftest import (
    OK_AND_BAD_PLAN,
    JobTools,
    scontrol_state,
    snapshot,
    submit_as_nobody,
    table,
    unreachable_squeue,
    wait_for,
    write_log,
)
from path import Path

from stepup.queue.joblog import append_record, read_log, start_log

JOB_FILES = {"slurmjob.log", "slurmjob.out", "slurmjob.err", "slurmjob.ret"}


def notes(rows: list[dict[str, str]]) -> dict[str, tuple[str, str]]:
    """Folder → (action, note) from the rows of a removejobs table."""
    return {row["FOLDER"]: (row["ACTION"], row["NOTE"]) for row in rows}


def test_help(jobtools: JobTools):
    result = jobtools.run("removejobs", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--commit" in text
    assert "nothing else (never the job script)" in text
    assert "lists as pending or running is never selected" in text


def test_remove_failed_jobs_then_boot_resubmits_them(jobtools: JobTools):
    wf = jobtools.workflow
    wf.plan(OK_AND_BAD_PLAN)
    wf.job("ok", "#!/usr/bin/env bash\necho fine\n")
    wf.job("bad", "#!/usr/bin/env bash\necho broken >&2\nexit 3\n")
    (wf.root / "bad/notes.txt").write_text("the user's own file\n")
    first = wf.boot()
    assert first.returncode != 0
    ok_id = read_log(wf.root / "ok/slurmjob.log").job_id
    bad_id = read_log(wf.root / "bad/slurmjob.log").job_id
    assert {p.name for p in (wf.root / "bad").files()} == {*JOB_FILES, "slurmjob.sh", "notes.txt"}
    # Not part of the workflow: a pending job whose (stale) log says it failed, a running
    # job, and a cancelled job.
    pending = jobtools.submit("pending", records=("FAILED",), ret="1\n")
    running = jobtools.submit("running", hold=False)
    cancelled = jobtools.submit("cancelled", records=("CANCELLED",), ret="")
    subprocess.run(["scancel", str(cancelled)], check=True)
    wait_for(lambda: scontrol_state(running) == "RUNNING", 60, "the job to run")
    # SLURM creates the job's output files once it starts.
    outputs = [wf.root / "running/slurmjob.out", wf.root / "running/slurmjob.err"]
    wait_for(lambda: all(path.exists() for path in outputs), 30, "the output files")
    wait_for(lambda: scontrol_state(cancelled) == "CANCELLED", 30, "the cancellation")

    before = snapshot(wf.root)
    listed = jobtools.run("removejobs")
    assert listed.returncode == 0, listed.stderr
    assert notes(table(listed.stdout)) == {
        "bad": ("would remove", "exit code 3"),
        "cancelled": ("would remove", "ended CANCELLED"),
        "ok": ("keep", "succeeded (--all selects it)"),
        "pending": ("keep", "still PENDING in SLURM"),
        "running": ("keep", "still RUNNING in SLURM"),
    }
    slurm = {row["FOLDER"]: row["SLURM"] for row in table(listed.stdout)}
    assert slurm["pending"] == "PENDING (JobHeldUser)"
    assert slurm["running"] == "RUNNING"
    assert "Summary: found 5 jobs, would remove 2, kept 3, errors 0." in listed.stdout
    assert "Nothing was removed: add --commit" in listed.stdout
    assert snapshot(wf.root) == before

    jobtools.reset_calls()
    result = jobtools.run("removejobs", "--commit")
    assert result.returncode == 0, result.stderr
    assert "Summary: found 5 jobs, removed 2, kept 3, errors 0." in result.stdout
    assert [row["ACTION"] for row in table(result.stdout)].count("removed") == 2
    assert len(jobtools.calls("squeue")) == 1
    after = snapshot(wf.root)
    removed = {f"bad/{name}" for name in JOB_FILES} | {
        "cancelled/slurmjob.log",
        "cancelled/slurmjob.ret",
    }
    assert set(before) - set(after) == removed
    assert after == {key: value for key, value in before.items() if key not in removed}
    assert scontrol_state(pending) == "PENDING"
    assert scontrol_state(running) == "RUNNING"

    second = wf.boot()
    assert second.returncode != 0
    new_bad = read_log(wf.root / "bad/slurmjob.log").job_id
    assert new_bad not in (bad_id, ok_id)
    assert read_log(wf.root / "ok/slurmjob.log").job_id == ok_id
    # Only the removed job was submitted again.

    def workdirs() -> list[str]:
        names = (Path(record["WorkDir"]).name for record in wf.jobs())
        return sorted(name for name in names if name in ("bad", "ok"))

    wait_for(lambda: len(workdirs()) >= 3, 30, "sacct to record the jobs")
    assert workdirs() == ["bad", "bad", "ok"]


def test_all_selects_succeeded_jobs(jobtools: JobTools):
    root = jobtools.workflow.root
    # The logs as StepUp Queue leaves them: the step ends once the exit code appears.
    completed = jobtools.submit(
        "completed", hold=False, command="true", records=("RUNNING", "COMPLETED"), ret="0\n"
    )
    exit_only = jobtools.submit(
        "exit_only", hold=False, command="true", records=("RUNNING",), ret="0\n"
    )
    failed = jobtools.submit(
        "failed", hold=False, command="exit 2", records=("RUNNING",), ret="2\n"
    )
    jobtools.submit("held", records=("COMPLETED",), ret="0\n")
    wait_for(
        lambda: (
            [scontrol_state(i) for i in (completed, exit_only, failed)]
            == ["COMPLETED", "COMPLETED", "FAILED"]
        ),
        60,
        "the jobs to end",
    )
    (root / "corrupt").makedirs_p()
    (root / "corrupt/slurmjob.log").write_text("garbage\n")
    # Files of an earlier attempt go with the job; the retry settings of sbatch() stay.
    for name in "slurmjob.log.1", "slurmjob.out.1", "slurmjob.err.1", "slurmjob.retries":
        (root / "completed" / name).write_text("")

    result = jobtools.run("removejobs")
    assert result.returncode == 0, result.stderr
    assert notes(table(result.stdout)) == {
        "completed": ("keep", "succeeded (--all selects it)"),
        "exit_only": ("keep", "succeeded (--all selects it)"),
        "failed": ("would remove", "exit code 2"),
        "held": ("keep", "still PENDING in SLURM"),
    }
    assert "./corrupt/slurmjob.log" in result.stderr

    result = jobtools.run("removejobs", "--all", "--commit")
    assert result.returncode == 0, result.stderr
    assert notes(table(result.stdout)) == {
        "completed": ("removed", "succeeded"),
        "exit_only": ("removed", "succeeded"),
        "failed": ("removed", "exit code 2"),
        "held": ("keep", "still PENDING in SLURM"),
    }
    assert "Summary: found 4 jobs, removed 3, kept 1, errors 1." in result.stdout
    for folder in "exit_only", "failed":
        assert (root / folder).files() == []
    assert [p.name for p in (root / "completed").files()] == ["slurmjob.retries"]
    assert {p.name for p in (root / "held").files()} == {"slurmjob.log", "slurmjob.ret"}
    assert (root / "corrupt/slurmjob.log").read_text() == "garbage\n"


@pytest.mark.parametrize("broken", ["squeue", "cluster"])
def test_refuses_when_slurm_cannot_be_asked(jobtools: JobTools, broken: str):
    root = jobtools.workflow.root
    failed = jobtools.submit("failed", hold=False, command="exit 1", records=("FAILED",), ret="1")
    wait_for(lambda: scontrol_state(failed) == "FAILED", 60, "the job to fail")
    env = {}
    if broken == "squeue":
        env = unreachable_squeue(jobtools.workflow)
    else:
        jobtools.submit("elsewhere", cluster="nosuchcluster", records=("FAILED",), ret="1")
    before = snapshot(root)
    for args in [(), ("--commit",), ("--all", "--commit")]:
        result = jobtools.run("removejobs", *args, env=env)
        assert result.returncode == 1
        assert "Warning: could not ask SLURM about" in result.stderr
        assert "Nothing was removed: SLURM could not be asked" in result.stderr
        assert "removed" not in [row["ACTION"] for row in table(result.stdout)]
        assert snapshot(root) == before


def test_interrupted_submission_found_by_token(jobtools: JobTools):
    """Logs with only a Submitting record: a cancelled job found by its token is removed."""
    root = jobtools.workflow.root
    cancelled = jobtools.submit("cancelled", interrupted=True)
    held = jobtools.submit("held", interrupted=True)
    subprocess.run(["scancel", str(cancelled)], check=True)
    wait_for(lambda: scontrol_state(cancelled) == "CANCELLED", 30, "the cancellation")
    result = jobtools.run("removejobs", "--commit")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        [row[name] for name in ("ACTION", "JOB", "SLURM", "LOG")] for row in table(result.stdout)
    ]
    assert rows == [
        ["removed", str(cancelled), "CANCELLED", "SUBMITTING"],
        ["keep", str(held), "PENDING (JobHeldUser)", "SUBMITTING"],
    ]
    assert not (root / "cancelled/slurmjob.log").exists()
    assert (root / "held/slurmjob.log").exists()


def test_unconfirmed_and_strange_jobs_are_kept(jobtools: JobTools, tmp_path):
    """Files stay where SLURM cannot confirm that the log's own job ended.

    - `unknown`: a job id that neither squeue nor sacct knows;
    - `nobody`: a pending job of another user (squeue --me does not list it);
    - `reused`: a log naming the id of a job that ran in another folder (ids are reused).
    Next to them, a job of this user that ended, which squeue no longer lists but sacct does,
    is removed.
    """
    wf = jobtools.workflow
    ended = jobtools.submit("ended", hold=False, command="true")
    write_log(wf.root / "unknown", "Submitted 999999999")
    reused_folder = wf.root / "reused"
    write_log(reused_folder, f"Submitted {ended}")
    nobody = wf.root / "nobody"
    Path(tmp_path).chmod(0o755)
    wf.root.chmod(0o755)
    other = submit_as_nobody(nobody)
    try:
        write_log(nobody, f"Submitted {other}")
        wait_for(lambda: scontrol_state(ended) is None, 180, "SLURM to forget the ended job")
        wait_for(lambda: sacct_user(other) == "nobody", 60, "sacct to list the other job")
        # An exit code is proof that a job ended, but not that it is the log's own job.
        for folder in "ended", "reused", "nobody":
            (wf.root / folder / "slurmjob.ret").write_text("1\n")
        result = jobtools.run("removejobs", "--commit")
        rows = notes(table(result.stdout))
        assert rows["ended"] == ("removed", "exit code 1"), result.stdout
        assert rows["unknown"][0] == "keep"
        assert "neither squeue nor sacct knows it" in rows["unknown"][1]
        assert rows["nobody"] == ("keep", "job of user nobody: not touched")
        assert rows["reused"][0] == "keep"
        # The note wraps in the 80-column table, perhaps inside the long folder name.
        squeezed = rows["reused"][1].replace(" ", "")
        assert f"ranin{wf.root / 'ended'}:theidwasreused" in squeezed
        for folder in "unknown", "reused", "nobody":
            assert (wf.root / folder / "slurmjob.log").exists()
        assert not (wf.root / "ended/slurmjob.log").exists()
        # canceljobs leaves the other user's pending job alone.
        result = jobtools.run("canceljobs", "nobody")
        assert result.returncode == 0, result.stderr
        assert "jobofusernobody:nottouched" in "".join(result.stdout.split())
        assert scontrol_state(other) == "PENDING"
    finally:
        subprocess.run(["scancel", str(other)], check=False)


def sacct_user(job_id: int) -> str:
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-j", str(job_id), "-o", "User"],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def test_log_of_another_user_is_kept_unless_slurm_says_the_job_is_yours(jobtools: JobTools):
    """A colleague's ended job in a shared folder (issue 15.9): sacct does not know the job
    (PrivateData=jobs, slurmdbd down, or purged), the log says it failed. Its files are kept,
    because the log belongs to another user; an own log in the same state is removed."""
    root = jobtools.workflow.root
    for folder in "mine", "theirs":
        path = root / folder
        path.makedirs_p()
        start_log(path / "slurmjob.log", "0123456789abcdef")
        # An id that sacct does not know.
        append_record(path / "slurmjob.log", "Submitted 99999998")
        append_record(path / "slurmjob.log", "FAILED")
        (path / "slurmjob.ret").write_text("1\n")
    nobody = pwd.getpwnam("nobody")
    for path in (root / "theirs").walkfiles():
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    result = jobtools.run("removejobs", "--commit")
    assert result.returncode == 0, result.stderr
    rows = {row["FOLDER"]: row for row in table(result.stdout)}
    assert rows["mine"]["ACTION"] == "removed"
    assert rows["theirs"]["ACTION"] == "keep"
    squeezed = rows["theirs"]["NOTE"].replace(" ", "")
    assert squeezed == "logofusernobody,andSLURMdoesnotconfirmthejobisyours"
    assert not (root / "mine/slurmjob.log").exists()
    assert (root / "theirs/slurmjob.log").exists()
    assert (root / "theirs/slurmjob.ret").read_text() == "1\n"


def test_live_job_without_log_is_kept(jobtools: JobTools):
    """A live job of StepUp Queue whose log StepUp removed is shown and kept (issue 15.10)."""
    orphan = jobtools.submit("gone", interrupted=True)
    (jobtools.workflow.root / "gone/slurmjob.log").remove()
    result = jobtools.run("removejobs", "--all", "--commit")
    assert result.returncode == 0, result.stderr
    (row,) = table(result.stdout)
    assert (row["ACTION"], row["JOB"], row["LOG"]) == ("keep", str(orphan), "no log")
    assert row["NOTE"] == "still PENDING in SLURM"

"""Tests of the search shared by `stepup canceljobs` and `stepup removejobs`."""

import os
from datetime import datetime, timedelta

import pytest
from conftest import DIGEST, JobTools, write_log
from path import Path

from stepup.queue.found_job import FoundJob
from stepup.queue.joblog import JobLog, read_log
from stepup.queue.jobsearch import ask_slurm, find_jobs, search_jobs
from stepup.queue.slurm.cache import Snapshot
from stepup.queue.slurm.parsers import Listing
from stepup.queue.toolcli import print_actions
from stepup.queue.wrapper import read_ret


def found(*states: str, ret: int | str | None = None, live: str | None = None) -> FoundJob:
    """A found job with a log holding these states, as if SLURM answered with `live`."""
    log = JobLog(Path("job/slurmjob.log"), DIGEST, job_id=7)
    log.states = [(None, state) for state in states]
    return FoundJob(log, ret, asked=True, live=live)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("", None), ("\n", None), ("0\n", 0), ("3", 3), ("-9\n", -9), ("oops", "oops")],
)
def test_read_ret(tmp_path, text: str | None, expected: int | str | None):
    if text is not None:
        (Path(tmp_path) / "slurmjob.ret").write_text(text)
    assert read_ret(tmp_path) == expected


def test_find_jobs_nested_several_paths_and_bad_logs(tmp_path):
    root = Path(tmp_path)
    write_log(root / "a", "Submitted 11")
    write_log(root / "a/deeper/b", "Submitted 12;othercluster", "RUNNING")
    write_log(root / "c", "Submitted 13", "COMPLETED")
    (root / "c/slurmjob.ret").write_text("0\n")
    write_log(root / ".hidden", "Submitted 14")
    write_log(root / "bad/nosubmitted", "Submitting stepup-queue-0123456789abcdef")
    (root / "bad/garbage").makedirs_p()
    (root / "bad/garbage/slurmjob.log").write_text("this is not a job log\n")
    (root / "bad/binary").makedirs_p()
    (root / "bad/binary/slurmjob.log").write_bytes(b"\xff\xfe\x00garbage")
    paths = [root / "a", root / "c", root, root / "missing", root / "c/slurmjob.log"]
    jobs, errors = find_jobs(paths)
    # Each log once, in the order of the paths; the hidden folder is skipped.
    # A log with only a Submitting record waits for SLURM to tell its job by the token.
    assert [job.job_id for job in jobs] == [11, 12, 13, None]
    assert jobs[3].log.token == "stepup-queue-0123456789abcdef"
    assert [job.cluster for job in jobs] == [None, "othercluster", None, None]
    assert [job.ret for job in jobs] == [None, None, 0, None]
    assert [job.log.last_state for job in jobs] == [None, "RUNNING", "COMPLETED", None]
    assert len(errors) == 4
    for name in "binary", "garbage":
        assert sum(str(root / "bad" / name / "slurmjob.log") in e for e in errors) == 1
    assert f"{root / 'missing'} does not exist" in errors[2]
    assert f"{root / 'c/slurmjob.log'} is not a folder" in errors[3]


def test_ended_by_log():
    assert not found().ended_by_log
    assert not found("PENDING", "RUNNING").ended_by_log
    assert found("RUNNING", "TIMEOUT").ended_by_log
    # StepUp Queue ends a step when the exit code appears, without logging a state.
    assert found("RUNNING", ret=0).ended_by_log
    assert found(ret=1).ended_by_log
    assert not found("RUNNING", ret="garbled").ended_by_log


def test_active():
    assert found(live="PENDING").active is True
    assert found(live="COMPLETING").active is True
    assert found(live="COMPLETED").active is False
    # Not listed by squeue: only sacct or the log can confirm that the job ended.
    assert found(live=None).active is None
    assert found("COMPLETED", live=None).active is False
    assert found(ret=0, live=None).active is False
    job = found(live=None)
    job.account = {"State": "CANCELLED", "Submit": "", "User": "root", "WorkDir": ""}
    assert job.active is False
    job.account["State"] = "RUNNING"
    assert job.active is True
    job = found("RUNNING")
    job.asked = False
    assert job.active is None


def test_succeeded_and_end_state():
    assert found("COMPLETED", ret=0).succeeded
    assert found(ret=0).succeeded
    assert not found("COMPLETED").succeeded
    assert not found(ret=2).succeeded
    assert not found("CANCELLED", ret=0).succeeded
    assert not found("RUNNING", ret=0, live="TIMEOUT").succeeded
    assert found("RUNNING", live="FAILED").end_state == "FAILED"
    assert found("OUT_OF_MEMORY", live="FAILED").end_state == "OUT_OF_MEMORY"
    assert found("RUNNING", live="RUNNING").end_state is None


def test_print_actions(capsys):
    job = found("RUNNING", ret=3, live="COMPLETED")
    pending = found(live="PENDING")
    pending.reason = "Priority"
    long = found()
    long.log.path = Path("/".join(f"folder{i}" for i in range(20)) + "/slurmjob.log")
    print_actions([("skip", job, "a note"), ("cancel", pending, ""), ("cancel", long, "")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ACTION", "JOB", "SLURM", "LOG", "FOLDER", "NOTE"]
    assert lines[1].split() == ["skip", "7", "COMPLETED", "RUNNING", "exit=3", "job", "a", "note"]
    assert lines[2].split() == ["cancel", "7", "PENDING", "(Priority)", "SUBMITTED", "job"]
    assert lines[0].index("FOLDER") == lines[1].index("job") == lines[2].index("job")
    # Without a terminal, 80 columns; the long folder is shortened in the middle.
    assert all(len(line) <= 80 for line in lines)
    folder = lines[3].split()[-1]
    assert folder.startswith("folder0/fol")
    assert folder.endswith("/folder19")
    assert "…" in folder


def test_ask_slurm_one_squeue_per_cluster(jobtools: JobTools, monkeypatch):
    held = jobtools.submit("held")
    clustered = jobtools.submit("clustered", cluster="localcluster")
    write_log(jobtools.workflow.root / "gone", "Submitted 999999999")
    write_log(jobtools.workflow.root / "elsewhere", "Submitted 5;nosuchcluster")
    monkeypatch.setenv("PATH", jobtools.workflow.env["PATH"])
    jobs, errors = find_jobs([jobtools.workflow.root])
    assert errors == []
    unreachable = ask_slurm(jobs, timeout=20)
    assert list(unreachable) == ["nosuchcluster"]
    assert "nosuchcluster" in unreachable["nosuchcluster"]
    assert sorted(jobtools.calls("squeue")) == sorted(
        [
            "--me -t all -h -o %i|%T|%k|%r|%Z",
            "-M localcluster --me -t all -h -o %i|%T|%k|%r|%Z",
            "-M nosuchcluster --me -t all -h -o %i|%T|%k|%r|%Z",
        ]
    )
    by_id = {job.job_id: job for job in jobs}
    assert by_id[held].live == "PENDING"
    assert by_id[held].active is True
    assert by_id[clustered].live == "PENDING"
    assert by_id[999999999].asked
    # Neither squeue nor sacct knows it: its end is not confirmed.
    assert by_id[999999999].account is None
    assert by_id[999999999].active is None
    assert by_id[5].active is None


def test_unreadable_folder_is_reported(tmp_path):
    """A folder that cannot be read is reported, not skipped in silence.

    The tests run as root, who may read every folder: a path longer than PATH_MAX is a real
    folder that the file system refuses to open all the same.
    """
    root = Path(tmp_path) / "root"
    write_log(root / "ok", "Submitted 12")
    fd = os.open(root, os.O_RDONLY)
    for depth in range(20):
        name = f"{depth:02d}" + "x" * 240
        os.mkdir(name, dir_fd=fd)
        deeper = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(fd)
    jobs, errors = find_jobs([root])
    assert [job.job_id for job in jobs] == [12]
    (error,) = errors
    assert error.startswith(f"Skipped {root / ('00' + 'x' * 240)}/")
    assert error.endswith(": cannot read this folder (File name too long).")


def test_a_submission_newer_than_the_cached_answer_is_no_error(tmp_path, monkeypatch):
    """`stepup jobs --watch` reads the shared cache, whose answer may be older than a step's
    Submitting record: that job is being submitted, not lost (seen in CI as an error line)."""
    root = Path(tmp_path)
    log = write_log(root / "job", "Submitting stepup-queue-0123456789abcdef")
    began = read_log(log).submitting_time

    def answer_at(time: datetime):
        return lambda cluster: Snapshot(time, 0, Listing.empty())

    monkeypatch.chdir(root)
    before = search_jobs([Path(".")], snapshot=answer_at(began - timedelta(seconds=5)))
    assert (before.jobs, before.errors) == ([], [])
    after = search_jobs([Path(".")], snapshot=answer_at(began + timedelta(seconds=5)))
    assert after.jobs == []
    (error,) = after.errors
    assert error.startswith("Skipped: the job log ./job/slurmjob.log has no Submitted record")


def test_a_log_started_after_the_cached_answer_is_no_error(tmp_path, monkeypatch):
    """A log of only its first two lines, written after SLURM's (cached) answer, is a step about
    to submit: no error in a frame of `stepup jobs --watch` (seen in a test run as 'Skipped:
    ... has no Submitted record: nothing was submitted'). Written before the answer, it is a
    step that never reached sbatch, and reported."""
    root = Path(tmp_path)
    log = write_log(root / "job")
    began = datetime.fromtimestamp(log.mtime)

    def answer_at(time: datetime):
        return lambda cluster: Snapshot(time, 0, Listing.empty())

    monkeypatch.chdir(root)
    before = search_jobs([Path(".")], snapshot=answer_at(began - timedelta(seconds=5)))
    assert (before.jobs, before.errors) == ([], [])
    after = search_jobs([Path(".")], snapshot=answer_at(began + timedelta(seconds=5)))
    assert after.jobs == []
    assert after.errors == [
        "Skipped: The job log ./job/slurmjob.log has no Submitted record: nothing was submitted."
    ]

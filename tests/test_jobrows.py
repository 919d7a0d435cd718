"""The rows of `stepup jobs` from job folders written as the step writes them."""

from datetime import datetime

import pytest
from conftest import DIGEST
from path import Path

from stepup.queue import jobrows
from stepup.queue.attempts import archive_attempt
from stepup.queue.found_job import FoundJob
from stepup.queue.joblog import append_record, read_log, record_submitted, start_log
from stepup.queue.jobrows import KnownAttempts, job_rows
from stepup.queue.jobsearch import JobSearch


def submit(log: Path, job_id: int, token: str):
    """Log a submission as the step does: Submitting with the token, then Submitted."""
    start_log(log, DIGEST)
    append_record(log, f"Submitting {token}")
    record_submitted(log, str(job_id))


def frame(folder: Path, known: KnownAttempts) -> dict:
    """One frame of `stepup jobs --watch`: the log read again, its row made."""
    job = FoundJob(read_log(folder / "slurmjob.log"), None)
    (row,) = job_rows(JobSearch(jobs=[job]), datetime.now(), known)
    return row.to_json()


def failed_first_attempt(tmp_path) -> tuple[Path, Path]:
    """A job folder whose first attempt (job 41) ended with NODE_FAIL and was moved aside."""
    folder = Path(tmp_path) / "job"
    folder.makedirs()
    log = folder / "slurmjob.log"
    submit(log, 41, "stepup-queue-0000000000000041")
    append_record(log, "NODE_FAIL")
    archive_attempt(log)
    return folder, log


@pytest.fixture
def listings(monkeypatch) -> list[Path]:
    """The job folders searched for earlier attempts, one entry per search."""
    searched = []
    earlier_attempts = jobrows.earlier_attempts

    def counted(log_path: Path, digest: str):
        searched.append(log_path.parent)
        return earlier_attempts(log_path, digest)

    monkeypatch.setattr(jobrows, "earlier_attempts", counted)
    return searched


def test_watch_searches_a_folder_for_attempts_once_per_submission(tmp_path, listings):
    folder, log = failed_first_attempt(tmp_path)
    submit(log, 42, "stepup-queue-0000000000000042")
    append_record(log, "RUNNING")
    known: KnownAttempts = {}
    first = frame(folder, known)
    assert first["attempts"] == [{"job_id": 41, "state": "NODE_FAIL"}]
    # The job runs on: its log grows, the folder is not searched again.
    append_record(log, "COMPLETING")
    assert frame(folder, known)["attempts"] == first["attempts"]
    assert listings == [folder]

    # The attempt ends with an infrastructure failure and the next one is submitted: the
    # new submission is seen, in each of its stages.
    append_record(log, "PREEMPTED")
    archive_attempt(log)
    start_log(log, DIGEST)
    append_record(log, "Submitting stepup-queue-0000000000000043")
    attempts = [{"job_id": 41, "state": "NODE_FAIL"}, {"job_id": 42, "state": "PREEMPTED"}]
    assert frame(folder, known)["attempts"] == attempts
    record_submitted(log, "43")
    assert frame(folder, known)["attempts"] == attempts
    assert frame(folder, known)["attempts"] == attempts
    assert listings == [folder] * 3

    # Without what earlier frames read (a plain `stepup jobs`), each row searches.
    assert frame(folder, None)["attempts"] == attempts
    assert listings == [folder] * 4


def test_unreadable_attempts_are_searched_again(tmp_path, listings):
    """A damaged log of an attempt leaves the row without attempts until it is fixed."""
    folder, log = failed_first_attempt(tmp_path)
    good = (folder / "slurmjob.log.1").read_text()
    (folder / "slurmjob.log.1").write_text("damaged\n")
    submit(log, 42, "stepup-queue-0000000000000042")
    known: KnownAttempts = {}
    assert frame(folder, known)["attempts"] == []
    (folder / "slurmjob.log.1").write_text(good)
    assert frame(folder, known)["attempts"] == [{"job_id": 41, "state": "NODE_FAIL"}]
    assert listings == [folder] * 2

"""Tests of the rules that tie a job SLURM knows to a job folder and its log."""

import os
import subprocess
from datetime import datetime, timedelta

import pytest
from conftest import (
    data,
    sacct_state,
    scontrol_state,
    wait_for,
)
from path import Path

from stepup.queue.config import Config
from stepup.queue.slurm.identity import (
    ARRAY_LINKS,
    find_by_token,
    match_submission,
    why_not_array_task,
    why_not_logged_job,
)
from stepup.queue.slurm.parsers import CLOCK_SLACK, last_run, parse_job_records, parse_job_runs
from stepup.queue.slurm.queries import ACCOUNT_FIELDS

RUNS = data("sacct_requeued_runs.txt")


# match_submission: which job an interrupted submission made


def test_match_submission_by_token():
    jobs = parse_job_records(data("sacct_submissions.txt"))
    since = datetime(2026, 11, 25, 9, 57, 48)
    token = "stepup-queue-00112233445566ff"
    # The token wins over jobs without comment from the same folder.
    assert match_submission(jobs, token, "/tmp/capture2/folder a", since) == [21342]


def test_match_submission_without_comments_by_folder_and_time():
    """Accounting without comments: the job from this folder, submitted after the record."""
    jobs = parse_job_records(data("sacct_submissions.txt"))
    token = "stepup-queue-ffffffffffffffff"
    since = datetime(2026, 11, 25, 9, 57, 48, 500000)
    assert match_submission(jobs, token, "/tmp/capture2/folder a", since) == [21343]
    assert match_submission(jobs, token, "/tmp/capture2/folder b", since) == [21344, 21345]
    assert match_submission(jobs, token, "/tmp/capture2", since) == []
    # SLURM's clock may run behind ours by less than CLOCK_SLACK, not more.
    later = datetime(2026, 11, 25, 9, 57, 48) + CLOCK_SLACK
    assert match_submission(jobs, token, "/tmp/capture2/folder a", later) == [21343]
    assert (
        match_submission(jobs, token, "/tmp/capture2/folder a", later + timedelta(seconds=1)) == []
    )


def test_find_by_token_after_purge_without_comments(slurm, tmp_path, monkeypatch):
    """Jobs that left slurmctld and have no comment in sacct: found by folder and time.

    Jobs submitted without `--comment` look in sacct like any job on a cluster whose
    accounting stores no comments (SLURM's default).
    """
    since = datetime.now()
    ids = {}
    for name, count in (("one", 1), ("two", 2)):
        folder = Path(tmp_path) / name
        folder.makedirs_p()
        ids[name] = [
            int(
                subprocess.run(
                    ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"],
                    cwd=folder,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            for _ in range(count)
        ]
    everything = ids["one"] + ids["two"]
    wait_for(lambda: all(scontrol_state(i) is None for i in everything), 180, "the purge")
    # A job without comment that squeue still lists is not the one: its comment is known.
    running = int(
        subprocess.run(
            ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 120"],
            cwd=Path(tmp_path) / "one",
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    config = Config(cache_dir=Path(tmp_path) / "cache", command_timeout=20)
    token = "stepup-queue-" + os.urandom(8).hex()
    monkeypatch.chdir(Path(tmp_path) / "one")
    try:
        wait_for(lambda: sacct_state(running) == "RUNNING", 60, "sacct to list it")
        assert find_by_token(token, None, since, config.command_timeout) == (True, ids["one"][0])
    finally:
        subprocess.run(["scancel", str(running)], check=True)
    monkeypatch.chdir(Path(tmp_path) / "two")
    with pytest.raises(ValueError, match="several jobs without a comment") as info:
        find_by_token(token, None, since, config.command_timeout)
    assert all(str(i) in str(info.value) for i in ids["two"])
    monkeypatch.chdir(tmp_path)
    assert find_by_token(token, None, since, config.command_timeout) == (True, None)


def test_why_not_logged_job():
    folder = "/tmp/rq"
    record = last_run(parse_job_runs(RUNS, ACCOUNT_FIELDS)[307])
    logged = datetime(2026, 12, 2, 18, 24, 35, 500000)
    # The requeue reset the submit time: the first submission counts.
    assert why_not_logged_job(307, record, folder, logged) is None
    # Found after an interrupted submission: the Submitted record is written much later.
    assert why_not_logged_job(307, record, folder, logged + timedelta(hours=5)) is None
    assert why_not_logged_job(307, record, folder, None) is None
    why = why_not_logged_job(307, record, folder, logged - timedelta(days=1))
    assert why.startswith("SLURM's job 307 was submitted at 2026-12-02T18:24:35, after the log")
    assert why.endswith("the id was reused")
    assert why_not_logged_job(307, record, "/elsewhere", logged) == (
        "SLURM's job 307 ran in /tmp/rq: the id was reused"
    )


# why_not_array_task: an array task is a folder's when its array's task link points to it

TOKEN = "stepup-queue-0123456789abcdef"


def array_links(tmp_path, folders: list[str]) -> Path:
    """A plan folder whose step `sweep` submitted `folders` as tasks 0, 1, ... (TOKEN)."""
    root = Path(tmp_path)
    links = root / ARRAY_LINKS / "sweep" / TOKEN
    links.makedirs_p()
    for index, folder in enumerate(folders):
        (root / folder).makedirs_p()
        (root / folder).symlink(links / str(index))
    return root


def task_check(root: Path, folder: str, index: int, token: str | None = TOKEN, **kwargs):
    options = {"ended": False, "first_submit": None, "submitted": None} | kwargs
    return why_not_array_task(
        f"77_{index}", str(root), token, index=index, folder=root / folder, **options
    )


def test_array_task_told_by_its_link(tmp_path, monkeypatch):
    root = array_links(tmp_path, ["a", "b"])
    monkeypatch.chdir(root)
    assert task_check(root, "a", 0) is None
    assert task_check(root, "b", 1) is None
    # Another folder's task of the same array, a task index without link.
    assert "is that of b" in task_check(root, "a", 1)
    assert "has no task 5 link" in task_check(root, "a", 5)


def test_array_task_of_another_array(tmp_path):
    root = array_links(tmp_path, ["a"])
    # An array that StepUp Queue did not submit (no token), or whose links are unknown.
    assert "no token" in task_check(root, "a", 0, token="")
    assert "no token" in task_check(root, "a", 0, token="my comment")
    other = "stepup-queue-ffffffffffffffff"
    assert "cannot be tied" in task_check(root, "a", 0, token=other)
    assert "cannot be tied" in task_check(root, "a", 0, token=None)


def test_ended_array_task_without_links(tmp_path):
    """Once its step removed the links, an ended task is checked for reused ids only."""
    root = Path(tmp_path)
    (root / "a").makedirs_p()
    logged = datetime(2026, 1, 2, 12)
    assert task_check(root, "a", 0, token=None, ended=True) is None
    early = {"first_submit": "2026-01-02T11:59:59", "submitted": logged, "ended": True}
    assert task_check(root, "a", 0, token=None, **early) is None
    late = {"first_submit": "2026-01-02T13:00:00", "submitted": logged, "ended": True}
    assert "the id was reused" in task_check(root, "a", 0, token=None, **late)

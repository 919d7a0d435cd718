"""Tests of the queries that read SLURM's state."""

from conftest import data

from stepup.queue.efficiency import usage_by_run
from stepup.queue.slurm.parsers import last_run, parse_job_runs
from stepup.queue.slurm.queries import HISTORY_FIELDS, squeue_command, task_records


def test_squeue_command():
    assert squeue_command(None) == ["squeue", "--me", "-t", "all", "-h", "-o", "%i|%T|%k|%r|%Z"]
    assert squeue_command("c1") == [
        "squeue",
        "-M",
        "c1",
        "--me",
        "-t",
        "all",
        "-h",
        "-o",
        "%i|%T|%k|%r|%Z",
    ]


def test_task_records_from_one_sacct_answer():
    """`stepup jobs` asks sacct about jobs and array tasks (`ID_N`) in one call, with JobID
    after JobIDRaw: each task is told by its JobID, its usage by its own raw id."""
    fields = (HISTORY_FIELDS[0], "JobID", *HISTORY_FIELDS[1:])
    output = data("sacct_array_history.txt")
    runs = parse_job_runs(output, fields)
    jobs, tasks = task_records({raw: last_run(records) for raw, records in runs.items()})
    assert jobs == {}
    assert sorted(tasks) == [(14642, 0), (14642, 1), (14642, 3)]
    raw, record = tasks[14642, 1]
    assert (raw, record["State"], record["ExitCode"]) == (14645, "FAILED", "3:0")
    assert tasks[14642, 3][0] == 14642
    usage = usage_by_run(output, fields)
    assert usage[14645, record["Submit"]].elapsed == 0
    assert usage[14642, tasks[14642, 3][1]["Submit"]].elapsed == 2

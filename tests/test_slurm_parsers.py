"""Unit tests of the parsers of SLURM's output, on output captured from the real SLURM 22.05
of the local test cluster (see `tests/data/README.md`).
"""

import os
import textwrap
from datetime import datetime

import pytest
from conftest import (
    COMMENTS,
    STATES,
    data,
)

from stepup.queue.slurm.parsers import (
    UnreadableOutputError,
    array_tasks,
    last_run,
    parse_array_states,
    parse_elapsed,
    parse_job_records,
    parse_job_runs,
    parse_max_array_size,
    parse_scontrol,
    parse_squeue,
    parse_time,
    parse_time_limit,
)
from stepup.queue.slurm.queries import ACCOUNT_FIELDS

RUNS = data("sacct_requeued_runs.txt")


STATES_AFTER_SCANCEL = STATES | {8: "CANCELLED", 9: "CANCELLED"}


# parse_squeue


@pytest.mark.parametrize("name", ["squeue_me.txt", "squeue_me_localcluster.txt"])
def test_parse_squeue_captured(name):
    listing = parse_squeue(data(name))
    assert listing.states == STATES
    assert listing.comments == COMMENTS


@pytest.mark.parametrize("name", ["squeue_me_after_scancel.txt", "squeue_me_localcluster_no_h.txt"])
def test_parse_squeue_captured_after_scancel(name):
    # The second file starts with "CLUSTER: localcluster" and "JOBID|STATE|COMMENT".
    listing = parse_squeue(data(name))
    assert listing.states == STATES_AFTER_SCANCEL
    assert listing.comments == COMMENTS


def test_parse_squeue_reasons_and_workdirs_captured():
    listing = parse_squeue(data("squeue_me_reasons.txt"))
    assert listing.states == {10833: "PENDING", 10834: "RUNNING"}
    assert listing.comments == {10833: "stepup-queue-00112233aabbccdd"}
    assert listing.reasons == {10833: "JobHeldUser"}
    assert listing.workdirs == {10833: "/tmp/cap/a", 10834: "/tmp/cap/b"}


def test_parse_squeue_bars_in_comment_and_workdir():
    listing = parse_squeue("5|PENDING|a|b|Priority|/x|y\n")
    assert listing.comments == {5: "a|b"}
    assert listing.reasons == {5: "Priority"}
    assert listing.workdirs == {5: "/x|y"}


def test_parse_squeue_skips_what_is_not_a_plain_job():
    lines = [
        "CLUSTER: other",
        "",
        "JOBID|STATE|COMMENT",
        "12_3|PENDING|(null)",
        "12_[4-9%2]|PENDING|(null)",
        "17|RUNNING|with|bars",
        "  18|COMPLETING|  ",
        "19|PENDING|",
    ]
    listing = parse_squeue("\n".join(lines) + "\n")
    assert listing.states == {17: "RUNNING", 18: "COMPLETING", 19: "PENDING"}
    assert listing.comments == {17: "with|bars"}


GARBLED = ["16|RUNNING", "20+x|PENDING|", "squeue: warning: x", "1|", "|PENDING|", "x1|RUNNING|"]


@pytest.mark.parametrize("line", GARBLED)
def test_parse_squeue_garbled_line(line):
    """A line that cannot be read may hide a job: the whole answer is unreadable."""
    with pytest.raises(UnreadableOutputError, match="cannot read"):
        parse_squeue(f"5|RUNNING|tok\n{line}\n")


@pytest.mark.parametrize("line", ["20+x|PENDING|", "squeue: warning: x", "|PENDING|", "16"])
def test_parse_job_records_garbled_line(line):
    with pytest.raises(UnreadableOutputError, match="cannot read"):
        parse_job_records(f"5|RUNNING|2026-11-26T10:00:00||/x\n{line}\n")


def test_parse_scontrol_garbled():
    with pytest.raises(UnreadableOutputError, match="cannot read"):
        parse_scontrol("slurm_load_jobs error: x\nJobId=5 JobName=a\n   JobState=RUNNING\n")
    with pytest.raises(UnreadableOutputError, match="cannot read"):
        parse_scontrol("JobId=5 JobName=a\n   Jobstate=RUNNING\n")


def test_parse_squeue_heterogeneous_job():
    """Captured for `sbatch --hold -n1 : -n1 het.sh` (job 6666), then with made-up states."""
    listing = parse_squeue("6666+1|PENDING|(null)\n6666+0|PENDING|(null)\n")
    assert listing == ({6666: "PENDING"}, {}, {}, {}, {})
    # One component that has not ended keeps the job alive, in either order.
    for lines in ["7+0|COMPLETED|\n7+1|RUNNING|\n", "7+0|RUNNING|\n7+1|COMPLETED|\n"]:
        assert parse_squeue(lines)[0] == {7: "RUNNING"}
    assert parse_squeue("7+0|COMPLETED|\n7+1|FAILED|\n")[0] == {7: "FAILED"}


def test_parse_squeue_empty():
    assert parse_squeue("") == ({}, {}, {}, {}, {})


# parse_scontrol


@pytest.mark.parametrize("name", ["scontrol_show_job.txt", "scontrol_show_job_oneline.txt"])
def test_parse_scontrol_captured(name):
    listing = parse_scontrol(data(name))
    assert listing.states == STATES
    assert listing.comments == COMMENTS


def test_parse_scontrol_captured_with_cluster_after_scancel():
    listing = parse_scontrol(data("scontrol_show_job_cluster_after_scancel.txt"))
    assert listing.states == STATES_AFTER_SCANCEL
    assert listing.comments == COMMENTS


def test_parse_scontrol_agrees_with_parse_squeue():
    listing = parse_scontrol(data("scontrol_show_job.txt"))
    assert listing[:2] == parse_squeue(data("squeue_me.txt"))[:2]


def test_parse_scontrol_other_fields_are_not_taken_for_comment_or_state():
    text = (
        "JobId=21 JobName=x AdminComment=admin SystemComment=sys JobState=RUNNING Reason=None\n"
        "JobId=22 JobName=y\n   JobState=PENDING Reason=JobHeldUser\n   Comment=tok \n"
    )
    listing = parse_scontrol(text)
    assert listing.states == {21: "RUNNING", 22: "PENDING"}
    assert listing.comments == {22: "tok"}
    assert listing.reasons == {22: "JobHeldUser"}


def test_parse_scontrol_leaves_out_other_users():
    me = os.getuid()
    text = (
        f"JobId=21 UserId=me({me}) GroupId=g(1) JobState=RUNNING\n"
        f"JobId=22 UserId=other({me + 1}) GroupId=g(1) JobState=PENDING\n"
    )
    assert parse_scontrol(text).states == {21: "RUNNING"}


@pytest.mark.parametrize("text", ["", "No jobs in the system\n"])
def test_parse_scontrol_no_jobs(text):
    # What `scontrol show job` prints (exit code 0) when slurmctld has no jobs in memory.
    assert parse_scontrol(text) == ({}, {}, {}, {}, {})


# parse_sacct


def test_parse_job_records_captured():
    jobs = parse_job_records(data("sacct_jobs.txt"), ("JobIDRaw", "State", "Comment"))
    # "CANCELLED by 0" becomes CANCELLED; this cluster did not store comments in the database.
    assert {job_id: record["State"] for job_id, record in jobs.items()} == {
        1: "COMPLETED",
        2: "COMPLETED",
        3: "COMPLETED",
        4: "COMPLETED",
        5: "COMPLETED",
        6: "COMPLETED",
        7: "FAILED",
        8: "CANCELLED",
    }
    assert {record["Comment"] for record in jobs.values()} == {""}


def test_parse_job_records_captured_submissions():
    jobs = parse_job_records(data("sacct_submissions.txt"))
    assert jobs[21342] == {
        "State": "COMPLETED",
        "Submit": "2026-11-25T09:57:48",
        "Comment": "stepup-queue-00112233445566ff",
        "WorkDir": "/tmp/capture2/folder a",
    }
    assert jobs[21343]["Comment"] == ""
    assert jobs[21345]["State"] == "CANCELLED"
    assert jobs[21345]["WorkDir"] == "/tmp/capture2/folder b"


def test_parse_job_records_last_field_takes_the_rest():
    text = textwrap.dedent(
        """\
        31|CANCELLED by 1000|stepup-queue-0123456789abcdef
        32|COMPLETED|has|bars
        33|TIMEOUT
        34||
        35_1|COMPLETED|x
        35.batch|COMPLETED|x
        JobIDRaw|State|Comment
        """
    )
    assert parse_job_records(text, ("JobIDRaw", "State", "Comment")) == {
        31: {"State": "CANCELLED", "Comment": "stepup-queue-0123456789abcdef"},
        32: {"State": "COMPLETED", "Comment": "has|bars"},
        33: {"State": "TIMEOUT", "Comment": ""},
        34: {"State": "UNKNOWN", "Comment": ""},
    }


def test_last_run_of_a_requeued_job_keeps_the_first_submit_time():
    """Captured from `sacct -X -D` after `scontrol requeue` of a running job: each run has a
    record, the requeue resets the submit time. Job 12 reuses the id of a job of 2020."""
    runs = parse_job_runs(RUNS, ACCOUNT_FIELDS)
    requeued = last_run(runs[307])
    assert requeued["State"] == "RUNNING"
    assert requeued["Submit"] == "2026-12-02T18:24:38"
    assert requeued["FirstSubmit"] == "2026-12-02T18:24:35"
    reused = last_run(runs[12])
    assert reused["FirstSubmit"] == reused["Submit"] == "2026-12-02T18:00:00"
    assert parse_job_records(RUNS, ACCOUNT_FIELDS)[307]["State"] == "RUNNING"


# Array tasks (sbatch_array)


def test_array_tasks():
    assert array_tasks("12_3") == (12, [3])
    assert array_tasks("12_[1-3%1]") == (12, [1, 2, 3])
    assert array_tasks("12_[0,4-5]") == (12, [0, 4, 5])
    for field in ("12", "12_3.batch", "12+1", "JOBID", "12_[x]"):
        assert array_tasks(field) is None


def test_parse_squeue_array():
    listing = parse_squeue(data("squeue_array.txt"))
    assert listing.tasks == {
        (12359, 0): "RUNNING",
        (12359, 1): "PENDING",
        (12359, 2): "PENDING",
        (12359, 3): "PENDING",
    }
    assert listing.states == {}
    assert listing.comments == {12359: "stepup-queue-0123456789abcdef"}
    assert listing.workdirs == {12359: "/tmp/arrcap2"}
    assert listing.reasons == {12359: "JobArrayTaskLimit"}
    # Every task counts against a submit limit.
    assert listing.queued() == 4
    ended = parse_squeue(data("squeue_array_ended.txt"))
    assert ended.tasks == {(11035, 0): "COMPLETED", (11035, 1): "FAILED", (11035, 2): "FAILED"}
    assert ended.queued() == 0


@pytest.mark.parametrize(
    "name", ["scontrol_show_job_array.txt", "scontrol_show_job_array_oneline.txt"]
)
def test_parse_scontrol_array(name):
    listing = parse_scontrol(data(name))
    assert listing.tasks == parse_squeue(data("squeue_array.txt")).tasks
    assert listing.reasons == {12359: "JobArrayTaskLimit"}
    assert listing.states == {}
    assert listing.comments == {12359: "stepup-queue-0123456789abcdef"}
    assert listing.workdirs == {12359: "/tmp/arrcap2"}


def test_parse_array_states():
    states = parse_array_states(data("sacct_array_cancelled.txt"))
    assert states == {(12359, index): "CANCELLED" for index in range(4)}
    assert parse_array_states("7|COMPLETED\n") == {}
    with pytest.raises(UnreadableOutputError):
        parse_array_states("12_3\n")


def test_parse_max_array_size():
    assert parse_max_array_size(data("scontrol_show_config.txt")) == 1001
    assert parse_max_array_size("MaxArraySize            = 8\n") == 8
    assert parse_max_array_size("") is None


# parse_time, parse_time_limit, parse_elapsed


@pytest.mark.parametrize(
    ("text", "time"),
    [
        ("2026-12-07T21:39:10", datetime(2026, 12, 7, 21, 39, 10)),
        # sacct's Start of a job that never started, End of one that has not ended.
        ("None", None),
        ("Unknown", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_time(text, time):
    assert parse_time(text) == time


def test_last_run_sorts_a_run_without_submit_time_first():
    runs = [
        {"Submit": "2026-12-02T18:24:38", "End": "Unknown", "WorkDir": "/w"},
        {"Submit": "Unknown", "End": "Unknown", "WorkDir": "/w"},
    ]
    assert last_run(runs)["Submit"] == "2026-12-02T18:24:38"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # The forms of sbatch --time (man sbatch): a bare number is minutes, after days-
        # the first number is hours.
        ("5", 300),
        ("5:30", 330),
        ("1:02:03", 3723),
        ("2-03", 2 * 86400 + 3 * 3600),
        ("2-03:04", 2 * 86400 + 3 * 3600 + 4 * 60),
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
        # As scontrol (TimeLimit, MaxTime) and sacct (Timelimit) print limits.
        ("00:01:00", 60),
        ("00:02:00", 120),
        ("1-00:00:00", 86400),
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("Partition_Limit", None),
        ("NONE", None),
        ("", None),
    ],
)
def test_parse_time_limit(text, seconds):
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize("text", ["INVALID", "00:01.234", "N/A", "1:2:3:4", "-1", "5 min"])
def test_parse_time_limit_unreadable(text):
    with pytest.raises(UnreadableOutputError):
        parse_time_limit(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        # Elapsed, [DD-[HH:]]MM:SS (man sacct), as captured in tests/data/sacct_usage.txt.
        ("00:00:21", 21.0),
        ("00:01:24", 84.0),
        ("1-00:00:00", 86400.0),
        ("1-02:03:04", 93784.0),
        ("1:02:03", 3723.0),
        # TotalCPU: minutes and seconds with milliseconds below an hour.
        ("00:08.766", 8.766),
        ("00:01.234", 1.234),
        ("5:30", 330.0),
        ("12:34", 754.0),
        # A RAW field (ElapsedRaw) is bare seconds, not minutes as in --time.
        ("5", 5.0),
        ("INVALID", None),
        ("", None),
    ],
)
def test_parse_elapsed(text, seconds):
    assert parse_elapsed(text) == seconds


@pytest.mark.parametrize("text", ["UNLIMITED", "Partition_Limit", "2-03", "2-03:04", "1:2:3:4"])
def test_parse_elapsed_unreadable(text):
    with pytest.raises(UnreadableOutputError):
        parse_elapsed(text)


def test_parsed_limits_and_elapsed_of_captured_sacct():
    """Every Elapsed, TotalCPU and Timelimit of the captured sacct output is read."""
    fields = ("JobIDRaw", "State", "ExitCode", "Submit", "Start", "End", "Elapsed", "TotalCPU")
    fields += ("AllocCPUS", "ReqMem", "MaxRSS", "Timelimit", "NNodes", "User", "WorkDir")
    for line in data("sacct_usage.txt").splitlines():
        record = dict(zip(fields, line.split("|"), strict=True))
        assert parse_elapsed(record["Elapsed"]) is not None
        assert parse_elapsed(record["TotalCPU"]) is not None
        parse_time_limit(record["Timelimit"])

"""Unit tests of the job log `slurmjob.log` (format version 2)."""

from datetime import datetime

import pytest
from path import Path

from stepup.queue.joblog import (
    FORMAT_LINE,
    JobLogError,
    append_record,
    find_logs,
    parse_submitted,
    parse_submitted_task,
    read_log,
    record_submitted,
    start_log,
)
from stepup.queue.states import FINAL_STATES

DATA = Path(__file__).parent / "data"
DIGEST = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
TOKEN = "stepup-queue-0123456789abcdef"


def write_log(tmp_path, *lines: str) -> Path:
    path = Path(tmp_path) / "slurmjob.log"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def check_error(excinfo: pytest.ExceptionInfo, path: Path, lineno: int, *parts: str):
    """The message names the file, the line, the problem and how to recover."""
    message = str(excinfo.value)
    assert f"Invalid job log {path} (line {lineno})" in message
    for part in parts:
        assert part in message
    assert "remove the file by hand" in message


# parse_submitted


def test_parse_submitted_captured_sbatch_output():
    # What `sbatch --parsable` printed on the local cluster, without and with -M.
    lines = (DATA / "sbatch_parsable.txt").read_text().splitlines()
    assert parse_submitted(lines[0]) == (4, None)
    assert parse_submitted(lines[1]) == (5, "localcluster")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123", (123, None)),
        ("123\n", (123, None)),
        ("  77;cluster-a.b_c \n", (77, "cluster-a.b_c")),
    ],
)
def test_parse_submitted_valid(text, expected):
    assert parse_submitted(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "abc", "12;", ";cluster", "12;a;b", "12 34", "Submitted batch job 12", "-5", "1.5"],
)
def test_parse_submitted_invalid(text):
    with pytest.raises(ValueError, match="Expected 'ID' or 'ID;CLUSTER'"):
        parse_submitted(text)


# read_log: valid logs


def test_read_log_stepup_queue_102_format(tmp_path):
    # Exactly as StepUp Queue 1.0.2 wrote it: datetime.now().isoformat(), which drops the
    # microseconds when they happen to be zero.
    path = write_log(
        tmp_path,
        "StepUp Queue sbatch wait log format version 2",
        DIGEST,
        "2025-03-04T10:01:02.345678 Submitted 123",
        "2025-03-04T10:01:33 PENDING",
        "2025-03-04T10:02:03.000001 RUNNING",
        "2025-03-04T10:05:01.543210 COMPLETED",
    )
    joblog = read_log(path)
    assert joblog.path == path
    assert joblog.digest == DIGEST
    assert joblog.token is None
    assert joblog.submitting_time is None
    assert joblog.job_id == 123
    assert joblog.cluster is None
    assert joblog.submitted_time == datetime(2025, 3, 4, 10, 1, 2, 345678)
    assert joblog.states == [
        (datetime(2025, 3, 4, 10, 1, 33), "PENDING"),
        (datetime(2025, 3, 4, 10, 2, 3, 1), "RUNNING"),
        (datetime(2025, 3, 4, 10, 5, 1, 543210), "COMPLETED"),
    ]
    assert joblog.last_state == "COMPLETED"
    assert joblog.done


def test_read_log_stepup_queue_102_with_cluster_still_running(tmp_path):
    path = write_log(
        tmp_path,
        FORMAT_LINE,
        DIGEST,
        "2025-03-04T10:01:02.345678 Submitted 123;cluster",
        "2025-03-04T10:01:33.100000 RUNNING",
    )
    joblog = read_log(path)
    assert joblog.job_id == 123
    assert joblog.cluster == "cluster"
    assert joblog.last_state == "RUNNING"
    assert not joblog.done


def test_read_log_stepup_queue_102_killed_before_submission(tmp_path):
    # 1.0.2 wrote the first two lines before running sbatch.
    joblog = read_log(write_log(tmp_path, FORMAT_LINE, DIGEST))
    assert joblog.digest == DIGEST
    assert joblog.job_id is None
    assert joblog.token is None
    assert joblog.states == []
    assert joblog.last_state is None
    assert not joblog.done


def test_read_log_submitting_without_submitted(tmp_path):
    joblog = read_log(
        write_log(tmp_path, FORMAT_LINE, DIGEST, f"2026-11-25T10:01:02.123456 Submitting {TOKEN}")
    )
    assert joblog.token == TOKEN
    assert joblog.submitting_time == datetime(2026, 11, 25, 10, 1, 2, 123456)
    assert joblog.job_id is None
    assert joblog.submitted_time is None


def test_read_log_every_final_state_is_done(tmp_path):
    for state in sorted(FINAL_STATES):
        joblog = read_log(
            write_log(
                tmp_path,
                FORMAT_LINE,
                DIGEST,
                "2026-11-25T10:01:02.345678 Submitted 1",
                f"2026-11-25T10:01:03.345678 {state}",
            )
        )
        assert joblog.done, state
    not_final = ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "SUSPENDED"]
    for state in [*not_final, "SPECIAL_EXIT", "REQUEUE_HOLD"]:
        joblog = read_log(
            write_log(
                tmp_path,
                FORMAT_LINE,
                DIGEST,
                "2026-11-25T10:01:02.345678 Submitted 1",
                f"2026-11-25T10:01:03.345678 {state}",
            )
        )
        assert not joblog.done, state


# read_log: invalid logs


def test_read_log_empty_file(tmp_path):
    path = write_log(tmp_path)
    with pytest.raises(JobLogError) as excinfo:
        read_log(path)
    check_error(excinfo, path, 1, repr(FORMAT_LINE), "found an empty file")


def test_read_log_wrong_first_line(tmp_path):
    path = write_log(tmp_path, "StepUp Queue sbatch wait log format version 1", DIGEST)
    with pytest.raises(JobLogError) as excinfo:
        read_log(path)
    check_error(
        excinfo,
        path,
        1,
        f"the first line must be {FORMAT_LINE!r}",
        "found 'StepUp Queue sbatch wait log format version 1'",
    )


def test_read_log_not_utf8(tmp_path):
    path = Path(tmp_path) / "slurmjob.log"
    path.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(JobLogError) as excinfo:
        read_log(path)
    check_error(excinfo, path, 1, "not UTF-8")


@pytest.mark.parametrize("second", [None, "", "   ", "two words"])
def test_read_log_missing_digest_line(tmp_path, second):
    path = (
        write_log(tmp_path, FORMAT_LINE)
        if second is None
        else write_log(tmp_path, FORMAT_LINE, second)
    )
    with pytest.raises(JobLogError) as excinfo:
        read_log(path)
    check_error(excinfo, path, 2, "the second line must hold the input digest")


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("garbage", "no valid date and time at the start of 'garbage'"),
        ("", "no valid date and time at the start of ''"),
        ("2026-13-45T10:01:02 Submitted 1", "no valid date and time"),
        ("2026-11-25T10:01:02.345678 hello world", "cannot understand the record 'hello world'"),
        ("2026-11-25T10:01:02.345678", "cannot understand the record ''"),
        ("2026-11-25T10:01:02.345678 Submitting nonsense", "cannot understand the record"),
        ("2026-11-25T10:01:02.345678 RUNNING", "cannot understand the record 'RUNNING'"),
        ("2026-11-25T10:01:02.345678 running", "cannot understand the record 'running'"),
    ],
)
def test_read_log_unparsable_record(tmp_path, record, problem):
    path = write_log(tmp_path, FORMAT_LINE, DIGEST, record)
    with pytest.raises(JobLogError) as excinfo:
        read_log(path)
    check_error(excinfo, path, 3, problem)


@pytest.mark.parametrize("submitted", ["", "abc", "12;", "12;a;b", "12 34", "12;clu ster"])
def test_read_log_bad_submitted_record(tmp_path, submitted):
    path = write_log(
        tmp_path,
        FORMAT_LINE,
        DIGEST,
        f"2026-11-25T10:01:02.123456 Submitting {TOKEN}",
        f"2026-11-25T10:01:02.345678 Submitted {submitted}",
    )
    with pytest.raises(JobLogError) as excinfo:
        read_log(path)
    check_error(excinfo, path, 4, "Expected 'ID' or 'ID;CLUSTER'")


def test_read_log_second_submitted_record(tmp_path):
    path = write_log(
        tmp_path,
        FORMAT_LINE,
        DIGEST,
        "2026-11-25T10:01:02.345678 Submitted 12",
        "2026-11-25T10:01:03.345678 RUNNING",
        "2026-11-25T10:01:04.345678 Submitted 13",
    )
    with pytest.raises(JobLogError) as excinfo:
        read_log(path)
    check_error(excinfo, path, 5, "a second Submitted record")


# writing


def test_round_trip(tmp_path):
    path = Path(tmp_path) / "slurmjob.log"
    start_log(path, DIGEST)
    t_submitting = append_record(path, f"Submitting {TOKEN}")
    t_submitted = append_record(path, "Submitted 42;localcluster")
    t_running = append_record(path, "RUNNING")
    t_completed = append_record(path, "COMPLETED")
    assert t_submitting <= t_submitted <= t_running <= t_completed

    lines = path.read_text().splitlines()
    assert lines[:2] == [FORMAT_LINE, DIGEST]
    assert lines[2] == f"{t_submitting.isoformat(timespec='microseconds')} Submitting {TOKEN}"
    assert len(lines) == 6

    joblog = read_log(path)
    assert joblog.digest == DIGEST
    assert joblog.token == TOKEN
    assert joblog.submitting_time == t_submitting
    assert joblog.job_id == 42
    assert joblog.cluster == "localcluster"
    assert joblog.submitted_time == t_submitted
    assert joblog.states == [(t_running, "RUNNING"), (t_completed, "COMPLETED")]
    assert joblog.done


def test_record_submitted_drops_submitting_records(tmp_path):
    """Once the job id is known, the log is in the format of 1.0.2, which the originals read."""
    path = Path(tmp_path) / "slurmjob.log"
    start_log(path, DIGEST)
    append_record(path, "Submitting")
    append_record(path, f"Submitting {TOKEN}")
    t_submitted = record_submitted(path, "42;localcluster")
    assert path.read_text() == (
        f"{FORMAT_LINE}\n{DIGEST}\n"
        f"{t_submitted.isoformat(timespec='microseconds')} Submitted 42;localcluster\n"
    )
    assert list(Path(tmp_path).iterdir()) == [path]
    joblog = read_log(path)
    assert (joblog.token, joblog.submitting_time) == (None, None)
    assert (joblog.job_id, joblog.cluster, joblog.submitted_time) == (
        42,
        "localcluster",
        t_submitted,
    )


def test_read_bare_submitting_record_of_the_original_2x(tmp_path):
    path = write_log(tmp_path, FORMAT_LINE, DIGEST, "2026-11-25T10:01:02.123456 Submitting")
    joblog = read_log(path)
    assert joblog.token is None
    assert joblog.submitting_time == datetime(2026, 11, 25, 10, 1, 2, 123456)
    assert joblog.job_id is None


def test_start_log_replaces_existing_log(tmp_path):
    path = write_log(tmp_path, FORMAT_LINE, "olddigest", "2026-11-25T10:01:02.345678 Submitted 1")
    start_log(path, DIGEST)
    assert path.read_text() == f"{FORMAT_LINE}\n{DIGEST}\n"
    joblog = read_log(path)
    assert joblog.digest == DIGEST
    assert joblog.job_id is None


def test_append_record_time_stamp_always_has_microseconds(tmp_path):
    path = Path(tmp_path) / "slurmjob.log"
    start_log(path, DIGEST)
    for _ in range(20):
        append_record(path, "Submitted 1" if _ == 0 else "RUNNING")
    for line in path.read_text().splitlines()[2:]:
        stamp = line.split()[0]
        assert len(stamp) == 26, stamp


# find_logs


def test_find_logs(tmp_path):
    root = Path(tmp_path) / "root"
    for folder in ["", "b", "a", "a/z", "a/b", ".hidden", "a/.stepup", "c"]:
        (root / folder).makedirs_p()
    for folder in ["", "b", "a/z", "a/b", ".hidden", "a/.stepup"]:
        (root / folder / "slurmjob.log").write_text("")
    (root / "c" / "slurmjob.out").write_text("")
    (root / "c" / "other.log").write_text("")
    found = list(find_logs(root))
    assert found == [
        root / "slurmjob.log",
        root / "a" / "b" / "slurmjob.log",
        root / "a" / "z" / "slurmjob.log",
        root / "b" / "slurmjob.log",
    ]
    assert all(isinstance(path, Path) for path in found)


def test_find_logs_accepts_str_and_empty_folder(tmp_path):
    assert list(find_logs(str(tmp_path))) == []


def test_read_log_array_task(tmp_path):
    """The log of an sbatch_array() folder records its task: `Submitted ID_N` (`;CLUSTER`)."""
    for submitted, cluster in ("1234_7", None), ("1234_7;localcluster", "localcluster"):
        path = write_log(
            tmp_path,
            FORMAT_LINE,
            DIGEST,
            f"2026-11-25T10:01:02.345678 Submitted {submitted}",
            "2026-11-25T10:01:33.012345 COMPLETED",
        )
        log = read_log(path)
        assert (log.job_id, log.task, log.cluster) == (1234, 7, cluster)
        assert log.job_name == "1234_7"
        assert log.done
    single = read_log(write_log(tmp_path, FORMAT_LINE, DIGEST, "2026-11-25T10:01:02 Submitted 5"))
    assert (single.task, single.job_name) == (None, "5")


def test_parse_submitted_task():
    assert parse_submitted_task("12_3") == (12, 3, None)
    assert parse_submitted_task("12_3;c") == (12, 3, "c")
    assert parse_submitted_task("12") == (12, None, None)
    # sbatch never prints a task: a single job's submission is ID or ID;CLUSTER.
    with pytest.raises(ValueError, match="Expected 'ID' or 'ID;CLUSTER'"):
        parse_submitted("12_3")
    for text in ("12_", "_3", "12_3_4"):
        with pytest.raises(ValueError, match="of an array task: 'ID_N'"):
            parse_submitted_task(text)

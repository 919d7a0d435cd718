"""Unit tests of the SLURM parsers, the cache file format and the shared state cache.

The parsers are fed with output captured from the real SLURM 22.05 of the local test cluster,
see `tests/data/README.md`.
"""

import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from datetime import datetime, timedelta

import pytest
from conftest import fake_command, lock_free, scontrol_state, submit_as_nobody, wait_for
from path import Path

from stepup.queue.config import Config, ConfigError, QueryMethod
from stepup.queue.scheduler import (
    ACCOUNT_FIELDS,
    CLOCK_SLACK,
    KILL_GRACE,
    CommandResult,
    StateCache,
    UnreadableOutputError,
    cancel,
    environment_after_rc,
    find_by_token,
    format_cache,
    is_transient,
    last_run,
    match_submission,
    parse_cache,
    parse_sacct,
    parse_sacct_runs,
    parse_scontrol,
    parse_squeue,
    query_jobs,
    run_command,
    sacct_records,
    squeue_command,
    stranger,
    submit,
)

DATA = Path(__file__).parent / "data"

# What SLURM knew when squeue_me.txt, scontrol_show_job*.txt were captured.
STATES = {
    3: "COMPLETED",
    4: "COMPLETED",
    5: "COMPLETED",
    6: "COMPLETED",
    7: "FAILED",
    8: "RUNNING",
    9: "PENDING",
}
COMMENTS = {
    3: "stepup-queue-ef2c3f0461ab784a",
    6: "stepup-queue-0123456789abcdef",
    8: "stepup-queue-fedcba9876543210",
}
STATES_AFTER_SCANCEL = STATES | {8: "CANCELLED", 9: "CANCELLED"}


def sacct_state(job_id: int) -> str | None:
    """One job's state in the accounting database, `None` when sacct does not know it."""
    record = (sacct_records([job_id], None, 20) or {}).get(job_id)
    return None if record is None else record["State"]


def data(name: str) -> str:
    return (DATA / name).read_text()


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
def test_parse_sacct_garbled_line(line):
    with pytest.raises(UnreadableOutputError, match="cannot read"):
        parse_sacct(f"5|RUNNING|2026-11-26T10:00:00||/x\n{line}\n")


def test_parse_scontrol_garbled():
    with pytest.raises(UnreadableOutputError, match="cannot read"):
        parse_scontrol("slurm_load_jobs error: x\nJobId=5 JobName=a\n   JobState=RUNNING\n")
    with pytest.raises(UnreadableOutputError, match="cannot read"):
        parse_scontrol("JobId=5 JobName=a\n   Jobstate=RUNNING\n")


def test_parse_squeue_heterogeneous_job():
    """Captured for `sbatch --hold -n1 : -n1 het.sh` (job 6666), then with made-up states."""
    listing = parse_squeue("6666+1|PENDING|(null)\n6666+0|PENDING|(null)\n")
    assert listing == ({6666: "PENDING"}, {}, {}, {})
    # One component that has not ended keeps the job alive, in either order.
    for lines in ["7+0|COMPLETED|\n7+1|RUNNING|\n", "7+0|RUNNING|\n7+1|COMPLETED|\n"]:
        assert parse_squeue(lines)[0] == {7: "RUNNING"}
    assert parse_squeue("7+0|COMPLETED|\n7+1|FAILED|\n")[0] == {7: "FAILED"}


def test_parse_squeue_empty():
    assert parse_squeue("") == ({}, {}, {}, {})


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
    assert parse_scontrol(text) == ({}, {}, {}, {})


# parse_sacct


def test_parse_sacct_captured():
    jobs = parse_sacct(data("sacct_jobs.txt"), ("JobIDRaw", "State", "Comment"))
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


def test_parse_sacct_captured_submissions():
    jobs = parse_sacct(data("sacct_submissions.txt"))
    assert jobs[21342] == {
        "State": "COMPLETED",
        "Submit": "2026-11-25T09:57:48",
        "Comment": "stepup-queue-00112233445566ff",
        "WorkDir": "/tmp/capture2/folder a",
    }
    assert jobs[21343]["Comment"] == ""
    assert jobs[21345]["State"] == "CANCELLED"
    assert jobs[21345]["WorkDir"] == "/tmp/capture2/folder b"


def test_parse_sacct_last_field_takes_the_rest():
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
    assert parse_sacct(text, ("JobIDRaw", "State", "Comment")) == {
        31: {"State": "CANCELLED", "Comment": "stepup-queue-0123456789abcdef"},
        32: {"State": "COMPLETED", "Comment": "has|bars"},
        33: {"State": "TIMEOUT", "Comment": ""},
        34: {"State": "UNKNOWN", "Comment": ""},
    }


# match_submission: which job an interrupted submission made


def test_match_submission_by_token():
    jobs = parse_sacct(data("sacct_submissions.txt"))
    since = datetime(2026, 11, 25, 9, 57, 48)
    token = "stepup-queue-00112233445566ff"
    # The token wins over jobs without comment from the same folder.
    assert match_submission(jobs, token, "/tmp/capture2/folder a", since) == [21342]


def test_match_submission_without_comments_by_folder_and_time():
    """Accounting without comments: the job from this folder, submitted after the record."""
    jobs = parse_sacct(data("sacct_submissions.txt"))
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


# The cache file format


def test_format_cache():
    text = format_cache(datetime(2026, 11, 25, 10, 1, 2), 0, "1|RUNNING|(null)\n")
    assert text == "v1 datetime=2026-11-25T10:01:02.000000 returncode=+000\n1|RUNNING|(null)\n"


def test_format_cache_has_the_fixed_layout_stepup_queue_102_reads():
    # StepUp Queue 1.0.2 shares sbatch_wait.out and reads fixed columns of the header.
    text = format_cache(datetime(2026, 11, 25, 10, 1, 2, 345678), -9, "")
    header = text[:55]
    assert header.endswith("\n")
    assert header.startswith("v1 datetime=")
    assert datetime.fromisoformat(header[12:38]) == datetime(2026, 11, 25, 10, 1, 2, 345678)
    assert int(header[50:54]) == -9


@pytest.mark.parametrize("returncode", [0, 1, 2, 127, 255, -9, -15, 1000])
def test_cache_round_trip(returncode):
    now = datetime.now()
    output = "8|RUNNING|stepup-queue-fedcba9876543210\n9|PENDING|(null)\n"
    assert parse_cache(format_cache(now, returncode, output)) == (now, returncode, output)


def test_parse_cache_written_by_stepup_queue_102():
    header = "v1 datetime=2025-03-04T10:01:02.345678 returncode=-001\n"
    text = header + data("scontrol_show_job.txt")
    assert parse_cache(text) == (
        datetime(2025, 3, 4, 10, 1, 2, 345678),
        -1,
        data("scontrol_show_job.txt"),
    )


def test_parse_cache_empty_output():
    assert parse_cache("v1 datetime=2026-11-25T10:01:02.000000 returncode=+000\n") == (
        datetime(2026, 11, 25, 10, 1, 2),
        0,
        "",
    )


CORRUPT_CACHES = {
    "empty": "",
    "zero bytes": "\x00" * 200,
    "truncated header": "v1 datetime=2026-11-25T10:0",
    "header without newline": "v1 datetime=2026-11-25T10:01:02.000000 returncode=+000",
    "newer format": "v2 datetime=2026-11-25T10:01:02.000000 returncode=+000\n1|RUNNING|\n",
    "newer v1 header": "v1 datetime=2026-11-25T10:01:02.000000 returncode=+000 host=a\n",
    "short datetime": "v1 datetime=2026-11-25T10:01:02 returncode=+000\n",
    "invalid datetime": "v1 datetime=2026-13-45T10:01:02.000000 returncode=+000\n",
    "no sign": "v1 datetime=2026-11-25T10:01:02.000000 returncode=000\n",
    "output only": "1|RUNNING|(null)\n",
}


@pytest.mark.parametrize("text", CORRUPT_CACHES.values(), ids=CORRUPT_CACHES.keys())
def test_parse_cache_invalid(text):
    assert parse_cache(text) is None


# is_transient


@pytest.mark.parametrize(
    ("name", "transient"),
    [
        ("squeue_no_controller.err", True),
        ("sbatch_no_controller.err", True),
        ("sbatch_bad_partition.err", False),
        ("sbatch_bad_cluster.err", False),
    ],
)
def test_is_transient_captured_errors(name, transient):
    result = CommandResult("sbatch --parsable", 1, "", data(name))
    assert is_transient(result) is transient


@pytest.mark.parametrize(
    ("returncode", "stderr", "transient"),
    [
        (-9, "timed out after 60 s", True),
        (-9, "", True),
        (1, "sbatch: error: Batch job submission failed: Socket timed out on send/recv", True),
        (1, "slurm_load_jobs error: Connection refused", True),
        (1, "squeue: error: Problem talking to database", True),
        (1, "sbatch: error: Batch job submission failed: Resource temporarily unavailable", True),
        (1, "sbatch: error: Batch job submission failed: Invalid account", False),
        (1, "sbatch: error: Batch job submission failed: Requested time limit is invalid", False),
        (127, "command not found: sbatch", False),
    ],
)
def test_is_transient(returncode, stderr, transient):
    assert is_transient(CommandResult("sbatch", returncode, "", stderr)) is transient


# run_command


def test_run_command_output_and_stdin():
    result = run_command(["cat"], timeout=10, stdin="hello\n")
    assert result == CommandResult("cat", 0, "hello\n", "")
    result = run_command("echo out; echo err >&2; exit 4", timeout=10)
    assert result.returncode == 4
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.command == "echo out; echo err >&2; exit 4"
    assert result.describe() == "`echo out; echo err >&2; exit 4` exited with code 4: err"


def test_run_command_quotes_the_command_for_messages():
    result = run_command(["printf", "%s", "a b"], timeout=10)
    assert result.command == "printf %s 'a b'"
    assert result.stdout == "a b"
    assert CommandResult("x", 1, "", "").describe() == "`x` exited with code 1: (nothing printed)"


def test_run_command_timeout():
    start = time.monotonic()
    result = run_command(["sleep", "10"], timeout=0.5)
    assert time.monotonic() - start < 3
    assert result.returncode == -9
    assert result.stderr.endswith("timed out after 0.5 s")
    assert is_transient(result)


def test_run_command_timeout_kills_the_whole_process_group():
    # A child that keeps the output pipe open must not keep run_command waiting.
    start = time.monotonic()
    result = run_command("echo partial; sleep 10 & sleep 10; echo never", timeout=0.5)
    assert time.monotonic() - start < 3
    assert result.returncode == -9
    assert result.stdout == "partial\n"


def test_run_command_timeout_of_a_command_that_ignores_sigterm(tmp_path):
    """A command that ignores SIGTERM and whose child left its process group (setsid) holding
    the output pipe: ending it after its time-out is bounded too.

    A fake command: a SLURM client that does not end on a signal cannot be made on demand.
    """
    pid_file = Path(tmp_path) / "escaped.pid"
    fake = fake_command(
        Path(tmp_path) / "bin",
        "sbatch",
        f"trap '' TERM\necho partial\nsetsid sleep 60 & echo $! > {pid_file}\n"
        "while true; do sleep 0.1; done\n",
    )
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(run_command([fake], timeout=0.5)))
    start = time.monotonic()
    thread.start()
    try:
        thread.join(30)
        assert not thread.is_alive(), "run_command still waits for the killed command"
        assert time.monotonic() - start < 0.5 + 3 * KILL_GRACE + 1
        assert outcome[0].returncode == -9
        assert outcome[0].stderr.endswith("timed out after 0.5 s")
        assert is_transient(outcome[0])
    finally:
        wait_for(pid_file.exists, 10, "the escaped child's pid")
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_run_command_not_found():
    result = run_command(["no-such-command-stepup-queue", "-x"], timeout=10)
    assert result.returncode == 127
    assert result.stderr == "command not found: no-such-command-stepup-queue"
    assert "no-such-command-stepup-queue" in result.describe()
    assert not is_transient(result)
    result = run_command("no-such-command-stepup-queue -x", timeout=10)
    assert result.returncode == 127


def test_environment_after_rc(tmp_path, monkeypatch):
    """What rc exports, with rc's output and folder changes left out; `None` when rc fails."""
    monkeypatch.chdir(tmp_path)
    rc = "echo noise; cd /; export SLURM_CLUSTERS=x\nexport MULTI='a\nb=c'"
    env = environment_after_rc(rc, 10, {"PATH": os.environ["PATH"], "KEEP": "1"})
    assert (env["SLURM_CLUSTERS"], env["MULTI"], env["KEEP"]) == ("x", "a\nb=c", "1")
    assert env["PWD"] == str(tmp_path)
    assert environment_after_rc("false", 10, dict(os.environ)) is None


# Commands, with fake SLURM clients that record how they were called


@pytest.fixture
def fakebin(tmp_path, monkeypatch):
    """A folder first on PATH, with a function to put a script in it."""
    folder = Path(tmp_path) / "bin"
    folder.makedirs_p()
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")

    def add(name: str, body: str) -> Path:
        path = folder / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return path

    return add


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


def test_cancel_at_most_100_per_call(fakebin, tmp_path):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("scancel", f'echo "$*" >> {calls}\n')
    results = cancel(range(250, 0, -1), "c1", timeout=10)
    assert [r.returncode for r in results] == [0, 0, 0]
    lines = calls.read_text().splitlines()
    assert lines == [
        "-M c1 " + " ".join(map(str, range(1, 101))),
        "-M c1 " + " ".join(map(str, range(101, 201))),
        "-M c1 " + " ".join(map(str, range(201, 251))),
    ]
    assert cancel([], None, timeout=10) == []


def test_submit(fakebin, tmp_path):
    calls = Path(tmp_path) / "calls.txt"
    stdin = Path(tmp_path) / "stdin.txt"
    fakebin("sbatch", f'echo "$*" >> {calls}\ncat > {stdin}\necho 77\n')
    token = "stepup-queue-0123456789abcdef"
    result = submit(
        "#!/usr/bin/env bash\ntrue\n", rc=None, token=token, timeout=10, env=dict(os.environ)
    )
    assert result.returncode == 0
    assert result.stdout == "77\n"
    assert calls.read_text() == f"--parsable -o slurmjob.out -e slurmjob.err --comment={token}\n"
    assert stdin.read_text() == "#!/usr/bin/env bash\ntrue\n"


def test_submit_rc(fakebin, tmp_path):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("sbatch", f'echo "$* X=$X" >> {calls}\ncat > /dev/null\necho 78\n')
    token = "stepup-queue-0123456789abcdef"
    # The rc command runs in the same shell, so what it exports reaches sbatch ...
    result = submit("wrapper", rc="export X=1", token=token, timeout=10, env=dict(os.environ))
    assert result.returncode == 0
    assert calls.read_text().endswith(" X=1\n")
    # ... and sbatch does not run when it fails.
    calls.remove()
    result = submit("wrapper", rc="false", token=token, timeout=10, env=dict(os.environ))
    assert result.returncode == 1
    assert not calls.exists()


# Braces keep every command of rc away from the wrapper, also a compound one.
@pytest.mark.parametrize(
    "rc",
    [
        "cat > /dev/null",
        "true; cat > /dev/null",
        "cat > /dev/null; true",
        "cat > /dev/null && true",
    ],
)
def test_submit_rc_does_not_read_the_wrapper(fakebin, tmp_path, rc):
    stdin = Path(tmp_path) / "stdin.txt"
    fakebin("sbatch", f"cat > {stdin}\necho 79\n")
    result = submit(
        "the wrapper\n",
        rc=rc,
        token="stepup-queue-0123456789abcdef",
        timeout=10,
        env=dict(os.environ),
    )
    assert result.returncode == 0
    assert stdin.read_text() == "the wrapper\n"


# StateCache


@pytest.fixture
def logged_squeue(fakebin, tmp_path) -> Path:
    """A squeue first on PATH that logs each call and then runs the real one."""
    real = shutil.which("squeue")
    assert real is not None
    calls = Path(tmp_path) / "squeue_calls.txt"
    calls.write_text("")
    fakebin("squeue", f'echo "$*" >> {calls}\nexec {real} "$@"\n')
    return calls


def check_cache_file(path: Path, since: datetime):
    """The cache file holds a valid v1 header of a query run after `since`."""
    text = path.read_text()
    assert text.startswith("v1 datetime=")
    cached = parse_cache(text)
    assert cached is not None
    assert since <= cached[0] <= datetime.now()
    assert cached[1] == 0
    return cached


def test_state_cache_paths_and_commands(tmp_path):
    folder = Path(tmp_path) / "cache"
    config = Config(cache_dir=folder)
    # The default cluster's file is named once SLURM told its name, see locate().
    assert StateCache(config, None).path is None
    assert StateCache(config, "c1").path == folder / "squeue_me.c1.out"
    assert StateCache(config, "c1").command() == squeue_command("c1")
    config = Config(cache_dir=folder, query=QueryMethod.SCONTROL)
    # The file names StepUp Queue 1.0.2 uses for its scontrol cache of another cluster.
    assert StateCache(config, None).path is None
    assert StateCache(config, "c1").path == folder / "sbatch_wait.c1.out"
    assert StateCache(config, None).command() == ["scontrol", "show", "job"]
    assert StateCache(config, "c1").command() == ["scontrol", "show", "job", "--cluster=c1"]


def test_state_cache_queries_once_within_timeout(slurm, tmp_path, logged_squeue):
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
    cache = StateCache(config, None)
    before = datetime.now()
    first = cache.snapshot()
    second = cache.snapshot()
    assert logged_squeue.read_text() == "--me -t all -h -o %i|%T|%k|%r|%Z\n"
    assert first.ok
    assert second == first
    _, _, output = check_cache_file(cache.path, before)
    assert parse_squeue(output) == first.listing
    # Named after the ClusterName of the local SLURM.
    assert cache.path == Path(tmp_path) / "cache" / "squeue_me.default.localcluster.out"
    assert (cache.path + ".lock").is_file()


def test_state_cache_with_cluster(slurm, tmp_path, logged_squeue):
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
    cache = StateCache(config, "localcluster")
    before = datetime.now()
    snapshot = cache.snapshot()
    cache.snapshot()
    assert logged_squeue.read_text() == "-M localcluster --me -t all -h -o %i|%T|%k|%r|%Z\n"
    assert snapshot.ok
    check_cache_file(Path(tmp_path) / "cache" / "squeue_me.localcluster.out", before)


def test_state_cache_timeout_zero_always_queries(slurm, tmp_path, logged_squeue):
    cache = StateCache(Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=0), None)
    cache.snapshot()
    cache.snapshot()
    assert logged_squeue.read_text().count("\n") == 2


RECOVERED = CORRUPT_CACHES | {
    "stale": format_cache(datetime.now() - timedelta(hours=1), 0, "1|RUNNING|(null)\n"),
    "from the future": format_cache(datetime.now() + timedelta(hours=1), 0, "1|RUNNING|\n"),
}


@pytest.mark.parametrize("text", RECOVERED.values(), ids=RECOVERED.keys())
def test_state_cache_recovers_from_bad_cache_file(slurm, tmp_path, logged_squeue, text):
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=3600)
    cache = StateCache(config, None)
    assert cache.locate() is None
    cache.path.parent.makedirs_p()
    cache.path.write_text(text)
    before = datetime.now()
    snapshot = cache.snapshot()
    assert logged_squeue.read_text().count("\n") == 1
    assert snapshot.ok
    assert 1 not in snapshot.states or snapshot.states[1] != "RUNNING"
    check_cache_file(cache.path, before)
    # The repaired cache is used from now on.
    assert cache.snapshot() == snapshot
    assert logged_squeue.read_text().count("\n") == 1


def submit_held_job(folder: Path) -> tuple[str, int]:
    """Submit a held job tagged with a new token from `folder`; return the token and job id."""
    token = "stepup-queue-" + os.urandom(8).hex()
    result = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--hold",
            f"--comment={token}",
            "-o",
            "/dev/null",
            "--wrap",
            "true",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return token, int(result.stdout)


def test_state_cache_sees_a_real_job(slurm, tmp_path):
    token, job_id = submit_held_job(tmp_path)
    try:
        config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
        snapshot = StateCache(config, None).snapshot()
        assert snapshot.states[job_id] == "PENDING"
        assert snapshot.comments[job_id] == token
        scontrol = Config(cache_dir=config.cache_dir, query=QueryMethod.SCONTROL)
        snapshot = StateCache(scontrol, None).snapshot()
        assert snapshot.states[job_id] == "PENDING"
        assert snapshot.comments[job_id] == token
        assert find_by_token(token, None, datetime.now(), config) == (True, job_id)
        other = "stepup-queue-" + os.urandom(8).hex()
        assert find_by_token(other, None, datetime.now(), config) == (True, None)
    finally:
        subprocess.run(["scancel", str(job_id)], check=True)
    deadline = time.monotonic() + 30
    while sacct_state(job_id) != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sacct_state(job_id) == "CANCELLED"


def test_scontrol_query_lists_own_jobs_only(slurm, tmp_path):
    """With STEPUP_SBATCH_QUERY=scontrol, another user's job is not among the user's jobs.

    `scontrol show job` lists the jobs of all users; they must not count against the user's
    submit limit.
    """
    other = submit_as_nobody(Path(tmp_path) / "nobody", "true")
    _, mine = submit_held_job(tmp_path)
    try:
        config = Config(cache_dir=Path(tmp_path) / "cache", query=QueryMethod.SCONTROL)
        snapshot = StateCache(config, None).snapshot()
        assert snapshot.states[mine] == "PENDING"
        assert other not in snapshot.states
        assert scontrol_state(other) == "PENDING"
    finally:
        subprocess.run(["scancel", str(mine), str(other)], check=True)


def test_garbled_squeue_answer_is_not_sure(slurm, tmp_path, monkeypatch):
    """An squeue answer with a line that cannot be read proves nothing, not even "no job".

    A fake `squeue` runs the real one and garbles its lines (each `|` becomes a space):
    a real squeue does not print garbage on demand.
    """
    token, job_id = submit_held_job(tmp_path)
    bindir = Path(tmp_path) / "bin"
    fake_command(bindir, "squeue", 'out=$(/usr/bin/squeue "$@") || exit\necho "${out//|/ }"\n')
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    try:
        config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
        snapshot = StateCache(config, None).snapshot()
        assert not snapshot.ok
        assert "StepUp Queue cannot read" in snapshot.error
        assert find_by_token(token, None, datetime.now(), config) == (False, None)
        assert query_jobs([job_id], None, 20) is None
    finally:
        subprocess.run(["scancel", str(job_id)], check=True)


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
        assert find_by_token(token, None, since, config) == (True, ids["one"][0])
    finally:
        subprocess.run(["scancel", str(running)], check=True)
    monkeypatch.chdir(Path(tmp_path) / "two")
    with pytest.raises(ValueError, match="several jobs without a comment") as info:
        find_by_token(token, None, since, config)
    assert all(str(i) in str(info.value) for i in ids["two"])
    monkeypatch.chdir(tmp_path)
    assert find_by_token(token, None, since, config) == (True, None)


def test_state_cache_caches_a_failed_query(tmp_path, fakebin):
    calls = Path(tmp_path) / "calls.txt"
    error = data("squeue_no_controller.err")
    fakebin("squeue", f"echo x >> {calls}\ncat {DATA / 'squeue_no_controller.err'} >&2\nexit 1\n")
    cache = StateCache(Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60), None)
    snapshot = cache.snapshot()
    assert not snapshot.ok
    assert snapshot.returncode == 1
    assert snapshot.error == error
    assert snapshot.states == {}
    # Every waiting step backs off instead of asking the struggling controller again.
    assert cache.snapshot() == snapshot
    assert calls.read_text() == "x\n"
    assert cache.path.read_text().splitlines()[0].endswith(" returncode=+001")


def test_state_cache_scontrol(tmp_path, fakebin):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("scontrol", f'echo "$*" >> {calls}\ncat {DATA / "scontrol_show_job.txt"}\n')
    config = Config(cache_dir=Path(tmp_path) / "cache", query=QueryMethod.SCONTROL)
    snapshot = StateCache(config, "localcluster").snapshot()
    assert snapshot.ok
    assert snapshot.states == STATES
    assert snapshot.comments == COMMENTS
    assert calls.read_text() == "show job --cluster=localcluster\n"
    assert (config.cache_dir / "sbatch_wait.localcluster.out").is_file()


def test_state_cache_scontrol_no_jobs(tmp_path, fakebin):
    fakebin("scontrol", 'echo "No jobs in the system"\n')
    config = Config(cache_dir=Path(tmp_path) / "cache", query=QueryMethod.SCONTROL)
    snapshot = StateCache(config, "localcluster").snapshot()
    assert snapshot.ok
    assert snapshot.states == {}


def test_check_writable(tmp_path):
    StateCache(Config(cache_dir=Path(tmp_path) / "a" / "b"), None).check_writable()
    assert os.listdir(Path(tmp_path) / "a" / "b") == []
    blocker = Path(tmp_path) / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as excinfo:
        StateCache(Config(cache_dir=blocker / "cache"), None).check_writable()
    message = str(excinfo.value)
    assert f"Cannot use the shared scheduler cache in {blocker / 'cache'}" in message
    assert "STEPUP_QUEUE_CACHE_DIR" in message


def test_state_cache_two_hundred_processes_query_once(slurm, tmp_path, logged_squeue):
    """200 processes asking at the same moment share one squeue call."""
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(200)
    results = context.Queue()

    def ask():
        barrier.wait()
        results.put(StateCache(config, None).snapshot().ok)

    processes = [context.Process(target=ask) for _ in range(200)]
    for process in processes:
        process.start()
    answers = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
    assert answers == [True] * 200
    assert logged_squeue.read_text() == "--me -t all -h -o %i|%T|%k|%r|%Z\n"


# The user's SLURM settings (input environment variables) do not change what is parsed

USER_SETTINGS = {
    "SQUEUE_NAMES": "other",
    "SQUEUE_PARTITION": "nosuch",
    "SQUEUE_USERS": "nobody",
    "SLURM_TIME_FORMAT": "%a %T",
    "SCANCEL_STATE": "RUNNING",
    "SCONTROL_FUTURE": "1",
}


def cancel_tagged(token: str, env: dict[str, str]):
    """Clean up: cancel the jobs whose comment is `token`, in an environment without settings."""
    listed = subprocess.run(
        ["squeue", "--me", "-h", "-o", "%i|%k"], env=env, capture_output=True, text=True
    ).stdout
    ids = [line.split("|")[0] for line in listed.splitlines() if line.endswith(f"|{token}")]
    if ids:
        subprocess.run(["scancel", *ids], env=env, check=False)


def test_queries_ignore_the_user_slurm_settings(slurm, tmp_path, monkeypatch):
    """squeue, sacct, scontrol and scancel see the same job as without the user's settings."""
    clean = dict(os.environ)
    token = "stepup-queue-" + os.urandom(8).hex()
    job_id = int(
        subprocess.run(
            ["sbatch", "--parsable", "--hold", f"--comment={token}", "-o", "/dev/null"],
            input="#!/bin/sh\ntrue\n",
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    for name, value in USER_SETTINGS.items():
        monkeypatch.setenv(name, value)
    try:
        squeue = run_command(squeue_command(None), timeout=20)
        listing = parse_squeue(squeue.stdout)
        assert (listing.states[job_id], listing.comments[job_id]) == ("PENDING", token)
        wait_for(lambda: sacct_state(job_id) == "PENDING", 60, "sacct to list it")
        args = ["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "JobIDRaw,Submit"]
        submit_time = parse_sacct(run_command(args, timeout=20).stdout, ("JobIDRaw", "Submit"))
        assert abs(datetime.fromisoformat(submit_time[job_id]["Submit"]) - datetime.now()) < (
            timedelta(minutes=2)
        )
        scontrol = run_command(["scontrol", "show", "job", str(job_id)], timeout=20).stdout
        assert re.search(r"\bSubmitTime=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\b", scontrol)
        # scancel -t RUNNING would leave this pending job alone.
        (result,) = cancel([job_id], None, timeout=20)
        assert result.returncode == 0, result.describe()
        assert scontrol_state(job_id) == "CANCELLED"
    finally:
        cancel_tagged(token, clean)


def test_sbatch_keeps_the_user_job_options(slurm, tmp_path, monkeypatch):
    """sbatch gets the user's SBATCH_* job options, but SBATCH_WAIT would make it wait."""
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ) | {"SBATCH_JOB_NAME": "from-user", "SBATCH_WAIT": "1"}
    env |= {"SQUEUE_NAMES": "other", "SLURM_TIME_FORMAT": "relative"}
    token = "stepup-queue-" + os.urandom(8).hex()
    start = time.monotonic()
    try:
        result = submit(
            "#!/bin/bash\n#SBATCH --hold\ntrue\n", rc=None, token=token, timeout=10, env=env
        )
        assert result.returncode == 0, result.describe()
        assert time.monotonic() - start < 5
        name = subprocess.run(
            ["squeue", "-h", "-j", result.stdout.strip(), "-o", "%j"],
            capture_output=True,
            text=True,
        ).stdout
        assert name == "from-user\n"
    finally:
        cancel_tagged(token, dict(os.environ))


def test_sbatch_environment(fakebin, tmp_path):
    """The job inherits the user's variables, also those that StepUp Queue's queries drop."""
    seen = Path(tmp_path) / "env.txt"
    fakebin("sbatch", f"env > {seen}\ncat > /dev/null\necho 80\n")
    env = dict(os.environ) | {"SBATCH_ACCOUNT": "acc", "SBATCH_WAIT": "1"}
    env |= {"SQUEUE_NAMES": "other", "SLURM_TIME_FORMAT": "relative", "SLURM_CONF": "/x.conf"}
    for rc in (None, "true"):
        result = submit("wrapper", rc=rc, token="stepup-queue-0", timeout=10, env=env)
        assert result.returncode == 0
        lines = seen.read_text().splitlines()
        assert "SBATCH_ACCOUNT=acc" in lines
        assert "SQUEUE_NAMES=other" in lines
        assert "SLURM_TIME_FORMAT=relative" in lines
        assert "SLURM_CONF=/x.conf" in lines
        assert not any(line.startswith("SBATCH_WAIT=") for line in lines)


@pytest.mark.parametrize("command", ["squeue", "sacct", "scontrol", "scancel"])
def test_query_environment(fakebin, tmp_path, monkeypatch, command):
    seen = Path(tmp_path) / "env.txt"
    fakebin(command, f"env > {seen}\n")
    for name in ("SQUEUE_NAMES", "SACCT_FEDERATION", "SCONTROL_ALL", "SCANCEL_USER"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("SLURM_CLUSTERS", "other")
    monkeypatch.setenv("SLURM_TIME_FORMAT", "relative")
    monkeypatch.setenv("SLURM_CONF", "/x.conf")
    monkeypatch.setenv("SBATCH_ACCOUNT", "acc")
    assert run_command([command], timeout=10).returncode == 0
    lines = seen.read_text().splitlines()
    assert not any(
        line.startswith(("SQUEUE_", "SACCT_", "SCONTROL_", "SCANCEL_")) for line in lines
    )
    assert not any(line.startswith("SLURM_CLUSTERS=") for line in lines)
    assert "SLURM_TIME_FORMAT=standard" in lines
    assert "SLURM_CONF=/x.conf" in lines
    assert "SBATCH_ACCOUNT=acc" in lines


# rc cannot move sbatch


@pytest.mark.parametrize("rc", ["cd ..", "cd /", "mkdir -p sub && cd sub"])
def test_submit_rc_cannot_change_folder(fakebin, tmp_path, monkeypatch, rc):
    seen = Path(tmp_path) / "pwd.txt"
    fakebin("sbatch", f"pwd > {seen}\ncat > /dev/null\necho 81\n")
    folder = Path(tmp_path) / 'it\'s a "job" $(folder) \\ `x`'
    folder.makedirs_p()
    monkeypatch.chdir(folder)
    result = submit("wrapper", rc=rc, token="stepup-queue-0", timeout=10, env=dict(os.environ))
    assert result.returncode == 0, result.describe()
    assert seen.read_text() == f"{folder}\n"


# The cache file of the default cluster is named after SLURM's ClusterName


@pytest.fixture
def cluster_named(fakebin, tmp_path, monkeypatch):
    """A scontrol that answers `show config` as the local SLURM, with another ClusterName."""
    calls = Path(tmp_path) / "scontrol_calls.txt"
    fakebin(
        "scontrol",
        f"""\
        echo "$*" >> {calls}
        sed "s/^ClusterName .*/ClusterName             = $CLUSTER_NAME/" \\
            {DATA / "scontrol_show_config.txt"}
        """,
    )

    def name(value: str) -> Path:
        # A cluster module puts another installation first on PATH (here an empty folder, so
        # that the same commands run).
        monkeypatch.setenv("PATH", f"{tmp_path}/{value}/bin:{os.environ['PATH']}")
        monkeypatch.setenv("CLUSTER_NAME", value)
        return calls

    return name


def test_state_cache_named_after_the_cluster(slurm, tmp_path, cluster_named):
    """Two SLURM installations (or cluster modules) sharing one cache folder."""
    folder = Path(tmp_path) / "cache"
    config = Config(cache_dir=folder, cache_timeout=60)
    calls = cluster_named("alpha")
    alpha = StateCache(config, None)
    assert alpha.locate() is None
    assert alpha.path == folder / "squeue_me.default.alpha.out"
    alpha.snapshot()
    alpha.snapshot()
    # Asked once, by the first look.
    assert calls.read_text() == "show config\n"
    cluster_named("beta")
    beta = StateCache(config, None)
    before = datetime.now()
    beta.snapshot()
    assert beta.path == folder / "squeue_me.default.beta.out"
    check_cache_file(beta.path, before)
    assert alpha.path.is_file()
    assert parse_cache(alpha.path.read_text())[0] < before
    scontrol = StateCache(Config(cache_dir=folder, query=QueryMethod.SCONTROL), None)
    assert scontrol.locate() is None
    assert scontrol.path == folder / "sbatch_wait.default.beta.out"
    # With -M, the cluster is named already; each installation is asked once per process.
    assert StateCache(config, "alpha").path == folder / "squeue_me.alpha.out"
    assert calls.read_text() == "show config\n" * 2


def test_state_cache_cluster_name_unknown(tmp_path, fakebin):
    """When SLURM cannot name the default cluster, nothing is cached and it is asked again."""
    calls = Path(tmp_path) / "calls.txt"
    fakebin(
        "scontrol",
        f"echo x >> {calls}\ncat {DATA / 'scontrol_show_config_no_controller.err'} >&2\nexit 1\n",
    )
    cache = StateCache(Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60), None)
    snapshot = cache.snapshot()
    assert not snapshot.ok
    assert "Unable to contact slurm controller" in snapshot.error
    assert cache.path is None
    cache.snapshot()
    assert calls.read_text() == "x\nx\n"
    assert not (Path(tmp_path) / "cache").exists()


# The wait for the lock of the cache is bounded


@pytest.fixture
def lock_holder():
    """Hold the lock on a file from another process, as a workflow stopped with Ctrl-Z would."""
    holders = []

    def hold(path: Path):
        holders.append(subprocess.Popen(["flock", path, "sleep", "600"]))
        wait_for(lambda: not lock_free(path), 10, "flock to take the lock")

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


def test_state_cache_lock_held_for_ever(tmp_path, fakebin, lock_holder, capsys):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("squeue", f"echo x >> {calls}\ncat {DATA / 'squeue_me.txt'}\n")
    config = Config(cache_dir=Path(tmp_path) / "cache", command_timeout=1, debug=True)
    cache = StateCache(config, "c1")
    cache.path.parent.makedirs_p()
    lock_holder(cache.path + ".lock")
    answers = []
    thread = threading.Thread(target=lambda: answers.append(cache.snapshot()), daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert 1 <= time.monotonic() - start < 5
    assert answers[0].ok
    assert answers[0].states == STATES
    assert calls.read_text() == "x\n"
    check_cache_file(cache.path, datetime.now() - timedelta(seconds=10))
    assert f"{cache.path}.lock" in capsys.readouterr().out


def test_state_cache_fresh_answer_needs_no_lock(tmp_path, fakebin, lock_holder):
    calls = Path(tmp_path) / "calls.txt"
    fakebin("squeue", f"echo x >> {calls}\ncat {DATA / 'squeue_me.txt'}\n")
    config = Config(cache_dir=Path(tmp_path) / "cache", cache_timeout=60, command_timeout=30)
    cache = StateCache(config, "c1")
    first = cache.snapshot()
    lock_holder(cache.path + ".lock")
    start = time.monotonic()
    assert cache.snapshot() == first
    assert time.monotonic() - start < 1
    assert calls.read_text() == "x\n"


# The runs of a requeued job (sacct -D) and the identity of a logged job.

RUNS = """\
307|REQUEUED|2026-12-02T18:24:35|2026-12-02T18:24:38|root|/tmp/rq
307|RUNNING|2026-12-02T18:24:38|Unknown|root|/tmp/rq
12|COMPLETED|2020-05-01T10:00:00|2020-05-01T10:01:00|root|/tmp/rq
12|PENDING|2026-12-02T18:00:00|Unknown|root|/tmp/rq
"""


def test_last_run_of_a_requeued_job_keeps_the_first_submit_time():
    """Captured from `sacct -X -D` after `scontrol requeue` of a running job: each run has a
    record, the requeue resets the submit time. Job 12 reuses the id of a job of 2020."""
    runs = parse_sacct_runs(RUNS, ACCOUNT_FIELDS)
    requeued = last_run(runs[307])
    assert requeued["State"] == "RUNNING"
    assert requeued["Submit"] == "2026-12-02T18:24:38"
    assert requeued["FirstSubmit"] == "2026-12-02T18:24:35"
    reused = last_run(runs[12])
    assert reused["FirstSubmit"] == reused["Submit"] == "2026-12-02T18:00:00"
    assert parse_sacct(RUNS, ACCOUNT_FIELDS)[307]["State"] == "RUNNING"


def test_stranger():
    folder = "/tmp/rq"
    record = last_run(parse_sacct_runs(RUNS, ACCOUNT_FIELDS)[307])
    logged = datetime(2026, 12, 2, 18, 24, 35, 500000)
    # The requeue reset the submit time: the first submission counts.
    assert stranger(307, record, folder, logged) is None
    # Found after an interrupted submission: the Submitted record is written much later.
    assert stranger(307, record, folder, logged + timedelta(hours=5)) is None
    assert stranger(307, record, folder, None) is None
    why = stranger(307, record, folder, logged - timedelta(days=1))
    assert why.startswith("SLURM's job 307 was submitted at 2026-12-02T18:24:35, after the log")
    assert why.endswith("the id was reused")
    assert stranger(307, record, "/elsewhere", logged) == (
        "SLURM's job 307 ran in /tmp/rq: the id was reused"
    )

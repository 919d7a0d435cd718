"""Tests of running SLURM's commands: time-outs, transient errors and a clean environment."""

import os
import re
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta

import pytest
from conftest import (
    cancel_tagged,
    data,
    fake_command,
    sacct_state,
    scontrol_state,
    wait_for,
)
from path import Path

from stepup.queue.slurm.commands import KILL_GRACE, CommandResult, is_transient, run_command
from stepup.queue.slurm.control import cancel
from stepup.queue.slurm.parsers import parse_job_records, parse_squeue
from stepup.queue.slurm.queries import squeue_command

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


# The user's SLURM settings (input environment variables) do not change what is parsed

USER_SETTINGS = {
    "SQUEUE_NAMES": "other",
    "SQUEUE_PARTITION": "nosuch",
    "SQUEUE_USERS": "nobody",
    "SLURM_TIME_FORMAT": "%a %T",
    "SCANCEL_STATE": "RUNNING",
    "SCONTROL_FUTURE": "1",
}


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
        submit_time = parse_job_records(
            run_command(args, timeout=20).stdout, ("JobIDRaw", "Submit")
        )
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

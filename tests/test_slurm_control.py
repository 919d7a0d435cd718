"""Tests of sbatch (after rc) and scancel as StepUp Queue runs them."""

import os
import subprocess
import time

import pytest
from conftest import (
    cancel_tagged,
)
from path import Path

from stepup.queue.slurm.control import cancel, environment_after_rc, submit


def test_environment_after_rc(tmp_path, monkeypatch):
    """What rc exports, with rc's output and folder changes left out; `None` when rc fails."""
    monkeypatch.chdir(tmp_path)
    rc = "echo noise; cd /; export SLURM_CLUSTERS=x\nexport MULTI='a\nb=c'"
    env = environment_after_rc(rc, 10, {"PATH": os.environ["PATH"], "KEEP": "1"})
    assert (env["SLURM_CLUSTERS"], env["MULTI"], env["KEEP"]) == ("x", "a\nb=c", "1")
    assert env["PWD"] == str(tmp_path)
    assert environment_after_rc("false", 10, dict(os.environ)) is None


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

"""`stepup jobs`, run as a real subprocess on the real local SLURM, on both StepUp hosts."""

import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest
from conftest import (
    FAST_ENV,
    OK_AND_BAD_PLAN,
    SIMPLE_PLAN,
    JobTools,
    sacct,
    scontrol_state,
    table,
    unreachable_squeue,
    wait_for,
)
from path import Path

from stepup.queue.efficiency import format_size
from stepup.queue.joblog import read_log
from stepup.queue.jobs import format_duration


def count_sacct(jobtools: JobTools):
    """Log each call of `sacct` by `stepup jobs`, as the fixture does for squeue and scancel."""
    bindir = jobtools.workflow.root.parent / "bin"
    real = shutil.which("sacct")
    wrapper = bindir / "sacct"
    wrapper.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {jobtools.calls_dir / "sacct.txt"}\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)


def sacct_times(record: dict[str, str]) -> tuple[datetime | None, ...]:
    """Submit, Start and End of a sacct record; `None` for `Unknown`."""
    return tuple(
        None if record[name] in ("Unknown", "None", "") else datetime.fromisoformat(record[name])
        for name in ("Submit", "Start", "End")
    )


def short_time(time: datetime) -> str:
    """How the table shows a time stamp: the time of day for today."""
    return f"{time:%H:%M:%S}" if time.date() == datetime.now().date() else f"{time:%m-%d %H:%M}"


def test_help(jobtools: JobTools):
    for command in (["stepup", "jobs"], ["sq-jobs"]):
        result = subprocess.run(
            [*command, "--help"],
            env=jobtools.workflow.env,
            capture_output=True,
            text=True,
            check=True,
        )
        text = " ".join(result.stdout.split())
        for option in "--state", "--json", "--timeline", "--efficiency", "--watch":
            assert option in text
        assert "This tool changes nothing." in text
        # argparse may break the line after `stepup-`.
        assert "pipinstallmatplotlib" in "".join(text.split())


def test_table_and_json_match_sacct(jobtools: JobTools):
    """A finished workflow plus pending, running and cancelled jobs: every state in one table.

    The rows (state, pending reason, exit code, submit time, queue and run time) are compared
    with SLURM's accounting records; SLURM is asked once with squeue and once with sacct.
    """
    wf = jobtools.workflow
    wf.plan(OK_AND_BAD_PLAN)
    wf.job("ok", "#!/usr/bin/env bash\nsleep 2\n")
    wf.job("bad", "#!/usr/bin/env bash\nsleep 1\nexit 3\n")
    assert wf.boot().returncode != 0
    ok = read_log(wf.root / "ok/slurmjob.log").job_id
    bad = read_log(wf.root / "bad/slurmjob.log").job_id
    held = jobtools.submit("held")
    running = jobtools.submit("running", hold=False, command="sleep 300")
    cancelled = jobtools.submit("cancelled")
    subprocess.run(["scancel", str(cancelled)], check=True)
    (wf.root / "corrupt").makedirs_p()
    (wf.root / "corrupt/slurmjob.log").write_text("not a job log\n")
    wait_for(lambda: scontrol_state(running) == "RUNNING", 60, "the job to run")
    ids = {"bad": bad, "cancelled": cancelled, "held": held, "ok": ok, "running": running}
    wait_for(lambda: len(sacct("-j", ",".join(map(str, ids.values())))) == 5, 60, "sacct")
    wait_for(lambda: scontrol_state(cancelled) == "CANCELLED", 30, "the cancellation")
    count_sacct(jobtools)
    jobtools.reset_calls()

    result = jobtools.run("jobs")
    assert result.returncode == 0, result.stderr
    assert "./corrupt/slurmjob.log" in result.stderr
    assert len(jobtools.calls("squeue")) == 1
    assert len(jobtools.calls("sacct")) == 1
    records = {int(r["JobIDRaw"]): r for r in sacct("-j", ",".join(map(str, ids.values())))}
    rows = table(result.stdout)
    # Sorted by folder; no job names a cluster, so there is no CLUSTER column.
    assert [row["FOLDER"] for row in rows] == sorted(ids)
    assert [row["JOB"] for row in rows] == [str(ids[folder]) for folder in sorted(ids)]
    states = {row["FOLDER"]: (row["STATE"], row["REASON/EXIT"]) for row in rows}
    assert states == {
        "bad": ("FAILED", "exit 3"),
        "cancelled": ("CANCELLED", "no exit code"),
        "held": ("PENDING", "JobHeldUser"),
        "ok": ("COMPLETED", "exit 0"),
        "running": ("RUNNING", ""),
    }
    for row in rows:
        record = records[int(row["JOB"])]
        submit, start, end = sacct_times(record)
        assert row["SUBMITTED"] == short_time(submit)
        if row["FOLDER"] in ("ok", "bad"):
            assert row["QUEUED"] == format_duration((start - submit).total_seconds())
            assert row["RAN"] == format_duration((end - start).total_seconds())
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith(
        "Summary: 5 jobs (1 CANCELLED, 1 COMPLETED, 1 FAILED, 1 PENDING, 1 RUNNING), queued "
    )

    jobtools.reset_calls()
    # The user's settings for SLURM's commands change neither the times nor the fields.
    settings = {"SLURM_TIME_FORMAT": "relative", "SACCT_FORMAT": "JobID", "SQUEUE_FORMAT": "%i"}
    result = jobtools.run("jobs", "--json", env=settings)
    assert result.returncode == 0, result.stderr
    assert len(jobtools.calls("squeue")) == len(jobtools.calls("sacct")) == 1
    document = json.loads(result.stdout)
    assert sorted(document) == ["errors", "jobs", "summary", "unreachable"]
    assert document["unreachable"] == []
    assert len(document["errors"]) == 1
    assert "./corrupt/slurmjob.log" in document["errors"][0]
    jobs = document["jobs"]
    assert [job["folder"] for job in jobs] == sorted(ids)
    fields = ["folder", "job_id", "cluster", "state", "source", "reason", "exit_code", "signal"]
    fields += ["submitted", "started", "ended", "queued_seconds", "ran_seconds", "efficiency"]
    fields += ["attempts"]
    for job in jobs:
        assert list(job) == fields
        assert job["cluster"] is None
        assert job["attempts"] == []
        record = records[job["job_id"]]
        submit, start, end = sacct_times(record)
        assert job["submitted"] == record["Submit"]
        if job["folder"] == "held":
            assert job["started"] is None
            assert job["ran_seconds"] is None
        else:
            # sacct dates the start of a job cancelled while pending at its cancellation, or
            # (seen under load) gives none.
            assert job["started"] == (None if start is None else record["Start"])
        if job["folder"] in ("ok", "bad", "cancelled"):
            assert job["state"] == record["State"].split()[0]
            assert job["ended"] == record["End"]
            assert job["queued_seconds"] == (start - submit).total_seconds()
            assert job["ran_seconds"] == (end - start).total_seconds()
        if job["folder"] in ("ok", "bad"):
            assert job["exit_code"] == int(record["ExitCode"].split(":")[0])
    by_folder = {job["folder"]: job for job in jobs}
    assert by_folder["held"]["source"] == "squeue"
    assert by_folder["held"]["reason"] == "JobHeldUser"
    assert by_folder["held"]["ended"] is None
    assert by_folder["running"]["state"] == "RUNNING"
    assert by_folder["running"]["ran_seconds"] > 0
    assert by_folder["bad"]["exit_code"] == 3
    assert document["summary"]["jobs"] == 5
    assert document["summary"]["states"] == {
        "CANCELLED": 1,
        "COMPLETED": 1,
        "FAILED": 1,
        "PENDING": 1,
        "RUNNING": 1,
    }
    total = sum(job["ran_seconds"] or 0 for job in jobs)
    assert document["summary"]["ran_seconds"] == total


def test_state_filter(jobtools: JobTools):
    held = jobtools.submit("held")
    failed = jobtools.submit("failed", hold=False, command="exit 2", records=("FAILED",), ret="2")
    done = jobtools.submit("done", hold=False, command="true", records=("COMPLETED",), ret="0")
    wait_for(lambda: scontrol_state(failed) == "FAILED", 60, "the job to fail")
    # Under load, the job in done/ may still be pending: its state would then be shown.
    wait_for(lambda: scontrol_state(done) == "COMPLETED", 60, "the job to complete")
    result = jobtools.run("jobs", "--state", "pending,FAILED")
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert [(row["FOLDER"], row["JOB"], row["STATE"]) for row in rows] == [
        ("failed", str(failed), "FAILED"),
        ("held", str(held), "PENDING"),
    ]
    assert "Summary: 2 jobs (1 FAILED, 1 PENDING)" in result.stdout
    assert "1 more not shown (--state)." in result.stdout
    result = jobtools.run("jobs", "--json", "-s", "COMPLETED")
    document = json.loads(result.stdout)
    assert [job["folder"] for job in document["jobs"]] == ["done"]
    result = jobtools.run("jobs", "--state", "TIMEOUT")
    assert result.returncode == 0, result.stderr
    assert "Summary: 0 jobs, queued 0s, ran 0s in total. 3 more not shown (--state)." in (
        result.stdout
    )


def test_slurm_unreachable(jobtools: JobTools):
    """When squeue fails, the table says so and shows what the logs know; the exit code is 0.

    A fake squeue on PATH stands for a controller that does not answer: a real one cannot be
    made to fail on demand without stopping it for the other tests. A log with an unknown
    cluster is a real failure of SLURM's own commands.
    """
    root = jobtools.workflow.root
    logged = jobtools.submit("logged", records=("RUNNING",))
    exited = jobtools.submit("exited", records=("RUNNING",), ret="0\n")
    failed = jobtools.submit("failed", ret="4\n")
    only = jobtools.submit("submitted")
    elsewhere = jobtools.submit("elsewhere", cluster="nosuchcluster", records=("TIMEOUT",))
    env = unreachable_squeue(jobtools.workflow)
    result = jobtools.run("jobs", env=env)
    assert result.returncode == 0, result.stderr
    assert "Warning: could not ask SLURM about the default cluster" in result.stderr
    assert "SLURM could not be asked about the default cluster: its jobs show what their logs" in (
        result.stdout
    )
    assert "SLURM could not be asked about cluster nosuchcluster" in result.stdout
    rows = {row["FOLDER"]: row for row in table(result.stdout)}
    got = {folder: (row["JOB"], row["CLUSTER"], row["STATE"]) for folder, row in rows.items()}
    assert got == {
        "elsewhere": (str(elsewhere), "nosuchcluster", "TIMEOUT"),
        "exited": (str(exited), "", "COMPLETED"),
        "failed": (str(failed), "", "FAILED"),
        "logged": (str(logged), "", "RUNNING"),
        "submitted": (str(only), "", "SUBMITTED"),
    }
    assert rows["failed"]["REASON/EXIT"] == "exit 4"
    submitted = read_log(root / "logged/slurmjob.log").submitted_time
    assert rows["logged"]["SUBMITTED"] == short_time(submitted)
    document = json.loads(jobtools.run("jobs", "--json", env=env).stdout)
    sources = {job["folder"]: job["source"] for job in document["jobs"]}
    assert sources == {
        "elsewhere": "log",
        "exited": "ret",
        "failed": "ret",
        "logged": "log",
        "submitted": "log",
    }
    assert sorted(str(item["cluster"]) for item in document["unreachable"]) == [
        "None",
        "nosuchcluster",
    ]


def test_long_folders_fit_80_columns(jobtools: JobTools):
    deep = "/".join(f"level{i}-with-a-long-name" for i in range(6))
    job_id = jobtools.submit(deep)
    result = jobtools.run("jobs")
    assert result.returncode == 0, result.stderr
    # table() checks that every line fits 80 columns.
    (row,) = table(result.stdout)
    assert row["JOB"] == str(job_id)
    assert row["FOLDER"].startswith("level0-with")
    assert row["FOLDER"].endswith("level5-with-a-long-name"[-5:])
    assert "…" in row["FOLDER"]
    wide = jobtools.run("jobs", env={"COLUMNS": "200"})
    assert table_line(wide.stdout, job_id).split()[0] == deep


def table_line(stdout: str, job_id: int) -> str:
    return next(line for line in stdout.splitlines() if f" {job_id} " in line)


def test_from_job_folder(jobtools: JobTools):
    """Without PATH, the current folder is searched."""
    job_id = jobtools.submit("one")
    jobtools.submit("two")
    result = subprocess.run(
        ["sq-jobs"],
        cwd=Path(jobtools.workflow.root / "one"),
        env=jobtools.workflow.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [row["JOB"] for row in table(result.stdout)] == [str(job_id)]
    assert [row["FOLDER"] for row in table(result.stdout)] == ["."]


# Burns 5 s of CPU on one of its 4 CPUs while it holds 200 MiB; SLURM samples its memory every
# second (--acctg-freq), else a job shorter than JobAcctGatherFrequency (30 s) has no MaxRSS.
BURN = """
#!/usr/bin/env bash
#SBATCH --cpus-per-task=4
#SBATCH --mem=1G
#SBATCH --time=5
#SBATCH --acctg-freq=task=1
python3 - <<'PY'
import time
data = bytearray(200 * 1024 * 1024)
for i in range(0, len(data), 4096):
    data[i] = 1
end = time.process_time() + 5
while time.process_time() < end:
    pass
time.sleep(2)
PY
"""


def kib(text: str) -> int:
    """Bytes of a size that sacct --units=K prints."""
    return int(text.removesuffix("K")) * 1024


def sacct_usage(job_id: int) -> dict[str, float]:
    """sacct's own figures of a job, in other units than `stepup jobs` reads."""
    fields = "JobIDRaw,ElapsedRaw,TotalCPU,AllocCPUS,ReqMem,MaxRSS,TimelimitRaw"
    result = subprocess.run(
        ["sacct", "-n", "-P", "--units=K", "-j", str(job_id), "-o", fields],
        capture_output=True,
        text=True,
        check=True,
    )
    job, *steps = (line.split("|") for line in result.stdout.splitlines() if line.strip())
    minutes, seconds = job[2].split(":")
    return {
        "elapsed": int(job[1]),
        "cpu_seconds": int(minutes) * 60 + float(seconds),
        "cpus": int(job[3]),
        "requested": kib(job[4]),
        "peak": max((kib(step[5]) for step in steps if step[5]), default=0),
        "limit": int(job[6]) * 60,
    }


def test_efficiency_matches_sacct(jobtools: JobTools):
    """A job with known CPU time and memory: its figures are sacct's, and the summary flags it.

    One sacct call (with the job steps, no -X) gives the times, exit codes and efficiency.
    """
    wf = jobtools.workflow
    wf.plan('static("burn/", "burn/slurmjob.sh")\nsbatch("burn/")\n')
    wf.job("burn", BURN)
    assert wf.boot().returncode == 0
    job_id = read_log(wf.root / "burn/slurmjob.log").job_id
    wait_for(lambda: sacct_usage(job_id)["peak"] > 0, 120, "sacct to record the peak memory")
    own = sacct_usage(job_id)
    assert own["cpus"] == 4
    assert own["cpu_seconds"] >= 5.0
    assert 200 * 1024**2 < own["peak"] < 300 * 1024**2
    count_sacct(jobtools)
    jobtools.reset_calls()

    result = jobtools.run("jobs", "--json")
    assert result.returncode == 0, result.stderr
    (sacct_call,) = jobtools.calls("sacct")
    assert "-X" not in sacct_call.split()
    document = json.loads(result.stdout)
    (job,) = document["jobs"]
    assert job["ran_seconds"] == own["elapsed"]
    efficiency = job["efficiency"]
    assert efficiency == {
        "cpus": 4,
        "cpu_seconds": pytest.approx(own["cpu_seconds"], abs=1e-3),
        "cpu_efficiency": pytest.approx(own["cpu_seconds"] / (own["elapsed"] * 4), abs=1e-4),
        "requested_memory_bytes": 1024**3,
        "peak_memory_bytes": own["peak"],
        "memory_use": pytest.approx(own["peak"] / 1024**3),
        "time_limit_seconds": 300.0,
        "time_use": pytest.approx(own["elapsed"] / 300),
    }
    assert own["requested"] == 1024**3
    assert own["limit"] == 300
    # One busy thread on four CPUs, 200 MiB of 1 GiB: both flagged, with the line to change.
    advice = document["summary"]["advice"]
    assert [(item["folder"], item["kind"], item["option"]) for item in advice] == [
        ("burn", "cpu", "#SBATCH --cpus-per-task"),
        ("burn", "memory", "#SBATCH --mem"),
    ]

    result = jobtools.run("jobs", "--efficiency")
    assert result.returncode == 0, result.stderr
    (row,) = table(result.stdout)
    headers = ["FOLDER", "JOB", "STATE", "REASON/EXIT", "RAN", "CPU%", "PEAK", "MEM%", "TIME%"]
    assert list(row) == headers
    assert row["CPU%"] == f"{efficiency['cpu_efficiency']:.0%}"
    assert row["PEAK"] == format_size(own["peak"])
    assert row["MEM%"] == f"{efficiency['memory_use']:.0%}"
    assert row["TIME%"] == f"{efficiency['time_use']:.0%}"
    # The summary's advice, wrapped to 80 columns without a terminal.
    assert advice_lines(result.stdout) == [
        "1 job used under 25% of its CPUs: lower #SBATCH --cpus-per-task in burn.",
        "1 job used under 25% of its memory: lower #SBATCH --mem (or --mem-per-cpu) in",
        "  burn.",
    ]
    # The default table has the same summary, without the efficiency columns.
    result = jobtools.run("jobs")
    assert "CPU%" not in result.stdout
    assert advice_lines(result.stdout) == advice_lines(jobtools.run("jobs", "-e").stdout)


def advice_lines(stdout: str) -> list[str]:
    """The lines after the summary line."""
    lines = stdout.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("Summary: ")) + 1 :]


def frames(path: Path) -> list[str]:
    """The tables that `stepup jobs --watch` printed without a terminal, one per period."""
    text = path.read_text() if path.exists() else ""
    return [frame for frame in re.split(r"^(?=\d\d:\d\d:\d\d: )", text, flags=re.M) if frame]


def start_watch(jobtools: JobTools, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """Start `sq-jobs --watch ARGS` without a terminal; its output goes to a file."""
    path = jobtools.workflow.root.parent / f"{name}.txt"
    with open(path, "w") as fh:
        proc = subprocess.Popen(
            ["sq-jobs", "--watch", *args],
            cwd=jobtools.workflow.root,
            env=jobtools.workflow.env,
            stdout=fh,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    return proc, path


def test_watch_until_the_workflow_ends(jobtools: JobTools):
    """Started with the workflow, the watch waits for the log, shows the job run, and ends
    (exit 0) when it has ended."""
    wf = jobtools.workflow
    wf.plan(SIMPLE_PLAN)
    wf.job("job", "#!/usr/bin/env bash\nsleep 6\n")
    watch, path = start_watch(jobtools, "watch", "0.5")
    try:
        boot = wf.popen()
        wait_for(lambda: any("RUNNING" in frame for frame in frames(path)), 120, "a RUNNING row")
        assert boot.wait(timeout=240) == 0
        assert watch.wait(timeout=120) == 0, watch.stderr.read()
    finally:
        for proc in watch, boot:
            if proc.poll() is None:
                wf.kill(proc) if proc is boot else proc.kill()
    shown = frames(path)
    assert "No job logs found." in shown[0]
    assert shown[-1].splitlines()[0].endswith(": all 1 jobs shown have ended.")
    (row,) = table(shown[-1])
    assert row["STATE"] == "COMPLETED"
    assert row["REASON/EXIT"] == "exit 0"
    assert watch.stderr.read() == ""


def test_two_watchers_share_one_squeue_call_per_cache_period(jobtools: JobTools):
    """Two watchers that redraw every 0.3 s over several cache periods (2 s in the tests) run
    squeue at most once per period together, and sacct once each for a job whose state does
    not change; Ctrl-C ends each with exit 0 and no traceback.

    The wrappers of the fixture and `count_sacct` log every call of squeue and sacct.
    """
    held = jobtools.submit("held")
    wait_for(lambda: len(sacct("-j", str(held))) == 1, 60, "sacct to list the held job")
    count_sacct(jobtools)
    jobtools.reset_calls()
    start = time.monotonic()
    watchers = [start_watch(jobtools, f"watch{i}", "0.3") for i in range(2)]
    try:
        wait_for(lambda: all(len(frames(path)) >= 25 for _, path in watchers), 120, "frames")
    finally:
        for proc, _ in watchers:
            proc.send_signal(signal.SIGINT)
        codes = [proc.wait(timeout=60) for proc, _ in watchers]
    elapsed = time.monotonic() - start
    assert codes == [0, 0]
    for proc, path in watchers:
        assert "Traceback" not in proc.stderr.read()
        last = frames(path)[-1]
        assert "every 0.3 s until all jobs shown have ended (Ctrl-C stops)." in last
        (row,) = table(last)
        assert (row["JOB"], row["STATE"], row["REASON/EXIT"]) == (
            str(held),
            "PENDING",
            "JobHeldUser",
        )
    calls = jobtools.calls("squeue")
    cache_timeout = float(FAST_ENV["STEPUP_SBATCH_CACHE_TIMEOUT"])
    assert 2 <= len(calls) <= elapsed / cache_timeout + 1, (len(calls), elapsed)
    # sacct is asked again only when a job's state changed: here once by each watcher.
    assert len(jobtools.calls("sacct")) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--watch", "wf"], "argument -w/--watch: 'wf' is no positive number of seconds. Give "),
        (["-w", "0"], "argument -w/--watch: '0' is no positive number of seconds."),
        (["--watch", "-5"], "argument -w/--watch: '-5' is no positive number of seconds."),
        (["--watch", "--json"], "Error: --watch shows the table only: leave out --json and "),
        (["-w", "5", "-t", "t.png"], "Error: --watch shows the table only: leave out --json "),
    ],
)
def test_watch_refuses_bad_arguments(tmp_path, args: list[str], message: str):
    """Refused before anything is searched or asked: exit 2 and what to do instead."""
    command = [Path(sys.executable).parent / "sq-jobs", *args]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert result.stdout == ""


def test_watch_in_a_terminal_redraws_in_place(jobtools: JobTools):
    """In a terminal (a pseudo-terminal here), rich's live display redraws the table in place;
    SIGINT, as Ctrl-C sends it, ends the watch with exit 0 and no traceback."""
    held = jobtools.submit("held")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        ["sq-jobs", "--watch", "0.3"],
        cwd=jobtools.workflow.root,
        env=jobtools.workflow.env | {"TERM": "xterm"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""

    def read() -> bytes:
        nonlocal output
        while select.select([controller], [], [], 0.1)[0]:
            try:
                output += os.read(controller, 65536)
            except OSError:  # The terminal is closed once the watch ended.
                break
        return output

    try:
        wait_for(lambda: read().count(b"until all jobs shown have ended") >= 3, 60, "redraws")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: read() is not None and proc.poll() is not None, 60, "the watch to end")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    assert proc.returncode == 0
    text = output.decode(errors="replace")
    # Cursor up and erase line: the next table replaces the previous one.
    assert "\x1b[1A\x1b[2K" in text
    assert "Traceback" not in text
    assert re.search(rf"held +{held} +PENDING +JobHeldUser", text) is not None

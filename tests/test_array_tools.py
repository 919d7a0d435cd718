"""The job tools on the tasks of an sbatch_array() step: `stepup jobs`, `canceljobs` and
`removejobs` show and act per task, and never on a task that is not the folder's."""

import json
import subprocess

from conftest import FAILED_RC, table, wait_for, write_log
from test_arrays import FAIL_ONCE_SCRIPT, HELD_SCRIPT, OK_SCRIPT, array_plan
from test_jobs import count_sacct

from stepup.queue.joblog import read_log

# Task N is folder N: with at most two tasks at once, a and b run first, then c and d (held
# until `release`), while e pends (JobArrayTaskLimit).
SCRIPTS = {"a": OK_SCRIPT, "b": FAIL_ONCE_SCRIPT, "c": HELD_SCRIPT, "d": HELD_SCRIPT}
SCRIPTS["e"] = HELD_SCRIPT


def task_states(array_id: int) -> dict[str, str]:
    """squeue's state of every task of an array, `ID_N` → state (`-r`: one line per task)."""
    result = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-j", str(array_id), "-o", "%i|%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    return dict(line.split("|") for line in result.stdout.split())


def sacct_states(names: list[str]) -> dict[str, str]:
    """sacct's state of some array tasks, `ID_N` → state."""
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(names), "-o", "JobID,State"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        job: state.split()[0]
        for job, _, state in (line.partition("|") for line in result.stdout.split("\n"))
        if state
    }


def jobs_json(jobtools) -> dict[str, dict]:
    result = jobtools.run("jobs", "--json", ".")
    assert result.returncode == 0, result.stdout + result.stderr
    return {row["folder"]: row for row in json.loads(result.stdout)["jobs"]}


def unrelated_array(folder) -> int:
    """A held array of two tasks submitted without StepUp Queue (no token)."""
    folder.makedirs_p()
    result = subprocess.run(
        ["sbatch", "--parsable", "--hold", "--array=0-1", "--wrap", "sleep 300"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.strip())


def test_array_tools(workflow, jobtools):
    for folder, script in SCRIPTS.items():
        workflow.job(folder, script)
    array_plan(workflow, list(SCRIPTS), ", max_running=2")
    proc = workflow.popen()
    root = workflow.root
    try:
        wait_for((root / "a/slurmjob.log").exists, 60, "the array to be submitted")
        wait_for(lambda: " Submitted " in workflow.log("a"), 60, "the array to be submitted")
        array_id = read_log(root / "a/slurmjob.log").job_id
        jobtools.ids.append(array_id)
        names = {folder: f"{array_id}_{index}" for index, folder in enumerate(SCRIPTS)}

        def settled():
            states = task_states(array_id)
            return (root / "b/slurmjob.ret").exists() and [
                states.get(names[f]) for f in "abcde"
            ] == ["COMPLETED", "FAILED", "RUNNING", "RUNNING", "PENDING"]

        wait_for(settled, 90, "a and b to end, c and d to run, e to pend")
        # Logs that name a task that is not their folder's: another folder's task of the same
        # array (x), and a task of an array that StepUp Queue did not submit (y).
        other = unrelated_array(root.parent / "elsewhere")
        jobtools.ids.append(other)
        write_log(root / "x", f"Submitted {names['c']}")
        write_log(root / "y", f"Submitted {other}_0")

        # stepup jobs: a row per task, its job as ID_N, SLURM's state of the task.
        rows = jobs_json(jobtools)
        assert sorted(rows) == ["a", "b", "c", "d", "e", "x", "y"]
        for index, folder in enumerate("abcde"):
            assert (rows[folder]["job_id"], rows[folder]["task"]) == (array_id, index)
        assert {f: rows[f]["state"] for f in "abcde"} == {
            "a": "COMPLETED",
            "b": "FAILED",
            "c": "RUNNING",
            "d": "RUNNING",
            "e": "PENDING",
        }
        assert rows["a"]["exit_code"] == 0
        assert rows["b"]["exit_code"] == 5
        assert rows["e"]["reason"] == "JobArrayTaskLimit"
        # The start of a running task comes from sacct (or the log), which may lag behind.
        wait_for(lambda: jobs_json(jobtools)["c"]["started"] is not None, 60, "c's start")
        shown = jobtools.run("jobs", ".")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert {row["FOLDER"]: row["JOB"] for row in table(shown.stdout)}["c"] == names["c"]

        # removejobs: the failed folder only; live tasks and foreign logs are kept.
        removed = jobtools.run("removejobs", "--commit", ".")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        actions = {row["FOLDER"]: row for row in table(removed.stdout)}
        assert {f: actions[f]["ACTION"] for f in actions} == {
            "a": "keep",
            "b": "removed",
            "c": "keep",
            "d": "keep",
            "e": "keep",
            "x": "keep",
            "y": "keep",
        }, removed.stdout
        assert "is that of c" in actions["x"]["NOTE"], removed.stdout
        assert "no token" in actions["y"]["NOTE"], removed.stdout
        assert not (root / "b/slurmjob.log").exists()
        assert (root / "a/slurmjob.log").exists()
        assert (root / "x/slurmjob.log").exists()

        # canceljobs: the live tasks of this folder's array, in one scancel call.
        jobtools.reset_calls()
        cancelled = jobtools.run("canceljobs", ".")
        assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
        actions = {row["FOLDER"]: row for row in table(cancelled.stdout)}
        assert {f: actions[f]["ACTION"] for f in actions} == {
            "a": "skip",
            "c": "cancelled",
            "d": "cancelled",
            "e": "cancelled",
            "x": "skip",
            "y": "skip",
        }, cancelled.stdout
        assert "is that of c" in actions["x"]["NOTE"], cancelled.stdout
        calls = jobtools.calls("scancel")
        assert len(calls) == 1, calls
        assert sorted(calls[0].split()) == sorted(names[f] for f in "cde")
        assert "(1 scancel call)" in cancelled.stdout
        wait_for(
            lambda: set(sacct_states([names[f] for f in "cde"]).values()) == {"CANCELLED"},
            60,
            "sacct to record the cancelled tasks",
        )
        # The unrelated array was not touched.
        assert set(task_states(other).values()) == {"PENDING"}
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode & FAILED_RC, stdout
    finally:
        if proc.poll() is None:
            workflow.kill(proc)

    # Once squeue forgets the tasks, sacct tells their states and exit codes: still one squeue
    # and one sacct call, whatever the number of tasks.
    wait_for(lambda: names["a"] not in task_states(array_id), 120, "squeue to forget task a")
    count_sacct(jobtools)
    jobtools.reset_calls()
    rows = jobs_json(jobtools)
    assert len(jobtools.calls("squeue")) == len(jobtools.calls("sacct")) == 1
    assert (rows["a"]["state"], rows["a"]["source"], rows["a"]["exit_code"]) == (
        "COMPLETED",
        "sacct",
        0,
    )
    assert rows["a"]["ran_seconds"] is not None
    assert {rows[f]["state"] for f in "cde"} == {"CANCELLED"}
    # The step removed its task links: x is told apart by the manifest, which lists no x.
    kept = jobtools.run("removejobs", ".")
    actions = {row["FOLDER"]: row for row in table(kept.stdout)}
    assert {f for f in actions if actions[f]["ACTION"] == "would remove"} == {"c", "d", "e"}, (
        kept.stdout
    )
    assert actions["x"]["ACTION"] == "keep", kept.stdout

    # The timeline draws the tasks as jobs.
    drawn = jobtools.run("jobs", "--timeline", "tasks.svg", ".")
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    assert b"<svg" in (root / "tasks.svg").read_bytes()[:1000]

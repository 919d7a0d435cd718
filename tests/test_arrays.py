"""sbatch_array(): many job folders as SLURM job arrays in one step, on the real local SLURM."""

import re
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from conftest import FAILED_RC, KILL_POINTS, Workflow, fake_command, wait_for, with_bin
from path import Path

from stepup.queue.joblog import read_log

FOLDERS = [f"t{i:02d}" for i in range(24)]
OK_SCRIPT = """
#!/usr/bin/env bash
#SBATCH --time=00:05:00
echo "task in $(basename "$PWD")" > result.txt
sleep 1
"""
# Fails once: the first run leaves `ok` behind, a run after `stepup removejobs` succeeds.
FAIL_ONCE_SCRIPT = """
#!/usr/bin/env bash
#SBATCH --time=00:05:00
if [[ ! -e ok ]]; then touch ok; exit 5; fi
echo "task in $(basename "$PWD")" > result.txt
"""
# Waits until the workflow's folder holds `release`.
HELD_SCRIPT = """
#!/usr/bin/env bash
#SBATCH --time=00:05:00
while [[ ! -e ../release ]]; do sleep 0.2; done
echo "task in $(basename "$PWD")" > result.txt
"""


def array_plan(workflow: Workflow, folders: list[str], args: str = ""):
    workflow.plan(
        f"""
        folders = {folders!r}
        static(*[p for f in folders for p in (f + "/", f + "/slurmjob.sh")])
        sbatch_array(folders{args})
        """
    )


def array_tasks(workflow: Workflow) -> list[tuple[str, str, str]]:
    """(array job id, task index, state) of every array task sacct lists for the workflow."""
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", workflow.started, "-o", "JobID,State,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
    )
    tasks = []
    for line in result.stdout.splitlines():
        job, state, workdir = line.split("|", 2)
        if Path(workdir) == workflow.root and "_" in job:
            array_id, _, index = job.partition("_")
            tasks.append((array_id, index, state.split()[0]))
    return tasks


def final_tasks(workflow: Workflow, count: int) -> list[tuple[str, str, str]]:
    def ready():
        tasks = array_tasks(workflow)
        return len(tasks) >= count and all(
            state not in ("PENDING", "RUNNING") and not index.startswith("[")
            for _, index, state in tasks
        )

    wait_for(ready, 60, f"sacct to record {count} ended array tasks")
    return array_tasks(workflow)


def test_array_all_succeed(workflow):
    for folder in FOLDERS:
        workflow.job(folder, OK_SCRIPT)
    array_plan(workflow, FOLDERS)
    result = workflow.boot()
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = final_tasks(workflow, len(FOLDERS))
    assert {array_id for array_id, _, _ in tasks} == {tasks[0][0]}
    assert sorted(int(index) for _, index, _ in tasks) == list(range(len(FOLDERS)))
    assert {state for _, _, state in tasks} == {"COMPLETED"}
    for index, folder in enumerate(FOLDERS):
        path = workflow.root / folder
        assert (path / "result.txt").read_text() == f"task in {folder}\n"
        assert (path / "slurmjob.ret").read_text().strip() == "0"
        assert (path / "slurmjob.out").exists()
        assert f" Submitted {tasks[0][0]}_{index}\n" in workflow.log(folder)
    # Unchanged: nothing runs again, the manifest is not rewritten.
    manifest = workflow.root / "slurmarray.json"
    stamp = manifest.stat().st_mtime_ns
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    assert manifest.stat().st_mtime_ns == stamp
    assert len(array_tasks(workflow)) == len(FOLDERS)


def test_array_per_folder_job_name_splits_with_a_note(workflow):
    """Folders whose #SBATCH lines differ (here a --job-name of one folder) go into separate
    arrays, and the step says why, naming the lines: all succeed, in two arrays."""
    folders = ["a", "b", "c"]
    for folder in folders:
        workflow.job(folder, OK_SCRIPT)
    named = "#SBATCH --job-name=special"
    workflow.job("c", OK_SCRIPT.replace("#SBATCH --time", f"{named}\n#SBATCH --time"))
    array_plan(workflow, folders)
    result = workflow.boot()
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "Note: the 3 folders to submit go into 2 job arrays" in text, result.stdout
    assert f"has no other lines where {workflow.root / 'c'} has ['{named}']" in text
    tasks = final_tasks(workflow, 3)
    assert len({array_id for array_id, _, _ in tasks}) == 2
    assert {state for _, _, state in tasks} == {"COMPLETED"}


def test_array_partial_failure_then_removejobs(workflow):
    folders = FOLDERS[:12]
    failing = {"t03", "t07"}
    for folder in folders:
        workflow.job(folder, FAIL_ONCE_SCRIPT if folder in failing else OK_SCRIPT)
        if folder not in failing:
            (workflow.root / folder / "ok").touch()
    array_plan(workflow, folders)
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    for folder in failing:
        assert f"{workflow.root / folder} (job " in result.stdout
    assert result.stdout.count("exit code 5") == 2, result.stdout
    final_tasks(workflow, len(folders))
    # Again without removejobs: the failures are reported again, nothing is submitted.
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    assert result.stdout.count("exit code 5") == 2, result.stdout
    assert len(array_tasks(workflow)) == len(folders)
    removed = subprocess.run(
        ["stepup", "removejobs", "--commit", *sorted(failing)],
        cwd=workflow.root,
        env=workflow.env,
        capture_output=True,
        text=True,
    )
    assert removed.returncode == 0, removed.stdout + removed.stderr
    for folder in failing:
        assert not (workflow.root / folder / "slurmjob.log").exists(), removed.stdout
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    tasks = final_tasks(workflow, len(folders) + len(failing))
    assert len(tasks) == len(folders) + len(failing)
    second = {array_id for array_id, _, _ in tasks} - {tasks[0][0]}
    assert len(second) == 1
    assert sorted(index for array_id, index, _ in tasks if array_id in second) == ["0", "1"]
    for folder in failing:
        assert (workflow.root / folder / "slurmjob.ret").read_text().strip() == "0"


def test_array_kill_and_restart(workflow):
    for folder in FOLDERS:
        workflow.job(folder, HELD_SCRIPT)
    array_plan(workflow, FOLDERS, ", max_running=8")
    proc = workflow.popen()

    def all_submitted():
        return all(
            " Submitted " in (workflow.root / f / "slurmjob.log").read_text()
            for f in FOLDERS
            if (workflow.root / f / "slurmjob.log").exists()
        ) and all((workflow.root / f / "slurmjob.log").exists() for f in FOLDERS)

    wait_for(all_submitted, 60, "every folder to record its task")
    time.sleep(1)
    workflow.kill(proc)
    (workflow.root / "release").touch()
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    tasks = final_tasks(workflow, len(FOLDERS))
    assert len(tasks) == len(FOLDERS)
    assert len({array_id for array_id, _, _ in tasks}) == 1
    for folder in FOLDERS:
        assert (workflow.root / folder / "slurmjob.ret").read_text().strip() == "0"


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_array_exactly_once_when_killed_during_submission(workflow, tmp_path, point):
    """SIGKILL of the step around sbatch: one task per folder in SLURM after the restart.

    A fake `sbatch` on PATH kills its caller at the chosen point (before, while or after the
    real sbatch runs), after the Submitting record was written to every folder.
    """
    folders = FOLDERS[:6]
    for folder in folders:
        workflow.job(folder, OK_SCRIPT)
    array_plan(workflow, folders)
    bindir = Path(tmp_path) / "bin"
    marker = bindir / "fake-ran"
    fake_command(bindir, "sbatch", f"touch {marker}\n{KILL_POINTS[point]}")
    proc = workflow.popen(env=with_bin(workflow, bindir))
    wait_for(marker.exists, 60, "the fake sbatch to run")
    time.sleep(1)
    workflow.kill(proc)
    logs = [read_log(workflow.root / folder / "slurmjob.log") for folder in folders]
    assert {log.token for log in logs} != {None}
    assert len({log.token for log in logs}) == 1
    assert {log.job_id for log in logs} == {None}
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    tasks = final_tasks(workflow, len(folders))
    assert sorted(int(index) for _, index, _ in tasks) == list(range(len(folders)))
    assert len({array_id for array_id, _, _ in tasks}) == 1
    for folder in folders:
        assert (workflow.root / folder / "result.txt").read_text() == f"task in {folder}\n"
        assert (workflow.root / folder / "slurmjob.ret").read_text().strip() == "0"
    if point != "before_sbatch":
        assert "Found the interrupted submission's task" in result.stdout
    # Every task ended: the symlinks are gone.
    assert not (workflow.root / ".stepup-queue/arrays/slurmarray").exists()


@pytest.fixture
def max_array_size() -> Iterator[int]:
    """For one test, SLURM's MaxArraySize is 8: task indices 0..7."""
    conf = Path("/etc/slurm/slurm.conf")
    original = conf.read_text()
    assert "MaxArraySize" not in original
    conf.write_text(f"{original}MaxArraySize=8\n")
    try:
        subprocess.run(["scontrol", "reconfigure"], check=True)
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
        assert re.search(r"^MaxArraySize\s*=\s*8$", shown.stdout, re.MULTILINE), shown.stdout
        yield 8
    finally:
        conf.write_text(original)
        subprocess.run(["scontrol", "reconfigure"], check=True)


@pytest.mark.serial
def test_array_split_at_max_array_size(workflow, max_array_size):
    """20 folders under MaxArraySize=8: three arrays of 8, 8 and 4 tasks, all succeed."""
    folders = FOLDERS[:20]
    for folder in folders:
        workflow.job(folder, OK_SCRIPT)
    array_plan(workflow, folders)
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    tasks = final_tasks(workflow, len(folders))
    sizes = sorted(
        sum(1 for other, _, _ in tasks if other == array_id)
        for array_id in {array_id for array_id, _, _ in tasks}
    )
    assert sizes == [4, 8, 8], tasks
    assert max(int(index) for _, index, _ in tasks) < max_array_size
    for folder in folders:
        assert (workflow.root / folder / "slurmjob.ret").read_text().strip() == "0"


def sacctmgr_max_submit(value: int):
    subprocess.run(
        ["sacctmgr", "-i", "modify", "user", "root", "set", f"MaxSubmitJobs={value}"],
        check=True,
        capture_output=True,
    )


@pytest.mark.serial
def test_array_respects_submit_limit(workflow):
    """14 folders under MaxSubmitJobs=6: every task runs once, never more than 6 queued."""
    folders = FOLDERS[:14]
    for folder in folders:
        workflow.job(folder, OK_SCRIPT.replace("sleep 1", "sleep 3"))
    array_plan(workflow, folders)
    sacctmgr_max_submit(6)
    try:
        result = workflow.boot(timeout=300)
    finally:
        sacctmgr_max_submit(-1)
    assert result.returncode == 0, result.stdout
    assert "a submit limit is reached" in result.stdout
    tasks = final_tasks(workflow, len(folders))
    assert len(tasks) == len(folders)
    assert {state for _, _, state in tasks} == {"COMPLETED"}
    for folder in folders:
        assert (workflow.root / folder / "slurmjob.ret").read_text().strip() == "0"
        assert (workflow.root / folder / "result.txt").read_text() == f"task in {folder}\n"
    assert max_queued(workflow) <= 6


def max_queued(workflow: Workflow) -> int:
    """The largest number of the workflow's array tasks queued at one moment, per sacct."""
    result = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", workflow.started, "-o", "JobID,Submit,End,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
    )
    events = []
    for line in result.stdout.splitlines():
        job, submit, end, workdir = line.split("|", 3)
        if Path(workdir) == workflow.root and "_" in job:
            events += [(datetime.fromisoformat(submit), 1), (datetime.fromisoformat(end), -1)]
    events.sort()
    queued = peak = 0
    for _, step in events:
        queued += step
        peak = max(peak, queued)
    return peak


def test_array_name_used_twice_is_refused(workflow):
    workflow.job("a", OK_SCRIPT)
    workflow.plan(
        """
        static("a/", "a/slurmjob.sh")
        sbatch_array(["a"])
        sbatch_array(["a"])
        """
    )
    result = workflow.boot()
    assert result.returncode != 0
    assert "sbatch_array(name='slurmarray') is called twice in this plan" in result.stdout


@pytest.mark.parametrize("onchange", ["raise", "resubmit"])
def test_array_changed_inputs_per_folder(workflow, onchange):
    """After all succeeded, one folder's script changes: that folder alone follows onchange."""
    folders = FOLDERS[:4]
    for folder in folders:
        workflow.job(folder, OK_SCRIPT)
    array_plan(workflow, folders, f", onchange={onchange!r}")
    assert workflow.boot().returncode == 0
    final_tasks(workflow, len(folders))
    workflow.job("t02", OK_SCRIPT.replace("sleep 1", "echo changed"))
    result = workflow.boot()
    if onchange == "raise":
        assert result.returncode & FAILED_RC, result.stdout
        assert "The inputs of 1 job folder(s) of this sbatch_array() step changed" in result.stdout
        assert str(workflow.root / "t02") in result.stdout
        assert len(array_tasks(workflow)) == len(folders)
        return
    assert result.returncode == 0, result.stdout
    tasks = final_tasks(workflow, len(folders) + 1)
    assert len(tasks) == len(folders) + 1
    assert (workflow.root / "t02/slurmjob.out").read_text() == "changed\n"
    assert len({array_id for array_id, _, _ in tasks}) == 2


@pytest.fixture
def tiny_partition() -> Iterator[str]:
    """A partition with MaxTime=1 (minute) on the local node; removed after the test."""
    name = "sq_tiny_array"
    subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)
    subprocess.run(
        ["scontrol", "create", f"PartitionName={name}", "Nodes=ALL", "MaxTime=1", "State=UP"],
        check=True,
    )
    try:
        yield name
    finally:
        # slurm-wlm 22.05 removes the partition but may exit 1 ("Invalid partition name").
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True)


def test_array_hopeless_tasks_are_cancelled(workflow, tiny_partition):
    """Tasks that pend for PartitionTimeLimit are cancelled after the grace period."""
    folders = FOLDERS[:3]
    for folder in folders:
        directives = f"#SBATCH -p {tiny_partition}\n#SBATCH --time=5\n"
        workflow.job(folder, f"#!/usr/bin/env bash\n{directives}")
    array_plan(workflow, folders)
    result = workflow.boot(env={"STEPUP_SBATCH_HOPELESS_GRACE": "3"})
    assert result.returncode & FAILED_RC, result.stdout
    assert result.stdout.count("pending with SLURM's reason PartitionTimeLimit") == 3
    assert "the requested --time is above the partition's MaxTime" in result.stdout
    for folder in folders:
        log = read_log(workflow.root / folder / "slurmjob.log")
        assert (log.hopeless, log.last_state) == ("PartitionTimeLimit", "CANCELLED")

"""End-to-end tests of the open-file limit of StepUp's director (`entry.raise_open_file_limit`,
`entry.check_open_files`), with real `stepup build` (StepUp 4) / `stepup boot` (StepUp 3) runs
under a lowered limit and real SLURM jobs."""

import shlex
import subprocess
import sys

import pytest
from conftest import FAILED_RC, HOST, Workflow

from stepup.queue.openfiles import files_needed

# A limit far below the 64 + 3 x 31 files that 31 step slots need, and below the 13 + 3 x 22
# at which StepUp's director dies: 30 waiting steps cross it.
LOW_LIMIT = 80
NJOB = 30
SLOTS = NJOB + 1


def _sweep(workflow: Workflow, body: str, njob: int = NJOB) -> list[str]:
    folders = [f"job{i:02d}/" for i in range(njob)]
    for folder in folders:
        workflow.job(folder, body)
    workflow.plan("".join(f'static("{f}", "{f}slurmjob.sh")\nsbatch("{f}")\n' for f in folders))
    return folders


def _run_limited(
    workflow: Workflow, ulimit: str, slots: int, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the workflow to the end in a shell that first runs `ulimit ULIMIT`.

    Through `Workflow.boot`, which starts StepUp 3 again when its director crashed at start-up
    (with 31 workers on a loaded machine it did, and the run then hung until the time-out).
    """
    return workflow.boot("-n", str(slots), ulimit=ulimit, timeout=timeout)


def _assert_failed_steps(result: subprocess.CompletedProcess):
    # Failed steps (with StepUp 4's DRAINED bit), and no crash of the director (INTERNAL).
    assert result.returncode & FAILED_RC, result.stdout + result.stderr
    assert HOST < 4 or not result.returncode & 1, result.stdout + result.stderr


def test_soft_limit_raised(workflow):
    """30 steps wait at once under a soft limit of 80 files and a higher hard limit: StepUp
    Queue raises the soft limit in `stepup build`/`boot`, says so once, and the jobs get the
    user's own limit back. Before the fix StepUp 4's director died with jobs left in the queue;
    StepUp 3's (which starts its 31 workers at boot) logged `Too many open files` from
    accept() and limped on."""
    _sweep(workflow, "#!/usr/bin/env bash\nulimit -S -n > nofile.txt\nsleep 10\n")
    result = _run_limited(workflow, f"-S -n {LOW_LIMIT}", NJOB + 1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.count("StepUp Queue raised the soft limit of open files") == 1
    assert f"from {LOW_LIMIT} to" in result.stderr
    # StepUp 3's director survives EMFILE in accept() (asyncio retries), but logs it.
    assert "Too many open files" not in (workflow.root / ".stepup/director.log").read_text()
    jobs = workflow.final_jobs(NJOB)
    assert len(jobs) == NJOB
    assert all(job["State"] == "COMPLETED" for job in jobs)
    # SLURM propagates the submitter's limits (PropagateResourceLimits=ALL here).
    for i in range(NJOB):
        assert (workflow.root / f"job{i:02d}/nofile.txt").read_text().strip() == str(LOW_LIMIT)


def test_hard_limit_refused(workflow):
    """A hard limit of 80 files is too low for the step slots: the plan's first sbatch() call
    refuses with the numbers and the fixes, and no job is submitted. Before the fix, StepUp 4's
    director died halfway with about 20 jobs queued."""
    _sweep(workflow, "#!/usr/bin/env bash\nsleep 10\n")
    result = _run_limited(workflow, f"-n {LOW_LIMIT}", SLOTS)
    _assert_failed_steps(result)
    jobs_option = "stepup build -j" if HOST >= 4 else "stepup boot -n"
    fail_log = (workflow.root / ".stepup/fail.log").read_text()
    for text in result.stdout, fail_log:
        assert "Refusing to submit" in text
        assert f"`{jobs_option} {SLOTS}`" in text
        assert f"= {files_needed(SLOTS)})" in text
        assert f"{LOW_LIMIT} (soft) and {LOW_LIMIT} (hard)" in text
    assert "raised the soft limit" not in result.stderr
    assert workflow.jobs() == []
    assert not list(workflow.root.glob("job*/slurmjob.log"))


def test_step_refuses_on_rerun(workflow):
    """When plan.py does not run again (unchanged), each step checks the limit itself before it
    submits: after a change of the job scripts, a rerun under a hard limit too low fails the
    steps and submits nothing new."""
    _sweep(workflow, "#!/usr/bin/env bash\necho one\n", 5)
    result = workflow.boot("-n", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(workflow.final_jobs(5)) == 5
    for i in range(5):
        workflow.job(f"job{i:02d}/", "#!/usr/bin/env bash\necho two\n")
    result = _run_limited(workflow, f"-n {LOW_LIMIT}", SLOTS)
    _assert_failed_steps(result)
    assert result.stdout.count("Refusing to submit") >= 1
    assert f"`{'stepup build -j' if HOST >= 4 else 'stepup boot -n'} {SLOTS}`" in result.stdout
    assert len(workflow.jobs()) == 5


@pytest.mark.parametrize(
    ("argv", "raised"),
    [
        (["stepup", "build", "-j", "4"], True),
        (["stepup", "boot"], True),
        (["sb", "-j", "4"], True),
        (["stepup", "--root", "jobs", "boot", "-n", "4"], True),
        (["stepup", "-l", "INFO", "build"], True),
        (["stepup", "jobs", "build/"], False),
        (["stepup", "--version"], False),
    ],
)
def test_raise_only_for_director_commands(argv, raised):
    """Only the commands that start StepUp's director raise the soft limit, once."""
    code = (
        "import resource, sys; from stepup.queue.entry import raise_open_file_limit as r; "
        f"r({argv!r}); r({argv!r}); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    python = shlex.quote(sys.executable)
    command = f"ulimit -S -n {LOW_LIMIT} && exec {python} -c {shlex.quote(code)}"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    hard = subprocess.run(["bash", "-c", "ulimit -H -n"], capture_output=True, text=True)
    assert int(result.stdout) == (int(hard.stdout) if raised else LOW_LIMIT)
    assert result.stderr.count("StepUp Queue raised the soft limit") == int(raised)

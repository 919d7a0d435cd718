"""Run the examples of the documentation on the local SLURM, and build the documentation."""

import html
import os
import re
import shutil
import subprocess
import sys
import time

from conftest import FAILED_RC, HOST
from path import Path

ROOT = Path(__file__).parent.parent.absolute()
EXAMPLES = ROOT / "docs" / "examples"
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def copy_example(name: str, dest: Path):
    """Copy an example, without files left behind by running it in place."""
    ignore = shutil.ignore_patterns(
        ".stepup",
        "slurmjob.log",
        "slurmjob.out",
        "slurmjob.err",
        "slurmjob.ret",
        "workflow-*.out",
        "workflow.jobid",
    )
    shutil.copytree(EXAMPLES / name, dest, ignore=ignore, dirs_exist_ok=True)
    # Each example has a plan per host: plan.py for StepUp 4, plan-stepup3.py for StepUp 3.
    if HOST < 4:
        (dest / "plan-stepup3.py").copy(dest / "plan.py")


def final_records(workflow, njob: int, timeout: float = 30) -> dict[str, list[dict[str, str]]]:
    """Wait until sacct lists `njob` jobs of the workflow in a final state; group per folder."""
    deadline = time.monotonic() + timeout
    while True:
        records = workflow.jobs()
        if len(records) >= njob and all(r["State"].split()[0] in FINAL for r in records):
            break
        assert time.monotonic() < deadline, f"sacct did not catch up: {records}"
        time.sleep(0.5)
    result = {}
    for record in records:
        folder = str(Path(record["WorkDir"]).relpath(workflow.root))
        result.setdefault(folder, []).append(record)
    return result


def submitted_id(log: str) -> int:
    match = re.search(r"^\S+ Submitted ([0-9]+)", log, re.MULTILINE)
    assert match is not None, log
    return int(match.group(1))


def test_slurm_basic(workflow):
    copy_example("slurm-basic", workflow.root)
    # StepUp 4 stops starting steps after a failure unless it is told to keep going.
    keep_going = ["-k"] if HOST >= 4 else []
    result = workflow.boot("-n", "8", "--no-progress", *keep_going, timeout=110)
    output = result.stdout + result.stderr
    # Only the step in fail/ fails: StepUp's return code has just the FAILED flag.
    assert result.returncode == FAILED_RC, output
    assert output.count(" FAIL │ ") == 1, output
    assert f"FAIL │ {workflow.label('fail')}" in output
    assert "Job " in output
    assert "ended with exit code 1" in output

    expected = {"pass": 0, "fail": 1, "sweep/value1": 0, "sweep/value2": 0, "sweep/value3": 0}
    for folder, code in expected.items():
        assert (workflow.root / folder / "slurmjob.ret").read_text().strip() == str(code)
    assert (workflow.root / "pass/pi.txt").read_text().startswith("3.14159265")
    assert (workflow.root / "fail/slurmjob.err").read_text() == "This job fails on purpose.\n"
    for value in 1, 2, 3:
        folder = workflow.root / f"sweep/value{value}"
        assert (folder / "result.txt").read_text() == f"{value * 10}\n"
        # The rendered scripts stay as rendered: StepUp Queue does not make them executable.
        assert not os.access(folder / "slurmjob.sh", os.X_OK)
    assert (workflow.root / "pass/slurmjob.py").stat().st_mode & 0o777 == 0o755

    # SLURM's own records: each job submitted once, with the state matching its exit code.
    records = final_records(workflow, len(expected))
    assert sorted(records) == sorted(expected)
    for folder, code in expected.items():
        assert len(records[folder]) == 1, records[folder]
        record = records[folder][0]
        assert int(record["JobIDRaw"]) == submitted_id(workflow.log(folder))
        assert record["State"] == ("COMPLETED" if code == 0 else "FAILED"), record
        assert record["ExitCode"] == f"{code}:0", record
        assert record["JobName"] == (folder.replace("/value", "-") if "/" in folder else folder)


def active_jobs(root: Path) -> list[str]:
    """Job ids of this user's pending or running jobs that run in a folder below root."""
    result = subprocess.run(
        ["squeue", "--me", "-h", "-o", "%i|%T|%Z"], capture_output=True, text=True, check=True
    )
    active = []
    for line in result.stdout.splitlines():
        job_id, _, workdir = line.strip().split("|", 2)
        if Path(workdir).startswith(root):
            active.append(job_id)
    return active


def test_slurm_perpetual(workflow):
    copy_example("slurm-perpetual", workflow.root)
    # Stop each run of workflow.sh early, while produce/ still runs, but not before StepUp
    # has started: StepUp 3.2.3's director dies when `stepup shutdown` comes while it still
    # boots its workers (FileNotFoundError on a worker's socket), and `stepup boot` then waits
    # for it for ever. Seen in CI with a stop after 3 s on a loaded machine; booting takes
    # about 2 s here, so 15 s leave a wide margin. produce/ runs longer to match.
    script = workflow.root / "produce/slurmjob.sh"
    assert "sleep 10\n" in script.read_text()
    script.write_text(script.read_text().replace("sleep 10\n", "sleep 40\n"))
    env = workflow.env | {
        "WORKFLOW_STOP_AFTER": "15",
        "WORKFLOW_STOP_GRACE": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{workflow.env['PATH']}",
    }
    subprocess.run(
        ["sbatch", "--parsable", "workflow.sh"],
        cwd=workflow.root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # Each run of workflow.sh submits the next one before it ends, so the chain is over when
    # no job of this workflow is pending or running.
    # A bound, not a target: alone it takes about 70 s on StepUp 4 and 100 s on StepUp 3, and
    # much longer when the parallel tests keep slurmctld and the two cores busy.
    deadline = time.monotonic() + 450
    while active_jobs(workflow.root):
        assert time.monotonic() < deadline, "the workflow did not finish in time"
        time.sleep(1)

    assert (workflow.root / "consume/sum.txt").read_text() == "5050\n"
    assert (workflow.root / "consume/slurmjob.ret").read_text().strip() == "0"
    outputs = sorted(
        workflow.root.glob("workflow-*.out"), key=lambda path: int(path.stem.split("-")[1])
    )
    assert len(outputs) >= 2, outputs
    for path in outputs[:-1]:
        assert "submitting workflow.sh again" in path.read_text(), path.read_text()
    assert "StepUp exited with code 0" in outputs[-1].read_text(), outputs[-1].read_text()
    # workflow.jobid names the last run, the one to cancel, and no other job.
    assert (workflow.root / "workflow.jobid").read_text().strip() == outputs[-1].stem.split("-")[1]

    records = final_records(workflow, len(outputs) + 2)
    runs = records["."]
    assert len(runs) == len(outputs)
    assert all(r["JobName"] == "workflow" and r["State"] == "COMPLETED" for r in runs), runs
    # The two jobs ran once, although the workflow was stopped while waiting for them.
    for folder in "produce", "consume":
        assert len(records[folder]) == 1, records[folder]
        assert records[folder][0]["State"] == "COMPLETED"
        assert int(records[folder][0]["JobIDRaw"]) == submitted_id(workflow.log(folder))


def test_docs_build(tmp_path):
    site = Path(tmp_path) / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yaml", "-d", site],
        cwd=ROOT,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=110,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    # The example pages include the files that the tests above run.
    basic = page_text(site / "examples/slurm-basic/index.html")
    perpetual = page_text(site / "examples/slurm-perpetual/index.html")
    # No snippet line left behind (also not one mangled by a formatter, e.g. "--8 < --").
    assert "--8" not in basic + perpetual
    assert "export EXAMPLE_FACTOR=10" in basic
    assert 'sbatch("produce/", out="numbers.txt")' in perpetual
    assert "sbatch --parsable workflow.sh > workflow.jobid\n    exit\n" in perpetual
    api = page_text(site / "api/index.html")
    assert "Add a step that submits a SLURM job once" in api


def page_text(path: Path) -> str:
    """The text of an HTML page, without tags."""
    return html.unescape(re.sub(r"<[^>]*>", "", path.read_text()))

"""The console script `sq-sbatch-and-wait` run by hand: its help, and its refusal to submit
outside a StepUp step unless asked to."""

import subprocess
import sys

from path import Path

BIN = Path(sys.executable).parent


def run(folder: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "sq-sbatch-and-wait", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_says_what_it_is(workflow):
    result = run(workflow.root, "--help", env=workflow.env)
    assert result.returncode == 0
    assert "usage: sq-sbatch-and-wait" in result.stdout
    assert "The command of an sbatch() step of a StepUp 4 workflow" in result.stdout
    assert "--outside-stepup" in result.stdout


def test_refuses_to_submit_outside_a_step(workflow):
    script = workflow.job("job/", "#!/usr/bin/env bash\necho should not run\n")
    env = {k: v for k, v in workflow.env.items() if k != "STEPUP_STEP_INP_DIGEST"}
    result = run(script.parent, env=env)
    assert result.returncode == 2
    assert "no StepUp step runs it (STEPUP_STEP_INP_DIGEST is not set)" in result.stderr
    assert str(script.parent) in result.stderr
    assert "--outside-stepup" in result.stderr
    assert sorted(p.name for p in script.parent.iterdir()) == ["slurmjob.sh"]


def test_outside_stepup_submits_and_waits_when_asked(workflow):
    script = workflow.job("job/", "#!/usr/bin/env bash\necho by hand\nexit 3\n")
    env = {k: v for k, v in workflow.env.items() if k != "STEPUP_STEP_INP_DIGEST"}
    env["STEPUP_SBATCH_CANCEL_TIMEOUT"] = "600"
    result = run(script.parent, "--outside-stepup", env=env)
    assert result.returncode == 3, result.stderr
    # A variable of the original 2.x without equivalent: one warning per step.
    assert result.stderr.count("Warning: STEPUP_SBATCH_CANCEL_TIMEOUT (a variable of the") == 1
    folder = script.parent
    assert (folder / "slurmjob.out").read_text() == "by hand\n"
    assert (folder / "slurmjob.ret").read_text().strip() == "3"
    (record,) = workflow.final_jobs(1)
    assert (record["State"], record["ExitCode"]) == ("FAILED", "3:0")
    assert (folder / "slurmjob.log").read_text().splitlines()[1] == "0" * 64

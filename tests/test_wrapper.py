"""Unit tests of the job script checks and the wrapper that is submitted in its place."""

import subprocess
import textwrap
import time

import pytest
from path import Path

from stepup.queue.wrapper import JobScript, JobScriptError, read_job_script, render_wrapper


@pytest.fixture
def jobdir(tmp_path, monkeypatch) -> Path:
    """An empty job folder that is the current folder, as when the sbatch action runs."""
    path = Path(tmp_path) / "job"
    path.makedirs_p()
    monkeypatch.chdir(path)
    return path


def write_script(text: str, name: str = "slurmjob.sh", mode: int = 0o755) -> Path:
    path = Path(name)
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(mode)
    return path


# Errors


def test_missing_script(jobdir):
    with pytest.raises(JobScriptError) as excinfo:
        read_job_script("slurmjob.sh")
    assert str(excinfo.value) == (
        f"The job script {jobdir / 'slurmjob.sh'} does not exist. Create it, or fix the path."
    )


@pytest.mark.parametrize("text", ["", "echo hello\n", "#SBATCH -N 1\necho hi\n", "#!\n", "#!  \n"])
def test_no_shebang(jobdir, text):
    Path("slurmjob.sh").write_text(text)
    with pytest.raises(JobScriptError) as excinfo:
        read_job_script("slurmjob.sh")
    message = str(excinfo.value)
    assert f"The job script {jobdir / 'slurmjob.sh'} does not start with a shebang" in message
    assert "'#!/usr/bin/env bash'" in message


def test_not_utf8(jobdir):
    Path("slurmjob.sh").write_bytes(b"#!/bin/bash\n\xff\xfe\n")
    with pytest.raises(JobScriptError, match="is not UTF-8 text"):
        read_job_script("slurmjob.sh")


@pytest.mark.parametrize(
    ("directive", "option"),
    [
        ("#SBATCH -o out.txt", "--output"),
        ("#SBATCH -oout.txt", "--output"),
        ("#SBATCH --output=out.txt", "--output"),
        ("#SBATCH --output out.txt", "--output"),
        ("#SBATCH --out=out.txt", "--output"),
        ("#SBATCH -e err.txt", "--error"),
        ("#SBATCH --error=err.txt", "--error"),
        ("#SBATCH --error err.txt", "--error"),
        ("#SBATCH --array=1-10", "--array"),
        ("#SBATCH -a 1-10", "--array"),
        ("#SBATCH --chdir=/tmp", "--chdir"),
        ("#SBATCH -D /tmp", "--chdir"),
        ("#SBATCH --comment=hello", "--comment"),
        ('#SBATCH --comment "hello world"', "--comment"),
        ("#SBATCH --wait", "--wait"),
        ("#SBATCH -W", "--wait"),
        ("#SBATCH --test-only", "--test-only"),
        ("#SBATCH -N 1 --ntasks=2 -o out.txt  # trailing comment", "--output"),
    ],
)
def test_forbidden_option(jobdir, directive, option):
    write_script(f"#!/usr/bin/env bash\n#SBATCH -J fine\n\n{directive}\necho hi\n")
    with pytest.raises(JobScriptError) as excinfo:
        read_job_script("slurmjob.sh")
    message = str(excinfo.value)
    where = jobdir / "slurmjob.sh"
    assert message.startswith(
        f"The job script {where} sets {option} on line 4: {directive.strip()!r}. "
        "Remove that option: "
    )


def test_forbidden_option_explains_why(jobdir):
    write_script("#!/bin/bash\n#SBATCH --output=x\n")
    with pytest.raises(JobScriptError, match=r"sends the job's standard output to slurmjob\.out"):
        read_job_script("slurmjob.sh")
    write_script("#!/bin/bash\n#SBATCH -a 1-3\n")
    with pytest.raises(JobScriptError, match="job arrays are not supported"):
        read_job_script("slurmjob.sh")


@pytest.mark.parametrize(
    ("directive", "scheduler"),
    [
        ("#PBS -l nodes=1", "PBS/Torque"),
        ("#BSUB -n 4", "LSF"),
        ("#COBALT -t 10", "Cobalt"),
        ("#$ -N x", "SGE"),
        ("#$", "SGE"),
    ],
)
def test_other_scheduler_directive(jobdir, directive, scheduler):
    write_script(f"#!/bin/bash\n#SBATCH -N 1\n{directive}\necho hi\n")
    with pytest.raises(JobScriptError) as excinfo:
        read_job_script("slurmjob.sh")
    message = str(excinfo.value)
    assert message.startswith(
        f"The job script {jobdir / 'slurmjob.sh'} has a {scheduler} directive on line 3: "
        f"{directive!r}. StepUp Queue submits to SLURM only"
    )


def test_unparsable_directive(jobdir):
    write_script("#!/bin/bash\n#SBATCH --job-name='unbalanced\n")
    with pytest.raises(JobScriptError) as excinfo:
        read_job_script("slurmjob.sh")
    message = str(excinfo.value)
    assert f"{jobdir / 'slurmjob.sh'}" in message
    assert "cannot be parsed on line 2" in message
    assert "Fix its quotes" in message


def test_script_in_subfolder_error_names_full_path(jobdir):
    Path("sub").makedirs_p()
    write_script("#!/bin/bash\n#SBATCH -e x\n", name="sub/slurmjob.sh")
    with pytest.raises(JobScriptError, match=f"The job script {jobdir / 'sub/slurmjob.sh'} sets"):
        read_job_script("sub/slurmjob.sh")


# What is found


def test_directives_and_executable_command(jobdir):
    write_script(
        """
        #!/usr/bin/env bash
        #SBATCH --job-name=demo
        # a comment between directives
        #SBATCH -N 1 --ntasks-per-node=4  # nodes and tasks

        #SBATCH --export=NONE
        #SBATCH --open-mode=append
        #SBATCH --exclusive --wait-all-nodes=1
        #SBATCH -A account
        echo start
        #SBATCH --output=ignored.txt
        #SBATCH --array=1-3
        #PBS -l nodes=1
        """
    )
    script = read_job_script("slurmjob.sh")
    assert script == JobScript(
        Path("slurmjob.sh"),
        (
            "#SBATCH --job-name=demo",
            "#SBATCH -N 1 --ntasks-per-node=4  # nodes and tasks",
            "#SBATCH --export=NONE",
            "#SBATCH --open-mode=append",
            "#SBATCH --exclusive --wait-all-nodes=1",
            "#SBATCH -A account",
        ),
        None,
        "./slurmjob.sh",
    )


def test_indented_sbatch_line_is_ignored_as_sbatch_does(jobdir):
    # sbatch 22.05 only honours '#SBATCH' at the very start of a line: submitted directly,
    # this script gets the job name of the file, not 'indented'.
    write_script("#!/bin/bash\n  #SBATCH --job-name=indented\n#SBATCH -N 1\necho hi\n")
    script = read_job_script("slurmjob.sh")
    assert script.directives == ("#SBATCH -N 1",)
    assert "indented" not in render_wrapper(script)


def test_no_directives(jobdir):
    write_script("#!/bin/sh\necho hi\n")
    script = read_job_script("slurmjob.sh")
    assert script.directives == ()
    assert script.clusters is None


@pytest.mark.parametrize(
    ("directive", "clusters"),
    [
        ("#SBATCH -M x", "x"),
        ("#SBATCH -Mx", "x"),
        ("#SBATCH --clusters=x", "x"),
        ("#SBATCH --clusters x", "x"),
        ("#SBATCH --cluster=x", "x"),
        ("#SBATCH -N 1 -M a,b --mem=1G", "a,b"),
        ("#SBATCH --mem=1G", None),
    ],
)
def test_clusters(jobdir, directive, clusters):
    write_script(f"#!/bin/bash\n{directive}\necho hi\n")
    script = read_job_script("slurmjob.sh")
    assert script.clusters == clusters
    assert script.directives == (directive,)


def test_clusters_last_one_wins_and_after_command_ignored(jobdir):
    write_script("#!/bin/bash\n#SBATCH -M first\n#SBATCH -N 1\n#SBATCH -M second\nhostname\n")
    assert read_job_script("slurmjob.sh").clusters == "second"
    write_script("#!/bin/bash\n#SBATCH -N 1\nhostname\n#SBATCH -M late\n")
    assert read_job_script("slurmjob.sh").clusters is None


@pytest.mark.parametrize("mode", [0o755, 0o644])
def test_script_name_with_space_runs(jobdir, mode):
    write_script("#!/bin/bash\necho hi from $0\n", name="slurm job.sh", mode=mode)
    script = read_job_script("slurm job.sh")
    assert script.command == ("./'slurm job.sh'" if mode == 0o755 else "/bin/bash 'slurm job.sh'")
    result = subprocess.run(["bash"], input=render_wrapper(script), capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("hi from ")
    assert result.stdout.endswith("slurm job.sh\n")


@pytest.mark.parametrize(
    ("shebang", "name", "command"),
    [
        ("#!/usr/bin/env python3", "slurmjob.py", "/usr/bin/env python3 slurmjob.py"),
        ("#!/bin/bash", "slurmjob.sh", "/bin/bash slurmjob.sh"),
        ("#! /bin/bash -l", "slurmjob.sh", "/bin/bash -l slurmjob.sh"),
        # The kernel passes the rest of the shebang line as one argument.
        ("#!/usr/bin/env -S python3 -u", "slurmjob.py", "/usr/bin/env '-S python3 -u' slurmjob.py"),
    ],
)
def test_not_executable_uses_interpreter(jobdir, shebang, name, command):
    write_script(f"{shebang}\n#SBATCH -N 1\nprint('hi')\n", name=name, mode=0o644)
    script = read_job_script(name)
    assert script.command == command
    assert script.directives == ("#SBATCH -N 1",)


# The wrapper


def test_render_wrapper():
    script = JobScript(
        Path("slurmjob.py"),
        ("#SBATCH --job-name=demo", "#SBATCH -M x"),
        "x",
        "/usr/bin/env python3 slurmjob.py",
    )
    assert render_wrapper(script) == (
        "#!/usr/bin/env bash\n"
        "#SBATCH --job-name=demo\n"
        "#SBATCH -M x\n"
        "# Written by StepUp Queue: runs the job script and keeps its exit code.\n"
        ": > slurmjob.ret\n"
        "trap 'terminated=yes' TERM\n"
        "/usr/bin/env python3 slurmjob.py\n"
        "code=$?\n"
        "# A script ended by SLURM (scancel, time limit) leaves no exit code:\n"
        "# the step then reports SLURM's state for the job instead.\n"
        'if [ -z "${terminated:-}" ] && [ "$code" -ne 143 ] && [ "$code" -ne 137 ]; then\n'
        '    echo "$code" > slurmjob.ret\n'
        "fi\n"
        'exit "$code"\n'
    )


@pytest.mark.parametrize("signal", ["TERM", "KILL"])
def test_wrapper_keeps_no_exit_code_of_a_killed_script(jobdir, signal):
    """A script ended by a signal (as SLURM ends cancelled jobs) leaves slurmjob.ret empty."""
    write_script(f"#!/bin/bash\nkill -{signal} $$\n")
    wrapper = render_wrapper(read_job_script("slurmjob.sh"))
    result = subprocess.run(["bash"], input=wrapper, capture_output=True, text=True)
    assert result.returncode == {"TERM": 143, "KILL": 137}[signal]
    assert Path("slurmjob.ret").read_text() == ""


@pytest.mark.parametrize("code", [0, 3])
def test_wrapper_runs_script_and_keeps_exit_code(jobdir, code):
    """Run the wrapper with bash, as slurmd would, without SLURM."""
    write_script(f"#!/bin/bash\n#SBATCH -N 1\necho running\nexit {code}\n")
    wrapper = render_wrapper(read_job_script("slurmjob.sh"))
    result = subprocess.run(["bash"], input=wrapper, capture_output=True, text=True)
    assert result.returncode == code
    assert result.stdout == "running\n"
    assert Path("slurmjob.ret").read_text() == f"{code}\n"


def test_wrapper_empties_stale_ret_before_running(jobdir):
    Path("slurmjob.ret").write_text("0\n")
    write_script("#!/bin/bash\ncat slurmjob.ret | wc -c\nexit 5\n")
    wrapper = render_wrapper(read_job_script("slurmjob.sh"))
    result = subprocess.run(["bash"], input=wrapper, capture_output=True, text=True)
    assert result.stdout.strip() == "0"
    assert Path("slurmjob.ret").read_text() == "5\n"


JOBS = {
    "bash": (
        "slurmjob.sh",
        0o755,
        """
        #!/usr/bin/env bash
        #SBATCH --job-name=stepup-unit-wrapper-sh
        #SBATCH --time=00:05:00
        echo "hello from $(basename "$0")"
        echo "to stderr" >&2
        exit 3
        """,
    ),
    "python-not-executable": (
        "slurmjob.py",
        0o644,
        """
        #!/usr/bin/env python3
        #SBATCH --job-name=stepup-unit-wrapper-py
        import sys
        print("hello from python")
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """,
    ),
}


@pytest.mark.parametrize("kind", JOBS)
def test_wrapper_submitted_with_sbatch(slurm, jobdir, kind):
    name, mode, text = JOBS[kind]
    write_script(text, name=name, mode=mode)
    wrapper = render_wrapper(read_job_script(name))
    result = subprocess.run(
        ["sbatch", "--parsable", "-o", "slurmjob.out", "-e", "slurmjob.err"],
        input=wrapper,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    job_id = result.stdout.strip()
    assert job_id.isdigit()
    try:
        ret = Path("slurmjob.ret")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ret.is_file() and ret.read_text().strip() != "":
                break
            time.sleep(0.2)
        assert ret.read_text() == "3\n"
        expected = "hello from slurmjob.sh\n" if kind == "bash" else "hello from python\n"
        assert Path("slurmjob.out").read_text() == expected
        assert Path("slurmjob.err").read_text() == "to stderr\n"
        # The #SBATCH lines of the script reached sbatch through the wrapper.
        show = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True
        )
        assert f"JobName=stepup-unit-wrapper-{name[-2:]} " in show.stdout
        assert f"WorkDir={jobdir} " in show.stdout
    finally:
        subprocess.run(["scancel", job_id], check=False)

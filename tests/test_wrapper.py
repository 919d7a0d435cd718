"""Unit tests of the job script checks and the wrapper that is submitted in its place."""

import fcntl
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time

import pytest
from conftest import (
    FAILED_RC,
    HOST,
    SIMPLE_PLAN,
    Workflow,
    fake_command,
    run_requeued_again,
    sacct,
    scontrol_state,
    wait_for,
    with_bin,
)
from path import Path
from proctree import descendants

from stepup.queue.joblog import FORMAT_LINE, read_log
from stepup.queue.wrapper import (
    JobScript,
    JobScriptError,
    clear_ret,
    read_job_script,
    render_array_wrapper,
    render_wrapper,
)


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


def test_sbatch_line_after_first_command_is_warned_about(jobdir, capsys):
    """sbatch stops reading directives at the first command: a later #SBATCH line is ignored
    by SLURM, and by StepUp Queue (not in the wrapper), with a warning that says so."""
    write_script(
        """
        #!/bin/bash
        #SBATCH -N 1

        set -e
        #SBATCH --mem=1G
        echo hi
          #SBATCH --indented-is-ignored-anyway
        #SBATCH --job-name=late
        """
    )
    script = read_job_script("slurmjob.sh")
    assert script.directives == ("#SBATCH -N 1",)
    assert "--mem" not in render_wrapper(script)
    where = jobdir / "slurmjob.sh"
    hint = "SLURM ignores it: move it up, into the block of #SBATCH lines below the shebang line."
    assert capsys.readouterr().out.splitlines() == [
        f"Warning: the job script {where} has an #SBATCH line after its first command (line 4), "
        f"on line {lineno}: {line!r}. {hint}"
        for lineno, line in ((5, "#SBATCH --mem=1G"), (8, "#SBATCH --job-name=late"))
    ]
    # Read again (after rc): no second warning.
    read_job_script("slurmjob.sh", warn=False)
    assert capsys.readouterr().out == ""


def test_no_warning_without_late_sbatch_lines(jobdir, capsys):
    write_script("#!/bin/bash\n#SBATCH -N 1\n# #SBATCH --mem=1G (commented out)\necho hi\n")
    read_job_script("slurmjob.sh")
    assert capsys.readouterr().out == ""


def test_late_sbatch_line_warning_in_the_step_output(workflow: Workflow):
    """The warning reaches the user in the step's output, shown by StepUp; the job runs
    without the late option."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        #SBATCH --job-name=early
        echo hello
        #SBATCH --job-name=late
        """,
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout + result.stderr
    script = workflow.root / "job" / "slurmjob.sh"
    assert (
        f"Warning: the job script {script} has an #SBATCH line after its first command (line 3), "
        "on line 4: '#SBATCH --job-name=late'. SLURM ignores it"
    ) in " ".join(result.stdout.split())
    (record,) = workflow.final_jobs(1)
    assert record["JobName"] == "early"
    assert (workflow.root / "job" / "slurmjob.out").read_text() == "hello\n"


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


@pytest.mark.parametrize(
    ("env", "clusters"),
    [
        ({}, "script"),
        ({"SLURM_CLUSTERS": "b"}, "b"),
        ({"SBATCH_CLUSTERS": "c,d", "SLURM_CLUSTERS": "b"}, "c,d"),
        ({"SBATCH_CLUSTERS": ""}, "script"),
    ],
)
def test_clusters_from_environment(jobdir, env, clusters):
    """As in sbatch, SBATCH_CLUSTERS or SLURM_CLUSTERS override the script's -M."""
    write_script("#!/bin/bash\n#SBATCH -M script\nhostname\n")
    assert read_job_script("slurmjob.sh", env).clusters == clusters


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


RENDERED = JobScript(
    Path("slurm job.py"),
    ("#SBATCH --job-name=demo", "#SBATCH -M x  # a comment"),
    "x",
    "/usr/bin/env python3 'slurm job.py'",
)


def test_render_wrapper_fills_every_slot():
    """The #SBATCH lines come first, where sbatch reads them, and no slot is left."""
    text = render_wrapper(RENDERED, "stepup-queue-0123456789abcdef")
    lines = text.splitlines()
    assert lines[:3] == ["#!/usr/bin/env bash", *RENDERED.directives]
    assert re.search("@[A-Z]+@", text) is None
    assert "token=stepup-queue-0123456789abcdef\n" in text
    assert "exec /usr/bin/env python3 'slurm job.py' <&4" in text
    # A slot's value is not searched for slots.
    odd = JobScript(Path("x"), ("#SBATCH -J @TOKEN@",), None, "./@LOG@")
    assert "#SBATCH -J @TOKEN@\n" in render_wrapper(odd, "stepup-queue-0123456789abcdef")


WRAPPER_SH = Path(__file__).parent.parent / "stepup/queue/wrapper.sh"


@pytest.mark.parametrize("which", ["template", "rendered"])
def test_wrapper_passes_bash_n_and_shellcheck(tmp_path, which):
    """The template and a rendered wrapper are valid bash and pass shellcheck (as in CI)."""
    path = Path(tmp_path) / "wrapper.sh"
    if which == "template":
        WRAPPER_SH.copy(path)
    else:
        path.write_text(render_wrapper(RENDERED, "stepup-queue-0123456789abcdef"))
    result = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed: apt-get install shellcheck (tools/test.sh does)")
    result = subprocess.run(["shellcheck", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# The signals that the wrapper passes on to the script.
FORWARDED = ["HUP", "INT", "QUIT", "ABRT", "USR1", "USR2", "ALRM", "URG", "XCPU", "XFSZ"]
FORWARDED += ["VTALRM", "PROF", "WINCH"]


# The signals that the tests send to the wrapper.
SENT = [getattr(signal, f"SIG{name}") for name in FORWARDED] + [signal.SIGTERM]


def start_wrapper(
    name: str = "slurmjob.sh", stdin=subprocess.DEVNULL, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Run the wrapper of a script in the job folder with bash, from a file as slurmd does.

    On a cluster, slurmstepd starts the batch shell with every signal at its default; the shell
    that runs the tests may ignore some (nohup ignores SIGHUP, a shell without job control
    SIGINT and SIGQUIT in its background jobs), and bash cannot trap an ignored signal.
    The wrapper runs outside a SLURM job, as when the tests themselves run in one, unless
    `env` (added to the environment) says otherwise.
    """
    wrapper = Path("wrapper.sh")
    wrapper.write_text(render_wrapper(read_job_script(name)))
    saved = {sig: signal.signal(sig, signal.SIG_DFL) for sig in SENT}
    env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"} | (env or {})
    try:
        return subprocess.Popen(
            ["bash", wrapper],
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def read_line(wrapper: subprocess.Popen) -> str:
    """The next line that the script printed."""
    # Byte by byte: a buffered readline could hide later output from communicate().
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(wrapper.stdout.fileno(), 1)
        if byte == b"":
            pytest.fail(f"The script printed {line!r} and no more: {wrapper.communicate()}")
        line += byte
    return line.decode()


def script_pid(wrapper: subprocess.Popen) -> int:
    """The process id of the script that the wrapper runs, once it printed it on a line."""
    return int(read_line(wrapper))


@pytest.mark.parametrize("name", FORWARDED)
def test_wrapper_forwards_signal_to_script(jobdir, name):
    """A signal to the batch shell alone (`scancel -b`) reaches the script's trap."""
    write_script(f"""
        #!/bin/bash
        trap 'echo got {name}; kill $!; exit 5' {name}
        sleep 30 &
        echo $$
        wait
    """)
    wrapper = start_wrapper()
    script_pid(wrapper)
    wrapper.send_signal(getattr(signal, f"SIG{name}"))
    stdout, stderr = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stdout, stderr) == (5, f"got {name}\n", "")
    assert Path("slurmjob.ret").read_text() == "5\n"


def test_wrapper_waits_for_script_after_signals(jobdir):
    """The script outlives several forwarded signals, each handled; its exit code is kept."""
    write_script(
        """
        #!/usr/bin/env python3
        import os, signal, sys, time
        received = []
        for sig in signal.SIGUSR1, signal.SIGINT:
            signal.signal(sig, lambda number, frame: received.append(number))
        print(os.getpid(), flush=True)
        handled = 0
        while handled < 3:
            time.sleep(0.01)
            for number in received[handled:]:
                print(number, flush=True)
                handled += 1
        sys.exit(3)
        """,
        name="slurmjob.py",
    )
    wrapper = start_wrapper("slurmjob.py")
    script_pid(wrapper)
    for sig in signal.SIGUSR1, signal.SIGINT, signal.SIGUSR1:
        wrapper.send_signal(sig)
        # The next signal once the script handled this one: bash runs the traps of signals
        # that arrive during one poll in its own order, and only once per signal.
        assert read_line(wrapper) == f"{sig.value}\n"
    _, stderr = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stderr) == (3, "")
    assert Path("slurmjob.ret").read_text() == "3\n"


def test_wrapper_traps_of_signals_at_once(jobdir):
    """SIGINT and another signal in one poll: both reach the script, its exit code is kept.

    Without job control, bash 5.2 then ran the SIGINT trap only and wait gave 138. The handlers
    write with one os.write: a print is several writes, and the second handler can run between
    them.
    """
    write_script(
        """
        #!/usr/bin/env python3
        import os, signal, sys, time
        for sig in signal.SIGUSR1, signal.SIGINT:
            signal.signal(sig, lambda number, frame: os.write(1, b"got %d\\n" % number))
        print(os.getpid(), flush=True)
        time.sleep(1.5)
        sys.exit(3)
        """,
        name="slurmjob.py",
    )
    wrapper = start_wrapper("slurmjob.py")
    script_pid(wrapper)
    wrapper.send_signal(signal.SIGUSR1)
    wrapper.send_signal(signal.SIGINT)
    stdout, stderr = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, sorted(stdout.splitlines()), stderr) == (3, ["got 10", "got 2"], "")
    assert Path("slurmjob.ret").read_text() == "3\n"


def test_wrapper_ended_by_slurm_keeps_no_exit_code(jobdir):
    """SIGTERM to the wrapper and the script, as SLURM ends a job: slurmjob.ret stays empty.

    The script gets SIGTERM once, from SLURM, not again from the wrapper, and the wrapper
    waits until the script has ended.
    """
    write_script("""
        #!/bin/bash
        trap 'echo got TERM' TERM
        echo $$
        sleep 1 & wait
        echo done
        exit 0
    """)
    wrapper = start_wrapper()
    pid = script_pid(wrapper)
    wrapper.send_signal(signal.SIGTERM)
    os.kill(pid, signal.SIGTERM)
    stdout, stderr = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stdout, stderr) == (0, "got TERM\ndone\n", "")
    assert Path("slurmjob.ret").read_text() == ""


def fake_scontrol(bindir: Path, state: str | None, failures: int = 0) -> dict[str, str]:
    """A fake `scontrol show job` that fails `failures` times, then gives the state (or fails
    for good when it is `None`), and counts its calls in bindir/calls. Returns the environment
    of a wrapper in job 999 that runs it."""
    answer = f'echo "JobId=$3 JobName=x"\necho "   JobState={state} Reason=None"\n'
    fake_command(
        bindir,
        "scontrol",
        f'echo >> "{bindir}/calls"\n'
        f'if [ "$(wc -l < "{bindir}/calls")" -le {failures} ] || [ -z "{state or ""}" ]; then\n'
        "    echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\n"
        "    exit 1\n"
        f"fi\n{answer}",
    )
    return {"SLURM_JOB_ID": "999", "PATH": f"{bindir}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("state", "ret"),
    [("CANCELLED", ""), ("TIMEOUT", ""), ("RUNNING", "143\n"), (None, "143\n")],
)
def test_wrapper_script_ended_by_slurm_before_the_wrapper(jobdir, tmp_path, state, ret):
    """SLURM's SIGTERM ended the script before it reached the wrapper: no exit code, unless
    SLURM still lists the job as RUNNING, or cannot be asked (then the script's 143 is kept,
    and the step compares it with SLURM's state).

    SLURM signals the processes of a job one by one; here the script ends at its own SIGTERM
    and the wrapper gets none. A fake `scontrol` gives the job's state: a real SLURM does not
    hold a signal back on demand. Seen in CI: the step reported "exit code 143 (SLURM:
    CANCELLED)" for a cancelled job.
    """
    write_script("#!/bin/bash\nkill -TERM $$\n")
    env = fake_scontrol(Path(tmp_path) / "bin", state)
    wrapper = start_wrapper(env=env)
    stdout, stderr = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stdout, stderr) == (143, "", "")
    assert Path("slurmjob.ret").read_text() == ret


@pytest.mark.parametrize(
    ("state", "failures", "expected"),
    [
        (None, 0, (3, "got TERM\n", "0\n")),
        ("RUNNING", 2, (3, "got TERM\n", "0\n")),
        ("CANCELLED", 2, (3, "", "")),
        ("CANCELLED", 0, (1, "", "")),
    ],
)
def test_wrapper_sigterm_while_slurm_cannot_be_asked(jobdir, tmp_path, state, failures, expected):
    """A SIGTERM for the batch shell alone when scontrol fails: it asks three times, a second
    apart; when SLURM still cannot tell, the job counts as running: the script gets the signal
    and its exit code is kept (issue 15.5). The SIGTERM of a job that SLURM ends reaches the
    script from SLURM itself, not here.

    A fake `scontrol`: a real controller is unreachable only by accident.
    """
    write_script("""
        #!/bin/bash
        trap 'echo got TERM; exit 0' TERM
        echo $$
        sleep 10 & wait
    """)
    bindir = Path(tmp_path) / "bin"
    wrapper = start_wrapper(env=fake_scontrol(bindir, state, failures))
    script_pid(wrapper)
    wrapper.send_signal(signal.SIGTERM)
    calls, stdout, ret = expected
    out, stderr = wrapper.communicate(timeout=30)
    assert (out, stderr) == (stdout, "")
    assert (bindir / "calls").read_text() == "\n" * calls
    assert Path("slurmjob.ret").read_text() == ret


def test_wrapper_keeps_exit_code_of_script_ending_at_a_signal(jobdir):
    """The script ends the moment the wrapper traps a signal; its exit code is not lost.

    Bash 5.2 lost it (wait gave -1) now and then when the script ended while a trap
    interrupted wait; many wrappers at once make that moment likely.
    """
    wrappers = []
    for i in range(40):
        Path(f"../job{i}").makedirs_p()
        with Path(f"../job{i}"):
            write_script("#!/bin/bash\ntrap 'kill $!; exit 5' USR1\nsleep 30 &\necho $$\nwait\n")
            wrappers.append((Path.cwd(), start_wrapper()))
    pids = [script_pid(wrapper) for _, wrapper in wrappers]
    for (_, wrapper), pid in zip(wrappers, pids, strict=True):
        os.kill(pid, signal.SIGUSR1)
        wrapper.send_signal(signal.SIGUSR1)
    for folder, wrapper in wrappers:
        wrapper.communicate(timeout=30)
        assert (wrapper.returncode, (folder / "slurmjob.ret").read_text()) == (5, "5\n")


@pytest.mark.parametrize(("command", "code"), [("kill -TERM $$", 143), ("kill -KILL $$", 137)])
def test_wrapper_keeps_exit_code_of_a_script_killed_alone(jobdir, command, code):
    """A script killed by a signal that the wrapper did not get: its status is the exit code.

    As with plain sbatch, where the script is the batch shell, no line about it in stderr.
    """
    write_script(f"#!/bin/bash\necho to stderr >&2\n{command}\n")
    wrapper = start_wrapper()
    _, stderr = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stderr) == (code, "to stderr\n")
    assert Path("slurmjob.ret").read_text() == f"{code}\n"


def test_wrapper_script_that_cannot_start(jobdir):
    """Why the script did not start is in stderr; the exit code is bash's 127."""
    write_script("#!/nonexistent/interpreter\n")
    wrapper = start_wrapper()
    _, stderr = wrapper.communicate(timeout=10)
    assert wrapper.returncode == 127
    assert "slurmjob.sh: cannot execute: required file not found" in stderr
    assert Path("slurmjob.ret").read_text() == "127\n"


def test_wrapper_stopped_script_is_waited_for(jobdir):
    """A stopped script (scontrol suspend, kill -STOP) is no ended script."""
    write_script("#!/bin/bash\necho $$\nsleep 1\nexit 4\n")
    wrapper = start_wrapper()
    pid = script_pid(wrapper)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(1.5)
    assert wrapper.poll() is None
    os.kill(pid, signal.SIGCONT)
    _, stderr = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stderr) == (4, "")
    assert Path("slurmjob.ret").read_text() == "4\n"


def test_wrapper_passes_standard_input(jobdir, tmp_path):
    """The script reads the batch shell's standard input (`#SBATCH --input`), not /dev/null."""
    write_script("#!/bin/bash\necho $$\ncat\n")
    data = Path(tmp_path) / "input.txt"
    data.write_text("some input\n")
    with open(data) as stdin:
        wrapper = start_wrapper(stdin=stdin)
        script_pid(wrapper)
        stdout, _ = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stdout) == (0, "some input\n")


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


# The exit code belongs to the job that the log names (issue 15.11).

TOKEN = "stepup-queue-0123456789abcdef"
OTHER = "stepup-queue-fedcba9876543210"


@pytest.mark.parametrize(
    ("records", "cluster", "written"),
    [
        (None, None, True),
        (["Submitted 999"], None, True),
        (["Submitted 999;here"], "here", True),
        (["Submitted 999;here"], None, True),
        (["Submitted 998"], None, False),
        (["Submitted 999;there"], "here", False),
        ([f"Submitting {TOKEN}"], None, True),
        ([f"Submitting {OTHER}"], None, False),
        ([f"Submitting {OTHER}", f"Submitting {TOKEN}"], None, True),
        ([f"Submitting {TOKEN}", "Submitted 998"], None, False),
        (["Submitting"], None, False),
        ([], None, False),
    ],
)
def test_wrapper_writes_exit_code_of_the_logged_job_only(jobdir, records, cluster, written):
    """Job 999 (token TOKEN) writes slurmjob.ret only while slurmjob.log names it: by its last
    Submitted record, or, before that is written, by its token. Without a log, it writes."""
    if records is not None:
        lines = [FORMAT_LINE, "DIGEST"] + [
            f"2026-12-07T10:00:0{i}.000000 {record}" for i, record in enumerate(records)
        ]
        Path("slurmjob.log").write_text("\n".join(lines) + "\n")
    Path("slurmjob.ret").write_text("7\n")
    write_script("#!/bin/bash\nexit 0\n")
    Path("wrapper.sh").write_text(render_wrapper(read_job_script("slurmjob.sh"), TOKEN))
    env = os.environ | {"SLURM_JOB_ID": "999"}
    if cluster is not None:
        env["SLURM_CLUSTER_NAME"] = cluster
    result = subprocess.run(["bash", "wrapper.sh"], env=env, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    assert Path("slurmjob.ret").read_text() == ("0\n" if written else "7\n")


def test_wrapper_writes_under_the_lock_of_clear_ret(jobdir):
    """The wrapper waits for the lock that clear_ret takes on slurmjob.ret."""
    write_script("#!/bin/bash\necho ran\n")
    Path("slurmjob.ret").write_text("7\n")
    with open("slurmjob.ret", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        wrapper = start_wrapper()

        def waits_for_lock() -> bool:
            return any(
                Path(f"/proc/{pid}/comm").read_text().strip() == "flock"
                for pid in descendants(wrapper.pid)
                if Path(f"/proc/{pid}/comm").exists()
            )

        wait_for(waits_for_lock, 10, "the wrapper to wait for the lock")
        assert Path("slurmjob.ret").read_text() == "7\n"
    stdout, _ = wrapper.communicate(timeout=10)
    assert (wrapper.returncode, stdout) == (0, "ran\n")
    assert Path("slurmjob.ret").read_text() == "0\n"
    clear_ret()
    assert Path("slurmjob.ret").read_text() == ""


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


# Signals for the batch shell alone, in a real workflow on the real SLURM


def assert_step_failed_with(output: str, job_id: int, code: int):
    """The step failed with the script's exit code, as StepUp and StepUp Queue report it."""
    assert f"Job {job_id} ended with exit code {code}." in output
    pattern = rf"# exit={code}\n" if HOST >= 4 else rf"Return code +{code}\n"
    assert re.search(pattern, output), output


@pytest.mark.parametrize("signal", ["USR1", "TERM"])
def test_checkpoint_signal_reaches_script(workflow: Workflow, signal: str):
    """`--signal=B:SIG@50` with a one-minute limit: the script checkpoints and ends well.

    The SIGTERM that SLURM sends to every process of a job at its end is not passed on (see
    test_cancelled_job_leaves_no_process): one for the batch shell alone while the job runs is.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        f"""
        #!/usr/bin/env bash
        #SBATCH --time=1
        #SBATCH --signal=B:{signal}@50
        trap "echo ckpt; exit 0" {signal}
        sleep 100 & wait
        """,
    )
    result = workflow.boot()
    assert result.returncode == 0, result.stdout
    job = workflow.root / "job"
    assert (job / "slurmjob.out").read_text() == "ckpt\n"
    assert (job / "slurmjob.ret").read_text() == "0\n"
    (record,) = workflow.final_jobs(1)
    assert (record["State"], record["ExitCode"]) == ("COMPLETED", "0:0")


@pytest.mark.parametrize(
    ("signal", "code", "state"),
    [("USR2", 5, "FAILED"), ("INT", 0, "COMPLETED"), ("TERM", 0, "COMPLETED")],
)
def test_batch_signal_reaches_script(workflow: Workflow, signal: str, code: int, state: str):
    """`scancel -b -s SIG` signals the batch shell alone: the script's trap handles it."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        f"""
        #!/usr/bin/env bash
        trap "echo got {signal}; exit {code}" {signal}
        echo started
        sleep 60 & wait
        """,
    )
    proc = workflow.popen()
    job = workflow.root / "job"
    out = job / "slurmjob.out"
    wait_for(lambda: out.exists() and "started" in out.read_text(), 60, "the script to run")
    job_id = read_log(job / "slurmjob.log").job_id
    subprocess.run(["scancel", "-b", "-s", signal, str(job_id)], check=True)
    output, _ = proc.communicate(timeout=120)
    assert (job / "slurmjob.out").read_text() == f"started\ngot {signal}\n"
    assert (job / "slurmjob.ret").read_text() == f"{code}\n"
    if code == 0:
        assert proc.returncode == 0, output
    else:
        assert proc.returncode & FAILED_RC, output
        assert_step_failed_with(output, job_id, code)
    (record,) = workflow.final_jobs(1)
    assert (record["State"], record["ExitCode"]) == (state, f"{code}:0")


def test_full_batch_signal_reaches_the_scripts_children(workflow: Workflow):
    """`scancel --full -s USR1` signals the batch shell's process group: as with plain sbatch,
    the script's children get the signal too, not only the script (issue 15.7)."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        trap 'echo script got USR1' USR1
        bash -c 'trap "echo child got USR1; exit 0" USR1; echo started; sleep 60 & wait'
        """,
    )
    proc = workflow.popen()
    job = workflow.root / "job"
    out = job / "slurmjob.out"
    wait_for(lambda: out.exists() and "started" in out.read_text(), 60, "the script to run")
    job_id = read_log(job / "slurmjob.log").job_id
    subprocess.run(["scancel", "--full", "-s", "USR1", str(job_id)], check=True)
    wait_for(lambda: "child got USR1" in out.read_text(), 30, "the script's child to get USR1")
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    # The script gets the signal from SLURM, and again from the wrapper (see docs/internals.md).
    assert out.read_text().startswith("started\nchild got USR1\nscript got USR1\n")
    assert (job / "slurmjob.ret").read_text() == "0\n"


def scontrol_failing_in_jobs(workflow: Workflow) -> dict[str, str]:
    """The PATH of the workflow with an scontrol that fails inside a job (SLURM_JOB_ID set),
    as when slurmctld cannot be reached from the compute node, and is the real one elsewhere.

    A fake scontrol: a real controller is unreachable only by accident.
    """
    bindir = workflow.root.parent / "broken"
    fake_command(
        bindir,
        "scontrol",
        'if [ -n "${SLURM_JOB_ID:-}" ]; then\n'
        "    echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\n"
        "    exit 1\n"
        "fi\n"
        f'exec {shutil.which("scontrol")} "$@"\n',
    )
    return with_bin(workflow, bindir)


def test_batch_sigterm_reaches_script_when_scontrol_fails(workflow: Workflow):
    """`scancel -b -s TERM` while the job cannot ask SLURM its state: the job counts as
    running, the script's trap gets the signal and its exit code is the step's (issue 15.5)."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        trap "echo got TERM; exit 0" TERM
        echo started
        sleep 60 & wait
        """,
    )
    proc = workflow.popen(env=scontrol_failing_in_jobs(workflow))
    job = workflow.root / "job"
    out = job / "slurmjob.out"
    wait_for(lambda: out.exists() and "started" in out.read_text(), 60, "the script to run")
    job_id = read_log(job / "slurmjob.log").job_id
    subprocess.run(["scancel", "-b", "-s", "TERM", str(job_id)], check=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert out.read_text() == "started\ngot TERM\n"
    assert (job / "slurmjob.ret").read_text() == "0\n"
    (record,) = workflow.final_jobs(1)
    assert (record["State"], record["ExitCode"]) == ("COMPLETED", "0:0")


def test_late_exit_code_of_a_replaced_job_is_not_taken(workflow: Workflow):
    """The inputs changed (onchange=resubmit) and the old job ends by itself with 0 just as the
    step replaces it: its late 0 is never read as the new job's exit code (issue 15.11).

    That race, a job that ends the moment it is cancelled, cannot be made on demand with real
    SLURM: a fake scancel on the workflow's PATH reports success and leaves the old job
    running. Each script is one compound command, read by bash before the file is rewritten.
    """
    bindir = workflow.root.parent / "broken"
    fake_command(bindir, "scancel", "exit 0\n")
    env = with_bin(workflow, bindir) | {"STEPUP_QUEUE_ONCHANGE": "resubmit"}
    workflow.plan(SIMPLE_PLAN)
    wait_for_file = "while [ ! -e {0} ]; do sleep 0.2; done"
    job = workflow.root / "job"
    workflow.job(
        "job", f"#!/usr/bin/env bash\n{{ echo old; {wait_for_file.format('go-old')}; exit 0; }}\n"
    )
    proc = workflow.popen(env=env)
    log = job / "slurmjob.log"
    out = job / "slurmjob.out"
    wait_for(lambda: out.exists() and "old" in out.read_text(), 60, "the old job to run")
    wait_for(lambda: " Submitted " in log.read_text(), 60, "the old job's Submitted record")
    old_id = read_log(log).job_id
    workflow.kill(proc)
    workflow.job(
        "job", f"#!/usr/bin/env bash\n{{ echo new; {wait_for_file.format('go-new')}; exit 3; }}\n"
    )
    proc = workflow.popen(env=env)

    def replaced() -> bool:
        text = log.read_text() if log.exists() else ""
        return " Submitted " in text and read_log(log).job_id != old_id

    wait_for(replaced, 60, "the new job's Submitted record")
    new_id = read_log(log).job_id
    (job / "go-old").touch()
    wait_for(lambda: scontrol_state(old_id) in ("COMPLETED", None), 60, "the old job to end")
    (job / "go-new").touch()
    output, _ = proc.communicate(timeout=120)
    assert f"Inputs changed: cancelled the old job {old_id}" in output
    assert proc.returncode & FAILED_RC, output
    assert_step_failed_with(output, new_id, 3)
    assert (job / "slurmjob.ret").read_text() == "3\n"


@pytest.mark.parametrize("code", [137, 143])
def test_script_exit_code_of_a_signal(workflow: Workflow, code: int):
    """A script that exits with 137 or 143 itself: that exit code is the step's."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", f"#!/usr/bin/env bash\nexit {code}\n")
    result = workflow.boot()
    assert result.returncode & FAILED_RC, result.stdout
    assert_step_failed_with(
        result.stdout, read_log(workflow.root / "job/slurmjob.log").job_id, code
    )
    assert (workflow.root / "job/slurmjob.ret").read_text() == f"{code}\n"
    (record,) = workflow.final_jobs(1)
    # As for plain sbatch: SLURM 22.05 records a batch exit code above 128 less 128.
    assert (record["State"], record["ExitCode"]) == ("FAILED", f"{code - 128}:0")


def test_cancelled_job_leaves_no_process(workflow: Workflow):
    """scancel ends the script and its children, though the wrapper runs it with job control.

    The SIGTERM that SLURM sends to all processes of the job is not passed on: the script's
    trap runs once, no exit code is kept, and the step reports SLURM's CANCELLED.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job(
        "job",
        """
        #!/usr/bin/env bash
        trap "echo got TERM" TERM
        echo $$ > pids
        sleep 300 &
        echo $! >> pids
        echo started
        wait
        sleep 300
        """,
    )
    proc = workflow.popen()
    job = workflow.root / "job"
    out = job / "slurmjob.out"
    wait_for(lambda: out.exists() and "started" in out.read_text(), 60, "the script to run")
    job_id = read_log(job / "slurmjob.log").job_id
    pids = [int(word) for word in (job / "pids").read_text().split()]
    subprocess.run(["scancel", str(job_id)], check=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode & FAILED_RC, output
    assert f"Job {job_id} ended without an exit code in slurmjob.ret" in output
    assert "Last state reported by SLURM: CANCELLED" in output
    (record,) = workflow.final_jobs(1)
    # sacct adds "by UID" to CANCELLED.
    assert record["State"].startswith("CANCELLED")

    def all_ended() -> bool:
        ps = subprocess.run(
            ["ps", "-o", "pid=", "-p", ",".join(map(str, pids))], capture_output=True, check=False
        )
        return ps.returncode != 0

    wait_for(all_ended, 30, f"the processes {pids} of the cancelled job to end")
    assert out.read_text() == "started\ngot TERM\n"
    assert (job / "slurmjob.ret").read_text() == ""


# Requeued jobs: the step reports the exit code of the last run.

REQUEUE_SCRIPT = """
#!/usr/bin/env bash
echo "run ${SLURM_RESTART_COUNT:-0}"
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then exit 3; fi
%s
"""


def squeue_state(job_id: int) -> str:
    """The state of a job in squeue, empty when squeue does not list it."""
    result = subprocess.run(
        ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True
    )
    return result.stdout.strip()


def start_first_run(workflow: Workflow, first: str) -> tuple[subprocess.Popen, Path, int]:
    """Start a workflow whose job runs `first` in its first run; return the workflow's
    process, the job folder and the job id once the first run started."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", REQUEUE_SCRIPT % first)
    proc = workflow.popen()
    job = workflow.root / "job"
    out = job / "slurmjob.out"
    wait_for(lambda: out.exists() and "run 0" in out.read_text(), 60, "the first run")
    return proc, job, read_log(job / "slurmjob.log").job_id


def test_requeued_job_reports_last_run(workflow: Workflow):
    """`scontrol requeue` of a running job: the step waits for the next run and its code."""
    proc, job, job_id = start_first_run(workflow, "sleep 300")
    out = job / "slurmjob.out"
    subprocess.run(["scontrol", "requeue", str(job_id)], check=True)
    run_requeued_again(job_id)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode & FAILED_RC, output
    assert_step_failed_with(output, job_id, 3)
    assert out.read_text() == "run 1\n"
    assert (job / "slurmjob.ret").read_text() == "3\n"
    (record,) = workflow.final_jobs(1)
    assert (record["State"], record["ExitCode"]) == ("FAILED", "3:0")


@pytest.fixture(params=["RequeueExit", "RequeueExitHold"])
def requeue_exit(request) -> str:
    """For one test, SLURM requeues a job whose script exits with 42 (held, for ...Hold)."""
    conf = Path("/etc/slurm/slurm.conf")
    original = conf.read_text()
    assert "RequeueExit" not in original
    conf.write_text(f"{original}{request.param}=40-42,50\n")
    try:
        subprocess.run(["scontrol", "reconfigure"], check=True)
        yield request.param
    finally:
        conf.write_text(original)
        subprocess.run(["scontrol", "reconfigure"], check=True)


@pytest.mark.serial
def test_requeue_exit_code_is_not_final(workflow: Workflow, requeue_exit: str):
    """A script exits with a code in RequeueExit(Hold): SLURM runs the job again.

    The step reports the exit code of the run after it, not 42. This test changes slurm.conf
    for a moment, so it runs alone.
    """
    proc, job, job_id = start_first_run(workflow, "exit 42")
    if requeue_exit == "RequeueExit":
        run_requeued_again(job_id)
    else:
        # A held job runs again once it is released.
        wait_for(lambda: squeue_state(job_id) == "SPECIAL_EXIT", 60, f"job {job_id} to be held")
        subprocess.run(["scontrol", "release", str(job_id)], check=True)
        run_requeued_again(job_id)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode & FAILED_RC, output
    assert_step_failed_with(output, job_id, 3)
    assert f"Job {job_id} exited with code 42, which SLURM's RequeueExit or" in output
    assert (job / "slurmjob.ret").read_text() == "3\n"
    (record,) = workflow.final_jobs(1)
    assert (record["State"], record["ExitCode"]) == ("FAILED", "3:0")


@pytest.mark.serial
def test_requeued_job_cancelled(workflow: Workflow, requeue_exit: str):
    """The job is cancelled while SLURM holds it for its next run: the step reports both.

    SLURM requeues a job on a code in RequeueExit even with `--no-requeue`.
    """
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\n#SBATCH --no-requeue\nexit 42\n")
    proc = workflow.popen()
    job = workflow.root / "job"
    ret = job / "slurmjob.ret"
    wait_for(lambda: ret.exists() and ret.read_text() == "42\n", 60, "the first run")
    job_id = read_log(job / "slurmjob.log").job_id
    requeued = {"RequeueExit": "PENDING", "RequeueExitHold": "SPECIAL_EXIT"}[requeue_exit]
    wait_for(lambda: squeue_state(job_id) == requeued, 60, f"job {job_id} to be requeued")
    subprocess.run(["scancel", str(job_id)], check=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode & FAILED_RC, output
    assert f"Job {job_id} ended with exit code 42 (SLURM: CANCELLED)." in output
    # Asked by job id: with a time window (as in final_jobs) sacct lists the requeued run.
    (record,) = sacct("-j", str(job_id))
    assert record["State"].startswith("CANCELLED")


def test_array_wrapper_passes_bash_n_and_shellcheck(tmp_path):
    """A rendered wrapper of a job array is valid bash and passes shellcheck (as in CI)."""
    path = Path(tmp_path) / "wrapper.sh"
    path.write_text(
        render_array_wrapper(
            ("#SBATCH -N 1",),
            ["/a b/x", "/c"],
            ["./slurmjob.sh", "/usr/bin/env python3 slurmjob.py"],
            "stepup-queue-0123456789abcdef",
            "/a b/.stepup-queue/arrays/slurmarray/ended",
        )
    )
    result = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed: apt-get install shellcheck (tools/test.sh does)")
    result = subprocess.run(["shellcheck", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("submitted", "task", "written"),
    [("77_1", "1", True), ("77_1", "0", False), ("78_1", "1", False), ("77", "1", False)],
)
def test_array_wrapper_runs_the_task_folder_script(tmp_path, submitted, task, written):
    """Task N runs the script of folder N there; its exit code is kept only when the folder's
    log names this task (ARRAYID_N). Every task marks its end in the step's folder of ended
    tasks."""
    folders = [Path(tmp_path) / name for name in ("first", "second folder")]
    for number, folder in enumerate(folders):
        folder.makedirs_p()
        script = folder / "slurmjob.sh"
        body = f'echo task {number} in $(basename "$PWD")\nexit 3\n'
        script.write_text(f"#!/usr/bin/env bash\n{body}")
        (folder / "slurmjob.log").write_text(
            f"{FORMAT_LINE}\nD\n2026-01-01T00:00:00.000000 Submitted {submitted}\n"
        )
    script.chmod(0o755)
    wrapper = Path(tmp_path) / "wrapper.sh"
    wrapper.write_text(
        render_array_wrapper(
            (),
            [str(f) for f in folders],
            ["bash slurmjob.sh", "./slurmjob.sh"],
            "stepup-queue-0123456789abcdef",
            str(Path(tmp_path) / "ended dir"),
        )
    )
    (Path(tmp_path) / "ended dir").makedirs_p()
    env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
    env |= {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": task}
    result = subprocess.run(
        ["bash", wrapper], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=30
    )
    index = int(task)
    assert result.returncode == 3
    assert result.stdout == f"task {index} in {folders[index].name}\n"
    ret = folders[index] / "slurmjob.ret"
    assert ret.read_text() == ("3\n" if written else "")
    assert [p.name for p in (Path(tmp_path) / "ended dir").iterdir()] == [f"77_{task}"]

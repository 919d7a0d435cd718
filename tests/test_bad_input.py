"""Bad input gets a clear error before anything reaches SLURM, and no file is touched.

End-to-end, like tests/test_lifecycle.py: a real `stepup boot` on the real local SLURM. For each
bad input the step (or plan.py) fails, its output names the file, what is wrong and how to fix
it, no job reaches SLURM (neither squeue nor sacct know one from the workflow's folders) and
every file in the job folder keeps its bytes and mode.
"""

import subprocess
import time

import pytest
from conftest import SIMPLE_PLAN, Workflow, wait_for
from path import Path

from stepup.queue.joblog import FORMAT_LINE

# A placeholder for the step's digest: never the real one, and a valid second line of a log.
OTHER_DIGEST = "0123456789abcdef"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below a folder (relative path) with its bytes and permission bits."""
    return {
        str(path.relpath(folder)): (path.read_bytes(), path.stat().st_mode & 0o7777)
        for path in sorted(folder.walkfiles())
    }


def assert_nothing_submitted(workflow: Workflow, since: float):
    """No job from the workflow's folders reached SLURM, neither in squeue nor in sacct."""
    result = subprocess.run(
        ["squeue", "--me", "-t", "all", "-h", "-o", "%i|%Z"],
        capture_output=True,
        text=True,
        check=True,
    )
    root = str(workflow.root)
    assert [line for line in result.stdout.splitlines() if root in line] == []
    # sacct learns about a new job a moment after its submission.
    time.sleep(max(0.0, since + 2.0 - time.monotonic()))
    assert workflow.jobs() == []


def assert_rejected(
    workflow: Workflow,
    result: subprocess.CompletedProcess,
    before: dict[str, tuple[bytes, int]],
    *phrases: str,
    folder: str = "job",
    ask_slurm: bool = True,
):
    """The failed step's output holds all phrases; nothing was submitted or touched.

    Every file in the job folder keeps its bytes and mode, so in particular no log with a
    `Submitting` record (written before sbatch runs) was made. With `ask_slurm`, also check
    that SLURM knows no job from the workflow's folders.
    """
    done = time.monotonic()
    output = result.stdout
    assert result.returncode != 0, output
    assert "FAIL" in output, output
    for phrase in phrases:
        assert phrase in output, f"{phrase!r} not in:\n{output}"
    assert snapshot(workflow.root / folder) == before
    if ask_slurm:
        assert_nothing_submitted(workflow, done)


def job_file(workflow: Workflow, name: str = "slurmjob.sh", folder: str = "job") -> str:
    """A file in a job folder as the error messages name it: the real, absolute path."""
    return str(workflow.root.realpath() / folder / name)


def bad_script_case(workflow: Workflow, body: str, *, mode: int = 0o755):
    """A workflow with one sbatch step whose job script is `body` (bytes or text)."""
    workflow.plan(SIMPLE_PLAN)
    path = workflow.root / "job/slurmjob.sh"
    path.parent.makedirs_p()
    if isinstance(body, str):
        body = body.encode()
    path.write_bytes(body)
    path.chmod(mode)
    return snapshot(workflow.root / "job")


#
# Missing job script
#


def test_missing_job_script_declared_static(workflow: Workflow):
    """StepUp itself refuses a static job script that does not exist: plan.py fails."""
    workflow.plan(SIMPLE_PLAN)
    (workflow.root / "job").makedirs_p()
    (workflow.root / "job/notes.txt").write_text("a file of the user\n")
    before = snapshot(workflow.root / "job")
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        f"FAIL │ {workflow.plan_label}",
        "Path does not exist: job/slurmjob.sh",
    )
    assert "sbatch" not in result.stdout.split("Standard error")[0]


@pytest.mark.parametrize(
    ("existing", "ext", "missing"),
    [
        (None, "", "job/slurmjob.sh"),
        # A job script with another extension than the one given to sbatch().
        ("slurmjob.sh", "py", "job/slurmjob.py"),
    ],
)
def test_missing_job_script_not_declared(workflow: Workflow, existing, ext, missing):
    """Without a (declared) job script the step never runs: StepUp reports what it awaits."""
    workflow.plan(f"""
        static("job/")
        sbatch("job/", ext={ext!r})
    """)
    if existing is None:
        (workflow.root / "job").makedirs_p()
    else:
        workflow.job("job", "#!/usr/bin/env bash\necho hi\n", name=existing)
    before = snapshot(workflow.root / "job")
    result = workflow.boot()
    done = time.monotonic()
    output = result.stdout
    assert result.returncode != 0, output
    if workflow.host < 4:
        assert "Incomplete requirements" in output
        assert f"AWAITED  {missing}" in output
        assert "PENDING Step" in output
    else:
        assert "1 step(s) remained pending." in output
        assert f"UNDECLARED: ({missing})  1 step(s)" in output
    assert snapshot(workflow.root / "job") == before
    assert_nothing_submitted(workflow, done)


#
# Job scripts that cannot be submitted
#


@pytest.mark.parametrize(
    ("body", "mode"),
    [
        pytest.param(b"", 0o755, id="empty"),
        pytest.param(b"echo hello\n", 0o755, id="command"),
        # Not executable, as rendered from a template: the same check.
        pytest.param(b"echo hello\n", 0o644, id="command-644"),
        pytest.param(b"#SBATCH --job-name=x\necho hello\n", 0o755, id="directive"),
        pytest.param(b"#!\necho hello\n", 0o755, id="no-interpreter"),
        pytest.param(b"#!   \necho hello\n", 0o644, id="blank-interpreter-644"),
        pytest.param(b"\n#!/usr/bin/env bash\necho hello\n", 0o755, id="blank-first-line"),
        pytest.param(b" #!/usr/bin/env bash\necho hello\n", 0o755, id="indented"),
    ],
)
def test_no_shebang(workflow: Workflow, body: bytes, mode: int):
    before = bad_script_case(workflow, body, mode=mode)
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        f"Error: The job script {job_file(workflow)} does not start with a shebang line",
        "Add one as its first line, e.g. '#!/usr/bin/env bash'",
    )
    assert "Traceback" not in result.stdout


def test_byte_order_mark(workflow: Workflow):
    """Neither the kernel nor sbatch accept a shebang behind a UTF-8 byte order mark."""
    before = bad_script_case(workflow, b"\xef\xbb\xbf#!/usr/bin/env bash\necho hello\n")
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        f"Error: The job script {job_file(workflow)} starts with a byte order mark",
        "Save it as UTF-8 without a byte order mark.",
    )


# Why each option is refused, as the error message explains it.
WHY = {
    "--output": "StepUp Queue sends the job's standard output to slurmjob.out.",
    "--error": "StepUp Queue sends the job's standard error to slurmjob.err.",
    "--array": "job arrays are not supported: use one sbatch() step per job.",
    "--chdir": "the job must run in its own folder, where StepUp Queue expects its files.",
    "--comment": "StepUp Queue tags each job with a comment to find it after a crash.",
    "--wait": "the step itself waits for the job; sbatch must return once it is queued.",
    "--test-only": "it makes sbatch check the script without submitting a job.",
}


@pytest.mark.parametrize(
    ("directive", "option"),
    [
        ("-o out.txt", "--output"),
        ("-oout.txt", "--output"),
        ("--output=out.txt", "--output"),
        ("--output out.txt", "--output"),
        ("--out=out.txt", "--output"),
        ("--job-name=x -o out.txt", "--output"),
        ("-e err.txt", "--error"),
        ("-eerr.txt", "--error"),
        ("--error=err.txt", "--error"),
        ("--error err.txt", "--error"),
        ("--array=1-3", "--array"),
        ("--array 1-3", "--array"),
        ("--arr=1-3", "--array"),
        ("-a 1-3", "--array"),
        ("-a1-3%1", "--array"),
        ("-D /tmp", "--chdir"),
        ("--chdir=/tmp", "--chdir"),
        ("--comment=mine", "--comment"),
        ("--wait", "--wait"),
        ("-W", "--wait"),
        ("--test-only", "--test-only"),
    ],
)
def test_forbidden_option(workflow: Workflow, directive: str, option: str):
    line = f"#SBATCH {directive}"
    before = bad_script_case(
        workflow, f"#!/usr/bin/env bash\n#SBATCH --time=1\n\n{line}\necho hello\n"
    )
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        f"Error: The job script {job_file(workflow)} sets {option} on line 4: {line!r}.",
        f"Remove that option: {WHY[option]}",
    )
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize(
    ("directive", "scheduler"),
    [
        ("#PBS -l walltime=1:00:00", "PBS/Torque"),
        ("#PBS -N job", "PBS/Torque"),
        ("#BSUB -n 4", "LSF"),
        ("#COBALT -t 10", "Cobalt"),
        ("#$ -cwd", "SGE"),
        ("#$", "SGE"),
        ("  #PBS -q debug", "PBS/Torque"),
    ],
)
def test_other_scheduler_directive(workflow: Workflow, directive: str, scheduler: str):
    before = bad_script_case(
        workflow, f"#!/usr/bin/env bash\n#SBATCH --time=1\n# a comment\n{directive}\necho hi\n"
    )
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        f"Error: The job script {job_file(workflow)} has a {scheduler} directive on line 4: "
        f"{directive.strip()!r}.",
        "StepUp Queue submits to SLURM only: translate it to an #SBATCH line or remove it.",
    )
    assert "Traceback" not in result.stdout


def test_unparsable_directive(workflow: Workflow):
    line = "#SBATCH --job-name='unbalanced"
    before = bad_script_case(workflow, f"#!/usr/bin/env bash\n{line}\necho hi\n")
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        f"Error: The job script {job_file(workflow)} has an #SBATCH line that cannot be "
        f"parsed on line 2: {line!r}",
        "Fix its quotes.",
    )
    assert "Traceback" not in result.stdout


def test_not_utf8_script(workflow: Workflow):
    """A Latin-1 comment: refused before submission, the file is named."""
    before = bad_script_case(workflow, b"#!/usr/bin/env bash\n# caf\xe9\necho hi\n")
    result = workflow.boot()
    assert_rejected(
        workflow, result, before, f"Error: The job script {job_file(workflow)} is not UTF-8"
    )
    assert "Traceback" not in result.stdout


def test_not_utf8_script_says_how_to_fix(workflow: Workflow):
    bad_script_case(workflow, b"#!/usr/bin/env bash\n# caf\xe9\necho hi\n")
    result = workflow.boot()
    assert result.returncode != 0
    error = next(line for line in result.stdout.splitlines() if line.startswith("Error: "))
    assert job_file(workflow) in error
    # A fix, e.g. "Save it as UTF-8 (iconv -f latin1 -t utf-8)" or "Convert it to UTF-8".
    assert any(word in error.lower() for word in ("save", "convert", "iconv", "encode")), error


@pytest.mark.parametrize("mode", [0o755, 0o644])
def test_dos_line_breaks(workflow: Workflow, mode: int):
    before = bad_script_case(
        workflow, "#!/usr/bin/env bash\r\n#SBATCH --time=1\r\necho hi\r\n", mode=mode
    )
    result = workflow.boot()
    assert_rejected(workflow, result, before, f"Error: The job script {job_file(workflow)}")
    assert "line breaks" in result.stdout.lower() or "crlf" in result.stdout.lower()


#
# Reserved extensions: refused in plan.py, before a step exists
#


@pytest.mark.parametrize("ext", [".log", "log", ".out", ".err", ".ret"])
def test_reserved_ext(workflow: Workflow, ext: str):
    name = "slurmjob." + ext.lstrip(".")
    workflow.plan(f"""
        static("job/", "job/{name}")
        sbatch("job/", ext={ext!r})
    """)
    workflow.job("job", "#!/usr/bin/env bash\necho hi\n", name=name)
    before = snapshot(workflow.root / "job")
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        f"FAIL │ {workflow.plan_label}",
        'File "./plan.py", line 6, in <module>',
        f"ValueError: ext='.{ext.lstrip('.')}' is not allowed: {name} is written by StepUp Queue.",
        "Use another extension for the job script, e.g. '.sh' (the default) or '.py'.",
    )


#
# Corrupt job logs: refused before the digest is even compared, the log is kept as it is
#


def _record(text: str) -> str:
    return f"2026-01-01T00:00:00.000000 {text}\n"


BAD_LOGS = {
    "empty": (b"", 1, f"the first line must be {FORMAT_LINE!r}, found an empty file"),
    "wrong-first-line": (
        f"StepUp Queue sbatch wait log format version 1\n{OTHER_DIGEST}\n".encode(),
        1,
        (
            f"the first line must be {FORMAT_LINE!r}, found "
            "'StepUp Queue sbatch wait log format version 1'"
        ),
    ),
    "not-a-log": (
        b"hello world\n",
        1,
        f"the first line must be {FORMAT_LINE!r}, found 'hello world'",
    ),
    "not-utf8": (b"\xff\xfe\x00garbage\n", 1, "it is not UTF-8 text"),
    "no-digest": (f"{FORMAT_LINE}\n".encode(), 2, "the second line must hold the input digest"),
    "empty-digest": (
        f"{FORMAT_LINE}\n\n{_record('Submitted 12')}".encode(),
        2,
        "the second line must hold the input digest",
    ),
    "digest-with-space": (
        f"{FORMAT_LINE}\nnot a digest\n".encode(),
        2,
        "the second line must hold the input digest",
    ),
    "garbage-record": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\nthis is garbage\n".encode(),
        3,
        "no valid date and time at the start of 'this is garbage'",
    ),
    "unknown-record": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Hello world')}".encode(),
        3,
        "cannot understand the record 'Hello world'",
    ),
    "state-before-submitted": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('RUNNING')}".encode(),
        3,
        "cannot understand the record 'RUNNING'",
    ),
    "submitted-empty": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Submitted')}".encode(),
        3,
        "Expected 'ID' or 'ID;CLUSTER', got ''",
    ),
    "submitted-word": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Submitted batch job 12')}".encode(),
        3,
        "Expected 'ID' or 'ID;CLUSTER', got 'batch job 12'",
    ),
    "submitted-empty-cluster": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Submitted 12;')}".encode(),
        3,
        "Expected 'ID' or 'ID;CLUSTER', got '12;'",
    ),
    "submitted-two-clusters": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Submitted 12;a;b')}".encode(),
        3,
        "Expected 'ID' or 'ID;CLUSTER', got '12;a;b'",
    ),
    "submitted-cluster-space": (
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Submitted 12;my cluster')}".encode(),
        3,
        "Expected 'ID' or 'ID;CLUSTER', got '12;my cluster'",
    ),
    "submitted-twice": (
        (
            FORMAT_LINE + f"\n{OTHER_DIGEST}\n" + _record("Submitted 12") + _record("Submitted 13")
        ).encode(),
        4,
        "a second Submitted record",
    ),
}


def assert_log_rejected(
    workflow: Workflow, result, before, lineno: int, what: str, *, ask_slurm: bool = True
):
    """The log is refused with the line and the problem; the step's header names its folder."""
    assert_rejected(
        workflow,
        result,
        before,
        f"FAIL │ {workflow.label('job')}",
        "Error: Invalid job log ",
        f"slurmjob.log (line {lineno}): {what}",
        "This file is written by StepUp Queue and should not be edited.",
        "make sure it is no longer queued or running (squeue --me), then remove the file by hand",
        ask_slurm=ask_slurm,
    )
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize(("content", "lineno", "what"), BAD_LOGS.values(), ids=BAD_LOGS.keys())
def test_corrupt_log(workflow: Workflow, content: bytes, lineno: int, what: str):
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho hi\n")
    (workflow.root / "job/slurmjob.log").write_bytes(content)
    before = snapshot(workflow.root / "job")
    result = workflow.boot()
    assert_log_rejected(workflow, result, before, lineno, what)


def test_corrupt_log_named_with_full_path(workflow: Workflow):
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho hi\n")
    (workflow.root / "job/slurmjob.log").write_text(f"{FORMAT_LINE}\n{OTHER_DIGEST}\ngarbage\n")
    result = workflow.boot()
    assert result.returncode != 0
    log = job_file(workflow, "slurmjob.log")
    assert f"Error: Invalid job log {log} (line 3): " in result.stdout


def _learn_digest(workflow: Workflow) -> str:
    """Boot once with a log of another digest: the error tells the digest of the step."""
    before = snapshot(workflow.root / "job")
    digest = workflow.step_digest("job", keep=True)
    # Even this first boot submits nothing and leaves the log alone.
    after = snapshot(workflow.root / "job")
    assert after.pop("slurmjob.log")[0].startswith(b"StepUp Queue sbatch wait log format")
    assert after == before
    return digest


def test_corrupt_log_with_matching_digest(workflow: Workflow):
    """The digest is the step's own, so only the bad record can make the step fail."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho hi\n")
    digest = _learn_digest(workflow)
    assert digest != OTHER_DIGEST
    token = "Submitting stepup-queue-0123456789abcdef"
    cases = [
        (f"{FORMAT_LINE}\n{digest}\nthis is garbage\n", 3, "no valid date and time"),
        (
            (
                f"{FORMAT_LINE}\n{digest}\n{_record(token)}{_record('Submitted 12')}"
                f"{_record('RUNNING')}garbage at the end\n"
            ),
            6,
            "no valid date and time at the start of 'garbage at the end'",
        ),
        (
            f"{FORMAT_LINE}\n{digest}\n{_record(token)}{_record('Submitted 12;')}",
            4,
            "Expected 'ID' or 'ID;CLUSTER', got '12;'",
        ),
        (
            f"{FORMAT_LINE}\n{digest}\n{_record('Submitted x12')}",
            3,
            "Expected 'ID' or 'ID;CLUSTER', got 'x12'",
        ),
    ]
    for content, lineno, what in cases:
        (workflow.root / "job/slurmjob.log").write_text(content)
        before = snapshot(workflow.root / "job")
        result = workflow.boot()
        assert_log_rejected(workflow, result, before, lineno, what, ask_slurm=False)
    assert_nothing_submitted(workflow, time.monotonic())


def test_log_of_other_inputs_is_kept(workflow: Workflow):
    """A log of a job submitted with other inputs: refused, with both digests shown."""
    workflow.plan(SIMPLE_PLAN)
    workflow.job("job", "#!/usr/bin/env bash\necho hi\n")
    (workflow.root / "job/slurmjob.log").write_text(
        f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Submitted 12')}"
    )
    before = snapshot(workflow.root / "job")
    result = workflow.boot()
    assert_rejected(
        workflow,
        result,
        before,
        "The inputs of this step changed since job 12 was submitted from "
        f"{job_file(workflow, 'slurmjob.log')}.",
        f"digest in the log:  {OTHER_DIGEST}",
        "digest of the step: ",
        f"stepup removejobs --all --commit {job_file(workflow, '')}".rstrip("/"),
        "STEPUP_QUEUE_ONCHANGE=resubmit",
    )


@pytest.mark.parametrize("case", ["other-digest", "failing-rc"])
def test_job_errors_without_traceback(workflow: Workflow, case: str):
    """Errors found after the checks (JobError) are shown as plainly as bad input."""
    workflow.job("job", "#!/usr/bin/env bash\necho hi\n")
    if case == "other-digest":
        workflow.plan(SIMPLE_PLAN)
        (workflow.root / "job/slurmjob.log").write_text(
            f"{FORMAT_LINE}\n{OTHER_DIGEST}\n{_record('Submitted 12')}"
        )
        expected = "Error: The inputs of this step changed"
    else:
        workflow.plan("""
            static("job/", "job/slurmjob.sh")
            sbatch("job/", rc="false")
        """)
        expected = "slurmjob.sh: `{ false"
    result = workflow.boot()
    done = time.monotonic()
    assert result.returncode != 0
    assert expected in result.stdout
    assert "Traceback" not in result.stdout
    assert_nothing_submitted(workflow, done)


#
# Paths with spaces and quotes: no shell injection
#

# A folder name that breaks any command built without quoting. StepUp substitutes `$VAR` in
# paths (and has no working escape for a literal `$`), so plan.py names it through a variable.
WEIRD_NAME = 'it\'s "quoted" $HOME;x $(touch "$SENTINEL");`touch "$SENTINEL"`|& touch injected'
# The extension of the job script, given to sbatch() directly: no `$` allowed.
WEIRD_EXT = ".a b'c\"d;touch injected;`touch injected`"
# Quotes in the rc command, which must reach bash as written.
RC = "export MSG='a b' Q=\"it's\"; true"


@pytest.mark.parametrize("mode", [0o755, 0o644])
def test_weird_paths(workflow: Workflow, mode: int):
    """Spaces, quotes and shell syntax in the job folder, the script name and rc: all inert."""
    sentinel = workflow.root.parent / "injected"
    env = {"WEIRD_NAME": WEIRD_NAME, "SENTINEL": str(sentinel)}
    # StepUp substitutes ${WEIRD_NAME} in plan.py; Python's repr() quotes the rest.
    plan_folder = "weird dir/${WEIRD_NAME}/"
    plan_script = f"{plan_folder}slurmjob{WEIRD_EXT}"
    workflow.plan(f"""
        static("weird dir/", {plan_folder!r}, {plan_script!r})
        sbatch({plan_folder!r}, ext={WEIRD_EXT!r}, rc={RC!r})
    """)
    folder = f"weird dir/{WEIRD_NAME}"
    workflow.job(
        folder,
        """
        #!/usr/bin/env bash
        #SBATCH --job-name="it's a job"
        #SBATCH --open-mode=append --export=ALL
        echo "$MSG|$Q"
        pwd
        echo "$0"
        """,
        name=f"slurmjob{WEIRD_EXT}",
        mode=mode,
    )
    script = workflow.root / folder / f"slurmjob{WEIRD_EXT}"
    before = script.read_bytes()
    result = workflow.boot(env=env)
    assert result.returncode == 0, result.stdout
    job = workflow.root.realpath() / folder
    lines = (job / "slurmjob.out").read_text().splitlines()
    assert lines[:2] == ["a b|it's", str(job)]
    assert lines[2].endswith(f"slurmjob{WEIRD_EXT}")
    assert (job / "slurmjob.err").read_text() == ""
    assert (job / "slurmjob.ret").read_text().strip() == "0"
    assert script.read_bytes() == before
    assert script.stat().st_mode & 0o777 == mode
    # Nothing ran that the names spelled out.
    assert not sentinel.exists()
    assert list(workflow.root.parent.walk("injected*")) == []
    assert sorted(p.name for p in job.files()) == sorted(
        ["slurmjob.err", "slurmjob.log", "slurmjob.out", "slurmjob.ret", script.name]
    )

    def recorded():
        jobs = workflow.jobs()
        return len(jobs) == 1 and jobs[0]["State"] == "COMPLETED"

    wait_for(recorded, 30, "sacct to record the job")
    (record,) = workflow.jobs()
    # SLURM's accounting shows the folder with `"` as a backquote, and sacct -P splits at `|`.
    assert record["WorkDir"].startswith(str(job.parent / "it's `quoted` $HOME;x $(touch `"))
    assert record["JobName"] == "it's a job"

"""Unit tests of `sbatch()` in plan.py: its checks and the exact step it adds on each host."""

import shlex

import pytest
import stepup.core.api

import stepup.queue.api
from stepup.queue.actions import parse_sbatch_args
from stepup.queue.api import BLOCK_RESOURCE, sbatch, step_command, stepup_major
from stepup.queue.entry import parse_step_args


@pytest.fixture
def steps(monkeypatch) -> list[tuple[str, dict]]:
    """Replace StepUp's step() and run() by a recorder: no StepUp director is needed."""
    calls = []
    for name in "step", "run":
        if hasattr(stepup.core.api, name):
            monkeypatch.setattr(
                stepup.core.api, name, lambda command, **kwargs: calls.append((command, kwargs))
            )
    return calls


def host(major: int, monkeypatch):
    monkeypatch.setattr(stepup.queue.api, "stepup_major", lambda: major)


@pytest.mark.parametrize(
    ("ext", "name"),
    [
        (".log", "slurmjob.log"),
        ("log", "slurmjob.log"),
        (".out", "slurmjob.out"),
        ("out", "slurmjob.out"),
        (".err", "slurmjob.err"),
        (".ret", "slurmjob.ret"),
        ("retries", "slurmjob.retries"),
    ],
)
def test_reserved_ext_refused(steps, ext, name):
    with pytest.raises(ValueError, match="is not allowed") as excinfo:
        sbatch("job/", ext=ext)
    message = str(excinfo.value)
    assert message.startswith(f"ext={'.' + ext.lstrip('.')!r} is not allowed: {name} is ")
    assert "written by StepUp Queue" in message
    assert "'.sh' (the default) or '.py'" in message
    assert steps == []


@pytest.mark.parametrize(
    ("ext", "args", "script"),
    [
        (".sh", "", "slurmjob.sh"),
        ("", "", "slurmjob.sh"),
        ("sh", "", "slurmjob.sh"),
        (".py", " .py", "slurmjob.py"),
        ("py", " .py", "slurmjob.py"),
        (".logx", " .logx", "slurmjob.logx"),
    ],
)
def test_allowed_ext(steps, ext, args, script):
    sbatch("job/", ext=ext)
    name = "sbatch" if stepup_major() < 4 else "sq-sbatch-and-wait"
    assert steps == [
        (
            name + args,
            {
                "inp": [script],
                "env": [],
                "out": ["slurmjob.out", "slurmjob.err", "slurmjob.ret"],
                "vol": ["slurmjob.log"],
                "workdir": "job/",
                "optional": False,
            }
            | ({"pool": None, "block": False} if stepup_major() < 4 else {})
            | ({"resources": None, "duration": None} if stepup_major() >= 4 else {}),
        )
    ]
    assert parse_step_args(shlex.split(args), "x").ext == "." + script.split(".")[-1]


# The exact bytes matter: a step's command is part of its identity and input digest, and these
# are the strings of the original releases (1.0.2 on StepUp 3, 2.0.x on StepUp 4).
@pytest.mark.parametrize(
    ("ext", "rc", "onchange", "action", "command"),
    [
        (".sh", None, None, "sbatch", "sq-sbatch-and-wait"),
        (".py", None, None, "sbatch .py", "sq-sbatch-and-wait .py"),
        (".sh", "source env.sh", None, "sbatch --rc='source env.sh'",
         "sq-sbatch-and-wait --rc='source env.sh'"),
        (".py", "echo 'a b'", None, "sbatch .py --rc='echo '\"'\"'a b'\"'\"''",
         "sq-sbatch-and-wait .py --rc='echo '\"'\"'a b'\"'\"''"),
        (".sh", "x", "resubmit", "sbatch --rc=x --onchange=resubmit",
         "sq-sbatch-and-wait --rc=x --onchange=resubmit"),
        (".sh", None, "ignore", "sbatch --onchange=ignore", "sq-sbatch-and-wait --onchange=ignore"),
    ],
)  # fmt: skip
def test_step_command(ext, rc, onchange, action, command):
    assert step_command(3, ext, rc, onchange) == action
    assert step_command(4, ext, rc, onchange) == command
    # What StepUp 3 passes to the action and StepUp 4 to the console script reads back.
    for args in (
        parse_sbatch_args(action[len("sbatch") :]),
        parse_step_args(shlex.split(command)[1:], "sq-sbatch-and-wait"),
    ):
        assert (args.ext, args.rc, args.onchange) == (ext, rc, onchange)


def test_onchange_checked(steps):
    with pytest.raises(ValueError, match="onchange='later' is not allowed: use one of raise"):
        sbatch("job/", onchange="later")
    assert steps == []


def test_stepup3_refuses_stepup4_arguments(steps, monkeypatch):
    host(3, monkeypatch)
    for kwargs in {"resources": "slurm"}, {"duration": 60.0}:
        with pytest.raises(ValueError, match="needs StepUp 4"):
            sbatch("job/", **kwargs)
    assert steps == []


def test_stepup4_refuses_pool(steps, monkeypatch):
    host(4, monkeypatch)
    with pytest.raises(ValueError, match=r'StepUp 4 has no pools\. Use resources="slurm"'):
        sbatch("job/", pool="slurm")
    assert steps == []


@pytest.mark.skipif(stepup_major() < 4, reason="StepUp 4's run() is needed")
@pytest.mark.parametrize(
    ("resources", "expected"),
    [(None, {BLOCK_RESOURCE: 1}), ("slurm:2", {"slurm": 2, BLOCK_RESOURCE: 1})],
)
def test_stepup4_block(steps, resources, expected):
    sbatch("job/", block=True, resources=resources)
    assert steps[0][1]["resources"] == expected


def test_parse_sbatch_args_of_stepup3_action():
    assert parse_sbatch_args(" .py --rc='a b'").rc == "a b"


def test_retries_leave_the_command_alone(steps, monkeypatch, tmp_path):
    """retries and retry_on go into slurmjob.retries, never into the step's command (its
    identity and digest): the command is that of a step without them, and a plan without them
    removes the file again."""
    major = stepup_major()
    monkeypatch.chdir(tmp_path)
    sbatch("job/", retries=2, retry_on="TIMEOUT")
    sbatch("job/")
    assert [command for command, _ in steps] == [step_command(major, ".sh", None, None)] * 2
    assert not (tmp_path / "job/slurmjob.retries").exists()
    sbatch("job/", retries=2, retry_on=("TIMEOUT", "OUT_OF_MEMORY"))
    settings = (tmp_path / "job/slurmjob.retries").read_text()
    assert settings == '{"retries": 2, "retry_on": ["TIMEOUT", "OUT_OF_MEMORY"]}\n'
    assert [command for command, _ in steps][-1] == step_command(major, ".sh", None, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"retries": -1}, r"retries=-1\): use a whole number >= 0"),
        ({"retries": 1.5}, r"retries=1.5\): use a whole number >= 0, or None"),
        ({"retries": True}, r"retries=True\): use a whole number >= 0, or None"),
        (
            {"retry_on": "FAILED"},
            r"retry_on='FAILED'\) is not allowed: retry_on names FAILED, after which",
        ),
    ],
)
def test_retries_checked(steps, monkeypatch, tmp_path, kwargs, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        sbatch("job/", **kwargs)
    assert steps == []
    assert not (tmp_path / "job").exists()

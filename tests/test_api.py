"""Unit tests of the checks `sbatch()` makes in plan.py before it adds a step."""

import pytest

import stepup.queue.api
from stepup.queue.actions import parse_sbatch_args
from stepup.queue.api import sbatch


@pytest.fixture
def steps(monkeypatch) -> list[tuple[str, dict]]:
    """Replace stepup.core.api.step by a recorder: no StepUp director is needed."""
    calls = []
    monkeypatch.setattr(
        stepup.queue.api, "step", lambda action, **kwargs: calls.append((action, kwargs))
    )
    return calls


@pytest.mark.parametrize(
    ("ext", "name"),
    [
        (".log", "slurmjob.log"),
        ("log", "slurmjob.log"),
        (".out", "slurmjob.out"),
        ("out", "slurmjob.out"),
        (".err", "slurmjob.err"),
        (".ret", "slurmjob.ret"),
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
    ("ext", "action", "script"),
    [
        (".sh", "sbatch", "slurmjob.sh"),
        ("", "sbatch", "slurmjob.sh"),
        ("sh", "sbatch", "slurmjob.sh"),
        (".py", "sbatch .py", "slurmjob.py"),
        ("py", "sbatch .py", "slurmjob.py"),
        (".logx", "sbatch .logx", "slurmjob.logx"),
    ],
)
def test_allowed_ext(steps, ext, action, script):
    sbatch("job/", ext=ext)
    assert len(steps) == 1
    assert steps[0][0] == action
    assert steps[0][1]["inp"] == [script]
    assert steps[0][1]["workdir"] == "job/"
    assert parse_sbatch_args(action[len("sbatch") :]).ext == "." + script.split(".")[-1]

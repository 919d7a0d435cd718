"""Unit tests of the arguments of the `sbatch` action."""

import shlex

import pytest

from stepup.queue.actions import parse_sbatch_args


@pytest.mark.parametrize(
    ("argstr", "ext", "rc"),
    [
        ("", ".sh", None),
        ("   ", ".sh", None),
        (".py", ".py", None),
        (".sh", ".sh", None),
        ("--rc='source x'", ".sh", "source x"),
        ("--rc x", ".sh", "x"),
        ("--rc=x", ".sh", "x"),
        (".py --rc='module load foo && source env.sh'", ".py", "module load foo && source env.sh"),
        ("--rc='source x' .py", ".py", "source x"),
        ("--rc=''", ".sh", ""),
    ],
)
def test_parse_sbatch_args(argstr, ext, rc):
    args = parse_sbatch_args(argstr)
    assert args.ext == ext
    assert args.rc == rc
    assert args.onchange is None


@pytest.mark.parametrize("onchange", ["raise", "resubmit", "ignore"])
def test_onchange(onchange):
    args = parse_sbatch_args(f".py --rc=x --onchange={onchange}")
    assert (args.ext, args.rc, args.onchange) == (".py", "x", onchange)


@pytest.mark.parametrize(
    "rc",
    [
        "source env.sh",
        'echo "it\'s" > /dev/null',
        "module load a; export X='$HOME'",
        "-v",
        "--rc=x",
    ],
)
def test_rc_quoted_as_the_api_does(rc):
    # stepup.queue.api.sbatch() writes the action as `sbatch .py --rc={shlex.quote(rc)}`.
    args = parse_sbatch_args(f".py --rc={shlex.quote(rc)}")
    assert args.ext == ".py"
    assert args.rc == rc


@pytest.mark.parametrize(
    ("argstr", "problem"),
    [
        (".py .sh", "unrecognized arguments: .sh"),
        ("--bogus", "unrecognized arguments: --bogus"),
        ("--rc", "argument --rc: expected one argument"),
        ("-h", "unrecognized arguments: -h"),
        ("--onchange=later", "argument --onchange: invalid choice: 'later' (choose from"),
    ],
)
def test_bad_args(argstr, problem):
    with pytest.raises(ValueError, match=r"^Invalid arguments of sbatch") as excinfo:
        parse_sbatch_args(argstr)
    message = str(excinfo.value)
    assert message.startswith(f"Invalid arguments of sbatch: {problem}")
    assert "usage: sbatch [--rc RC] [--onchange {raise,resubmit,ignore}] [ext]" in message


def test_unbalanced_quotes():
    with pytest.raises(ValueError, match="No closing quotation") as excinfo:
        parse_sbatch_args("--rc='source x")
    assert str(excinfo.value) == (
        'Invalid arguments of the sbatch action "--rc=\'source x": No closing quotation'
    )

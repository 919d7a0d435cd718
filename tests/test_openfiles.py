"""Unit tests of the open-file arithmetic of StepUp's director."""

import pytest

from stepup.queue.openfiles import (
    BASE_FILES,
    FILES_PER_STEP,
    files_needed,
    max_slots,
    parse_limits,
    refusal_message,
    slots_from_argv,
)

LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 4096                 files
Max locked memory         8388608              8388608              bytes
"""


def test_files_needed_and_max_slots_agree():
    assert files_needed(0) == BASE_FILES
    assert files_needed(320) == BASE_FILES + FILES_PER_STEP * 320
    for limit in 1024, 4096, 20000:
        assert files_needed(max_slots(limit)) <= limit < files_needed(max_slots(limit) + 1)
    assert max_slots(10) == 0


@pytest.mark.parametrize(
    ("argv", "slots"),
    [
        (["python", "-m", "stepup.core.director", "/tmp/s", "--jobs=1000"], 1000),
        (["python", "-m", "stepup.core.director", "--jobs", "12"], 12),
        # A decimal multiplies the cores, as StepUp's own `interpret_jobs`.
        (["python", "-m", "stepup.core.director", "--jobs=1.0"], 8),
        (["python", "-m", "stepup.core.director", "--jobs=1.5"], 12),
        (["python", "-m", "stepup.core.director", "/tmp/s", "--num-workers=31"], 31),
        (["python", "-m", "stepup.core.director", "--jobs=x"], None),
        (["python", "-m", "stepup.core.director"], None),
    ],
)
def test_slots_from_argv(argv, slots):
    assert slots_from_argv(argv, 8) == slots


def test_parse_limits():
    assert parse_limits(LIMITS) == (1024, 4096)
    unlimited = LIMITS.replace("4096     ", "unlimited")
    assert parse_limits(unlimited) == (1024, 2**62)
    assert parse_limits("Max cpu time unlimited unlimited seconds\n") is None


def test_refusal_message_hard_limit_too_low():
    message = refusal_message(1000, 1024, 1024, "stepup build -j")
    # The numbers: the -j value, the files per step, the total and both limits.
    assert "`stepup build -j 1000`" in message
    assert f"{FILES_PER_STEP} open files per waiting step" in message
    assert f"= {files_needed(1000)})" in message
    assert "1024 (soft) and 1024 (hard)" in message
    # The fixes: the hard limit, a smaller -j that fits under it, an array step.
    assert f"`ulimit -n {files_needed(1000)}`" in message
    assert f"`stepup build -j {max_slots(1024)}` or less" in message
    assert "No job was submitted" in message
    assert "one sbatch_array() step waits for all their folders in one slot" in message


def test_refusal_message_soft_limit_only():
    message = refusal_message(100, 200, 20000, "stepup boot -n")
    assert f"`ulimit -S -n {files_needed(100)}`" in message
    assert f"`stepup boot -n {max_slots(200)}` or less" in message


def test_refusal_message_no_slot_fits():
    message = refusal_message(10, 20, 20, "stepup build -j")
    assert "or less" not in message

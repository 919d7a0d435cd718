"""Open files of StepUp's director: how many a build needs and what to say when it has too few.

Every step that runs holds open files in StepUp's director (StepUp 4: the pipes and the sentinel
of its forkserver child; StepUp 3: the log, socket and process of each worker). A director that
reaches its open-file limit dies halfway (`OSError: [Errno 24] Too many open files`), with the
jobs of the waiting steps left in the queue. Measured on StepUp 4.0.3 and 3.2.3 (see
docs/recipes.md): 3 files per running step (StepUp 4) or per worker (StepUp 3), plus 13 and 11.
Nothing here imports StepUp or touches the operating system.
"""

from decimal import Decimal, InvalidOperation

__all__ = (
    "BASE_FILES",
    "FILES_PER_STEP",
    "OpenFileLimitError",
    "files_needed",
    "max_slots",
    "parse_limits",
    "refusal_message",
    "slots_from_argv",
)

# Open files of the director per step slot: measured 3 on both hosts, with 20 and 60 waiting
# sbatch steps (the director's /proc/PID/fd grew by exactly 3 per step).
FILES_PER_STEP = 3
# The director's own files (database, logs, sockets): measured 13 (StepUp 4) and 11 (StepUp 3);
# the rest is a margin for files it opens for a moment (hashing, a new child's pipes).
BASE_FILES = 64


class OpenFileLimitError(Exception):
    """The director's open-file limit is too low for the steps that may run at once."""


def files_needed(slots: int) -> int:
    """The open files the director needs when `slots` steps run at once."""
    return BASE_FILES + FILES_PER_STEP * slots


def max_slots(limit: int) -> int:
    """The largest number of steps that may run at once under an open-file limit."""
    return max(0, (limit - BASE_FILES) // FILES_PER_STEP)


def slots_from_argv(argv: list[str], ncores: int) -> int | None:
    """The number of steps that may run at once, from the command line of StepUp's director.

    Parameters
    ----------
    argv
        The director's command line: StepUp 4 passes `--jobs=X` (an integer is a count, a
        decimal is a multiple of the number of cores), StepUp 3 `--num-workers=N`.
    ncores
        The number of cores available to the director, for a decimal `--jobs`.

    Returns
    -------
    slots
        The number of steps, or `None` when the command line has no such option.
    """
    for i, word in enumerate(argv):
        for option in "--jobs", "--num-workers":
            if word == option and i + 1 < len(argv):
                value = argv[i + 1]
            elif word.startswith(f"{option}="):
                value = word.partition("=")[2]
            else:
                continue
            try:
                number = Decimal(value)
            except InvalidOperation:
                return None
            # As StepUp's `interpret_jobs` and `interpret_num_workers` do.
            return int(number * ncores) if number.as_tuple().exponent < 0 else int(number)
    return None


def parse_limits(text: str) -> tuple[int, int] | None:
    """The soft and hard open-file limits in the text of `/proc/PID/limits`.

    `unlimited` becomes a very large number. `None` when the line is missing.
    """
    for line in text.splitlines():
        if line.startswith("Max open files"):
            words = line[len("Max open files") :].split()
            if len(words) < 2:
                return None
            soft, hard = (2**62 if word == "unlimited" else int(word) for word in words[:2])
            return soft, hard
    return None


def refusal_message(slots: int, soft: int, hard: int, jobs_option: str) -> str:
    """Explain why the steps may not submit, with the numbers and the fixes.

    Parameters
    ----------
    slots
        The number of steps that may run at once.
    soft, hard
        The director's open-file limits.
    jobs_option
        How the user sets `slots`, e.g. `stepup build -j`.
    """
    needed = files_needed(slots)
    if hard >= needed:
        fits = max_slots(soft)
        # Only when StepUp Queue could not raise the soft limit (e.g. a director started by
        # another program): the user can.
        raise_it = f"raise the soft limit before the build (`ulimit -S -n {needed}`)"
    else:
        # StepUp Queue raises the soft limit to the hard one at the next build.
        fits = max_slots(hard)
        raise_it = (
            f"raise the hard limit to at least {needed} (`ulimit -n {needed}` where the system "
            "allows it, or ask the administrators); StepUp Queue then raises the soft limit "
            "itself"
        )
    return (
        f"Refusing to submit: `{jobs_option} {slots}` lets {slots} steps wait at once, and "
        f"StepUp's director holds about {FILES_PER_STEP} open files per waiting step "
        f"({BASE_FILES} + {FILES_PER_STEP} x {slots} = {needed}), but its open-file limit is "
        f"{soft} (soft) and {hard} (hard): it would die halfway with jobs left in the queue. "
        f"No job was submitted. Either {raise_it}"
        + (f", or run with `{jobs_option} {fits}` or less. " if fits > 0 else ". ")
        + "For many similar jobs, one sbatch_array() step waits for all their folders in one "
        "slot."
    )

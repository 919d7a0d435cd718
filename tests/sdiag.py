"""slurmctld's RPC counts (`sdiag`): the honest measure of how often StepUp Queue asks SLURM.

Shared by the tests that count queries (marked serial) and by the benchmarks.
"""

import re
import subprocess
import time
from dataclasses import dataclass

__all__ = ("SdiagSnapshot", "diff_counts", "sdiag_counts")

_RE_SDIAG = re.compile(r"^\s+([A-Z_]+)\s+\(\s*\d+\)\s+count:(\d+)")


@dataclass(frozen=True)
class SdiagSnapshot:
    """slurmctld's RPC counts by message type at one moment.

    Attributes
    ----------
    since
        When slurmctld started counting (started, or `sdiag --reset`), seconds since the epoch.
    counts
        RPC name (e.g. `REQUEST_JOB_INFO`) → count since then.
    """

    since: int
    counts: dict[str, int]


_RE_SDIAG_SINCE = re.compile(r"^Data since\s+.*\((\d+)\)", re.MULTILINE)


def sdiag_counts(timeout: float = 120) -> SdiagSnapshot:
    """The RPC counts of slurmctld, waiting up to `timeout` seconds while it does not answer."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(["sdiag"], capture_output=True, text=True)
        match = _RE_SDIAG_SINCE.search(result.stdout)
        if result.returncode == 0 and match is not None:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"sdiag keeps failing: {result.stderr.strip()}")
        time.sleep(2)
    section = result.stdout.partition("by message type")[2].partition("by user")[0]
    counts = {}
    for line in section.splitlines():
        found = _RE_SDIAG.match(line)
        if found is not None:
            counts[found.group(1)] = int(found.group(2))
    return SdiagSnapshot(int(match.group(1)), counts)


def diff_counts(before: SdiagSnapshot, after: SdiagSnapshot) -> dict[str, int] | None:
    """RPCs counted between two sdiag snapshots.

    Returns
    -------
    counts
        RPC name → number of RPCs in between (only those that changed), or `None` when
        slurmctld restarted or its counts were reset in between.
    """
    if before.since != after.since:
        return None
    old, new = before.counts, after.counts
    return {
        name: new.get(name, 0) - old.get(name, 0)
        for name in sorted(set(old) | set(new))
        if new.get(name, 0) != old.get(name, 0)
    }

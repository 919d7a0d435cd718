"""Kill a StepUp workflow's whole tree of processes at once, as a crashing login node would.

Used by the tests (`conftest.Workflow.kill`) and the benchmarks (`BuildRun.kill`).
"""

import contextlib
import ctypes
import os
import signal
import subprocess
import time

from path import Path

__all__ = ("descendants", "kill_tree")

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_CHILD_SUBREAPER = 36


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    result = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            result.append(child)
            todo.append(child)
    return result


def kill_tree(proc: subprocess.Popen):
    """Kill `proc` and all its descendants with SIGKILL, and reap them.

    StepUp 4 runs its director and each step in sessions of their own, so the whole tree is
    collected first. Orphans become children of this process, which reaps them: PID 1 of a
    container may not, and StepUp 4 takes a zombie director for a running one ("A director
    may still be running") and refuses to start again.
    """
    _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    for pid in pids[1:]:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)

"""File locks shared by the steps of all workflows of a user (flock on files in the cache
folder): one for renewing a cached answer, one for taking turns at a submit limit."""

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager

from path import Path

__all__ = ("locked", "submit_turn")


@contextmanager
def locked(path: Path, timeout: float) -> Iterator[bool]:
    """Hold an exclusive lock on `path`, waiting for it at most `timeout` seconds.

    Yields whether the lock is held. A blocking flock takes no timeout, and only the main
    thread could interrupt it with a signal (StepUp 3 runs steps in other threads): the lock
    is tried at growing intervals instead.
    """
    with open(path, "a") as fh:
        held = _try_lock(fh.fileno(), timeout)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _try_lock(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(2 * delay, 0.5)


@contextmanager
def submit_turn(cache_path: Path | None, timeout: float) -> Iterator[None]:
    """Take turns with the other steps that wait for room under a submit limit.

    The lock is held while a step checks for room and submits, so that one freed slot is taken
    by one step, not raced for by all.

    Parameters
    ----------
    cache_path
        The cache file of the cluster (see `cache.StateCache`): the lock file lies beside it.
        `None` when the cluster's name is not known: then no turn is taken.
    timeout
        Seconds to wait for the turn at most; then the step goes ahead without it.
    """
    if cache_path is None:
        yield
        return
    with locked(cache_path + ".submit.lock", timeout):
        yield

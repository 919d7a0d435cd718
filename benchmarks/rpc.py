"""Which slurmctld RPCs one status query of StepUp Queue costs, and how large its answer is.

Each query is run five times in each of three rounds, as the current user and (when that is
root) as the unprivileged user `nobody`, and the RPC counts of sdiag are compared before and
after.
SLURM's squeue asks for one user's jobs only (REQUEST_JOB_USER_INFO) when an ordinary user
runs it; for root and other privileged users it asks for all jobs (REQUEST_JOB_INFO).
sdiag counts the RPCs of everyone: other SLURM users (e.g. a running test suite) add to them,
so only RPCs that grow by at least one per call in every round are shown.
Run alone with `python -m benchmarks.rpc`.
"""

import os
import subprocess
from dataclasses import dataclass

from stepup.queue.config import Config, QueryMethod
from stepup.queue.slurm.cache import StateCache
from tests.sdiag import diff_counts, sdiag_counts

__all__ = ("RPCProfile", "profile_queries", "query_commands")


@dataclass(frozen=True)
class RPCProfile:
    """The RPCs of one query command.

    Attributes
    ----------
    name
        `squeue` (the default) or `scontrol` (`STEPUP_SBATCH_QUERY=scontrol`).
    user
        Who ran it.
    rpcs
        RPC type → number per call (only those with at least one per call).
    size
        Bytes printed by one call.
    """

    name: str
    user: str
    rpcs: dict[str, float]
    size: int

    def describe(self) -> str:
        return " + ".join(f"{name.removeprefix('REQUEST_')}" for name in sorted(self.rpcs))


def query_commands() -> dict[str, list[str]]:
    """The status queries of StepUp Queue, as its own code makes them (default cluster)."""
    return {
        "squeue": StateCache(Config(query=QueryMethod.SQUEUE), None).command(),
        "scontrol": StateCache(Config(query=QueryMethod.SCONTROL), None).command(),
    }


def _profile(
    name: str, command: list[str], user: str | None, repeats: int, rounds: int
) -> RPCProfile:
    prefix = [] if user is None else ["runuser", "-u", user, "--"]
    size = 0
    lowest: dict[str, int] | None = None
    for _ in range(rounds):
        before = sdiag_counts()
        for _ in range(repeats):
            result = subprocess.run([*prefix, *command], capture_output=True, cwd="/")
            size = len(result.stdout)
        counts = diff_counts(before, sdiag_counts())
        if counts is None:
            # slurmctld restarted during this round: skip it.
            continue
        # RPCs of other users come and go; those of the query come in every round.
        if lowest is None:
            lowest = counts
        else:
            lowest = {rpc: min(count, counts.get(rpc, 0)) for rpc, count in lowest.items()}
    rpcs = {
        rpc: count / repeats
        for rpc, count in (lowest or {}).items()
        if count >= repeats and rpc != "REQUEST_STATS_INFO"
    }
    who = user or ("root" if os.getuid() == 0 else os.environ.get("USER", str(os.getuid())))
    return RPCProfile(name, who, rpcs, size)


def profile_queries(repeats: int = 5, rounds: int = 3) -> list[RPCProfile]:
    """Profile each query command, as this user and, when it is root, as `nobody`.

    Parameters
    ----------
    repeats
        Calls per round.
    rounds
        Rounds; an RPC counts when it came at least once per call in every round.
    """
    users: list[str | None] = [None]
    if os.getuid() == 0:
        users.append("nobody")
    return [
        _profile(name, command, user, repeats, rounds)
        for name, command in query_commands().items()
        for user in users
    ]


def main():
    for profile in profile_queries():
        rpcs = ", ".join(f"{name} {count:g}" for name, count in profile.rpcs.items())
        print(f"{profile.name:8s} as {profile.user:8s}: {rpcs} ({profile.size} bytes)")


if __name__ == "__main__":
    main()

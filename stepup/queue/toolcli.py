"""What the job tools share on the command line: the PATH arguments, the registration as a
`stepup` subcommand on both hosts, and the table of what each tool did to each job.
"""

import argparse
import sys
from collections.abc import Callable

from path import Path

from .found_job import FoundJob
from .joblog import LOG_NAME
from .tables import print_table
from .version import add_version_argument

__all__ = ("add_search_arguments", "add_tool", "print_actions")


def add_search_arguments(parser: argparse.ArgumentParser):
    """Add the PATH arguments shared by the job tools."""
    parser.add_argument(
        "paths",
        nargs="*",
        default=[Path(".")],
        type=Path,
        metavar="PATH",
        help=f"Folders searched recursively for {LOG_NAME} (hidden folders are skipped). "
        "Default: the current folder.",
    )
    add_version_argument(parser)


def add_tool(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    summary: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    tool: Callable[[argparse.Namespace], int],
) -> Callable:
    """Add a job tool as a StepUp subcommand and return the function that runs it.

    The tools register with `(subparsers, loader=None)`: StepUp 3 passes the subparsers only,
    StepUp 4 also its configuration loader (unused). Both ignore what the returned function
    returns, so it exits through `sys.exit`.

    This is also StepUp Queue's only hook in a `stepup build` or `stepup boot` process before
    its director starts: there it raises the open-file limit (`entry.raise_open_file_limit`).
    """
    # Imported here: the tools of every `stepup` command import this module.
    from .entry import raise_open_file_limit

    raise_open_file_limit(sys.argv)
    parser = subparsers.add_parser(name, help=summary, description=description)
    add_arguments(parser)
    return lambda args: sys.exit(tool(args))


def print_actions(rows: list[tuple[str, FoundJob, str]]):
    """Print one row per job: action, job id, cluster, SLURM state (with the reason of a
    pending job), log state, folder, note.

    The cluster column is left out when no job names one (see `tables.print_table`).

    Parameters
    ----------
    rows
        (action, job, note) for each job; the note may be empty.
    """
    headers = ["ACTION", "JOB", "CLUSTER", "SLURM", "LOG", "FOLDER", "NOTE"]
    cells = [
        [
            action,
            job.name,
            job.cluster or "",
            job.slurm_column(),
            job.log_column(),
            str(job.folder),
            note,
        ]
        for action, job, note in rows
    ]
    print_table(
        headers,
        cells,
        wrap=("ACTION", "SLURM", "LOG", "NOTE"),
        optional=("CLUSTER",),
    )

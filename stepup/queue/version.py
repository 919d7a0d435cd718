"""The `--version` option of StepUp Queue's commands."""

import argparse
from importlib.metadata import version

__all__ = ("add_version_argument", "package_version")


def package_version() -> str:
    """The version of the installed StepUp Queue, as pip knows it (`pip show stepup-queue`)."""
    return version("stepup-queue")


class _VersionAction(argparse.Action):
    """argparse's own version action needs the string up front; a step asks it only on demand."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="Print the version and exit.")

    def __call__(self, parser: argparse.ArgumentParser, *args, **kwargs):
        print(f"{parser.prog} (StepUp Queue {package_version()})")
        parser.exit()


def add_version_argument(parser: argparse.ArgumentParser):
    """Add `--version`, which prints the command and the version of StepUp Queue."""
    parser.add_argument("--version", action=_VersionAction)

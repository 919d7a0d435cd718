"""One version everywhere: the package metadata, the changelog and `--version`."""

import re
import subprocess
import sys
import tomllib

import pytest
from path import Path

from stepup.queue.version import package_version

ROOT = Path(__file__).parent.parent


def test_one_version_in_pyproject_changelog_and_metadata():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    first = re.search(r"^## \[(.+?)\]", (ROOT / "docs/changelog.md").read_text(), re.M)
    assert first.group(1) == version == package_version()
    # Above every original release on PyPI (the last one is 2.0.1).
    assert tuple(int(part) for part in version.split(".")) > (2, 0, 1)


@pytest.mark.parametrize("command", ["sq-sbatch-and-wait", "sq-jobs", "sq-cancel-jobs"])
def test_version_option(command):
    result = subprocess.run(
        [Path(sys.executable).parent / command, "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout == f"{command} (StepUp Queue {package_version()})\n"

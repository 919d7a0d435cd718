"""A console script that only sleeps: the bare baseline of a waiting step on StepUp 4.

StepUp 4 runs a console script of its own environment in a child of its forkserver, as it runs
StepUp Queue's `sq-sbatch-and-wait`. The lightest such step imports nothing and sleeps:
`installed_sleeper` writes a throwaway wheel with one console script, `sq-bench-sleep RELEASE
FOLDER` (sleep until the file RELEASE exists or FOLDER is gone), installs it into the host's
venv with pip (offline, from the wheel alone) and uninstalls it at the end.
"""

import base64
import hashlib
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

from path import Path

from .common import Host

__all__ = ("SLEEPER", "installed_sleeper")

SLEEPER = "sq-bench-sleep"
_DIST = "sq_bench_sleep-0.0.0"
_MODULE = '''"""Sleep until the file RELEASE exists or FOLDER is gone."""
import os
import sys
import time


def main():
    release, folder = sys.argv[1:]
    while not os.path.exists(release) and os.path.isdir(folder):
        time.sleep(1)
    sys.exit(0)
'''


def _write_wheel(folder: Path) -> Path:
    """Write the wheel of the sleeper into `folder` and return its path."""
    info = f"{_DIST}.dist-info"
    files = {
        "sq_bench_sleep.py": _MODULE,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: sq-bench-sleep\nVersion: 0.0.0\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: stepup-queue-benchmarks\n"
            "Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{info}/entry_points.txt": f"[console_scripts]\n{SLEEPER} = sq_bench_sleep:main\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    path = folder / f"{_DIST}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


@contextmanager
def installed_sleeper(host: Host) -> Iterator[str]:
    """Install `sq-bench-sleep` into the venv of a host while the context lasts.

    Yields
    ------
    command
        The name of the console script.
    """
    pip = [host.python, "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory() as folder:
        wheel = _write_wheel(Path(folder))
        subprocess.run(
            [*pip, "install", "--no-deps", "--no-index", "--force-reinstall", wheel], check=True
        )
    try:
        yield SLEEPER
    finally:
        subprocess.run([*pip, "uninstall", "-y", "sq-bench-sleep"], check=True)

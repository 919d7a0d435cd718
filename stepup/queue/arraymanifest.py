"""The manifest of an `sbatch_array()` step and the input digest of each of its job folders.

`plan.py` writes the manifest `NAME.json` next to itself: the job folders in the order given,
the extension of the job scripts, `rc`, `onchange`, `max_running` and the `inp`/`env` lists.
The step's command names only the manifest, so that it stays short and stable whatever the
number of folders. StepUp's input digest of the step covers every folder at once: each
folder's `slurmjob.log` keeps a digest of that folder's own inputs instead.
"""

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from path import Path

__all__ = ("MANIFEST_VERSION", "Manifest", "folder_digest", "read_manifest", "write_manifest")

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """What an array step needs to know besides the folders' own files.

    Attributes
    ----------
    folders
        The job folders, relative to the manifest's folder, in the order of task indices.
    ext
        The extension of the job scripts, e.g. `.sh`.
    rc
        A bash command run before each sbatch, or `None`.
    onchange
        `raise`, `resubmit` or `ignore`, or `None` to follow `STEPUP_QUEUE_ONCHANGE`.
    max_running
        At most this many tasks of one array run at once (`--array=...%N`), `None` for no limit.
    inp
        Extra inputs of every folder, relative to the folder.
    env
        Environment variables to which every folder's job is sensitive.
    """

    folders: tuple[str, ...]
    ext: str = ".sh"
    rc: str | None = None
    onchange: str | None = None
    max_running: int | None = None
    inp: tuple[str, ...] = ()
    env: tuple[str, ...] = ()

    def text(self) -> str:
        """The JSON text of the manifest, the same bytes for the same contents."""
        data = {"version": MANIFEST_VERSION} | asdict(self)
        return json.dumps(data, indent=1) + "\n"


def write_manifest(path: str | Path, manifest: Manifest) -> bool:
    """Write the manifest, unless the file already holds the same text.

    An unchanged file keeps its time stamps, so StepUp sees no changed input.

    Returns
    -------
    written
        True when the file was (re)written.
    """
    path = Path(path)
    text = manifest.text()
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest written by `write_manifest`.

    Raises
    ------
    ValueError
        When the file is no manifest of this version, with what to do.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.pop("version")
        for name in "folders", "inp", "env":
            data[name] = tuple(data[name])
        manifest = Manifest(**data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        version, manifest, why = None, None, str(exc)
    else:
        why = f"unknown version {version!r}"
    if version == MANIFEST_VERSION and manifest is not None:
        return manifest
    raise ValueError(
        f"Cannot read the manifest {Path.cwd() / path} of an sbatch_array() step ({why}). "
        "It is written by sbatch_array() in plan.py: run the workflow again so that "
        "plan.py writes it anew."
    )


def folder_digest(folder: Path, manifest: Manifest, environ: Mapping[str, str]) -> str:
    """The digest of one job folder's inputs: its script, its `inp` files and the `env` values.

    Parameters
    ----------
    folder
        The job folder.
    manifest
        The manifest of the step.
    environ
        The step's environment, for the values of `manifest.env`.

    Returns
    -------
    digest
        SHA-256 in hex, 64 characters, as the second line of `slurmjob.log`.
    """
    sha = hashlib.sha256()
    for name in (f"slurmjob{manifest.ext}", *manifest.inp):
        sha.update(f"file {name}\n".encode())
        try:
            sha.update((folder / name).read_bytes())
        except FileNotFoundError:
            sha.update(b"\0missing")
    for name in manifest.env:
        value = environ.get(name)
        sha.update(f"env {name}={'' if value is None else value}\n".encode())
        sha.update(b"unset" if value is None else b"set")
    return sha.hexdigest()

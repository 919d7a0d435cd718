"""The manifest of an sbatch_array() step and the digest of each job folder."""

import pytest
from path import Path

from stepup.queue.arraymanifest import Manifest, folder_digest, read_manifest, write_manifest

MANIFEST = Manifest(("a", "b/c"), ".py", "module load x", "resubmit", 4, ("in.txt",), ("X",))


def test_manifest_round_trip_and_no_rewrite(tmp_path):
    path = Path(tmp_path) / "sweep.json"
    assert write_manifest(path, MANIFEST)
    assert read_manifest(path) == MANIFEST
    stamp = path.stat().st_mtime_ns
    # The same contents: the file is left alone, so StepUp sees no changed input.
    assert not write_manifest(path, MANIFEST)
    assert path.stat().st_mtime_ns == stamp
    assert write_manifest(path, Manifest(("a",)))
    assert read_manifest(path) == Manifest(("a",))


@pytest.mark.parametrize("text", ["", "{", '{"version": 99, "folders": []}', '{"version": 1}'])
def test_bad_manifest(tmp_path, text):
    path = Path(tmp_path) / "sweep.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"Cannot read the manifest .* run the workflow again"):
        read_manifest(path)


def test_folder_digest(tmp_path):
    folder = Path(tmp_path)
    (folder / "slurmjob.py").write_text("#!/usr/bin/env python3\n")
    manifest = Manifest(("x",), ".py", inp=("in.txt",), env=("X",))
    digest = folder_digest(folder, manifest, {"X": "1"})
    assert len(digest) == 64
    assert int(digest, 16) >= 0
    assert folder_digest(folder, manifest, {"X": "1", "Y": "2"}) == digest
    assert folder_digest(folder, manifest, {"X": "2"}) != digest
    assert folder_digest(folder, manifest, {}) != digest
    (folder / "in.txt").write_text("data")
    changed = folder_digest(folder, manifest, {"X": "1"})
    assert changed != digest
    (folder / "slurmjob.py").write_text("#!/usr/bin/env python3\nprint()\n")
    assert folder_digest(folder, manifest, {"X": "1"}) not in (digest, changed)

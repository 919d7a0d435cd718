"""Tests of the queries that read SLURM's state."""

from stepup.queue.slurm.queries import squeue_command


def test_squeue_command():
    assert squeue_command(None) == ["squeue", "--me", "-t", "all", "-h", "-o", "%i|%T|%k|%r|%Z"]
    assert squeue_command("c1") == [
        "squeue",
        "-M",
        "c1",
        "--me",
        "-t",
        "all",
        "-h",
        "-o",
        "%i|%T|%k|%r|%Z",
    ]

"""The efficiency figures of `stepup jobs`, computed from captured real sacct output."""

import pytest
from path import Path

from stepup.queue.efficiency import (
    Usage,
    format_size,
    parse_memory,
    step_peak,
    usage_by_run,
)
from stepup.queue.slurm.parsers import parse_job_runs
from stepup.queue.slurm.queries import HISTORY_FIELDS

DATA = Path(__file__).parent / "data"
K, M, G = 1024, 1024**2, 1024**3
# The fields of sacct_usage.txt, captured before TRESUsageInTot was asked (tests/data/README.md).
CAPTURED_FIELDS = tuple(field for field in HISTORY_FIELDS if field != "TRESUsageInTot")


@pytest.fixture(scope="module")
def usage() -> dict[tuple[int, str], Usage]:
    return usage_by_run((DATA / "sacct_usage.txt").read_text(), CAPTURED_FIELDS)


@pytest.mark.parametrize(
    ("text", "cpus", "nodes", "unit", "size"),
    [
        ("221232K", None, None, "", 221232 * K),
        ("300M", 2, 1, "M", 300 * M),
        ("1G", 2, 1, "M", G),
        ("12052M", 1, 1, "M", 12052 * M),
        ("1.50G", 1, 1, "M", round(1.5 * G)),
        # A bare ReqMem is in megabytes, a bare MaxRSS in bytes.
        ("4000", 1, 1, "M", 4000 * M),
        ("512", None, None, "", 512),
        # SLURM before 21.08 (documented forms, not captured here): per CPU and per node.
        ("2000Mc", 4, 2, "M", 8000 * M),
        ("4000Mn", 4, 2, "M", 8000 * M),
        ("2000Mc", None, 2, "M", None),
        ("0", 1, 1, "M", None),
        ("0n", 1, 1, "M", None),
        ("", 1, 1, "M", None),
        ("16?", 1, 1, "M", None),
    ],
)
def test_parse_memory(text: str, cpus, nodes, unit: str, size: int | None):
    assert parse_memory(text, cpus, nodes, unit) == size


@pytest.mark.parametrize(
    ("size", "text"),
    [(221232 * K, "216M"), (300 * M, "300M"), (G, "1.0G"), (1.5 * G, "1.5G"), (3176 * K, "3.1M")],
)
def test_format_size(size: float, text: str):
    assert format_size(size) == text


def test_usage_of_captured_jobs(usage):
    """Every run of the capture (tests/data/README.md), keyed by job id and Submit."""
    runs = parse_job_runs((DATA / "sacct_usage.txt").read_text(), CAPTURED_FIELDS)
    assert sorted(usage) == sorted(
        (job_id, record["Submit"]) for job_id, records in runs.items() for record in records
    )
    # Shorter than JobAcctGatherFrequency: no memory sample, so no memory figure or advice.
    first = usage[1, "2026-12-07T21:39:10"]
    assert first == Usage(21.0, 8.766, 2, 300 * M, None, 120.0)
    assert first.cpu_efficiency == pytest.approx(8.766 / 42)
    assert first.memory_use is None
    assert first.time_use == pytest.approx(21 / 120)
    # Sampled every second: MaxRSS of the batch step.
    sampled = usage[7, "2026-12-07T21:39:47"]
    assert sampled == Usage(22.0, 8.807, 2, 300 * M, 221232 * K, 120.0)
    assert sampled.memory_use == pytest.approx(221232 / (300 * 1024))
    # Two steps: the peak is the larger MaxRSS, TotalCPU is the job's (both steps).
    steps = usage[18, "2026-12-07T21:40:53"]
    assert steps == Usage(7.0, 6.532, 2, G, 221248 * K, 300.0)
    # --mem-per-cpu=100M -c 2: SLURM 22.05 prints the total.
    assert usage[2, "2026-12-07T21:39:10"].requested_memory == 200 * M
    # No --time: unlimited; no --mem: the node's memory.
    assert usage[3, "2026-12-07T21:39:10"].time_limit is None
    assert usage[3, "2026-12-07T21:39:10"].requested_memory == 12052 * M
    # A requeued job: each run on its own, the steps with the run they follow.
    assert usage[4, "2026-12-07T21:39:10"].elapsed == 3.0
    assert usage[4, "2026-12-07T21:39:13"] == Usage(0.0, 0.0, 1, 12052 * M, None, None)
    assert usage[4, "2026-12-07T21:39:13"].cpu_efficiency is None
    timeout = usage[20, "2026-12-07T21:40:53"]
    assert timeout.time_use == pytest.approx(84 / 60)
    assert timeout.peak_memory == 3176 * K


def test_peak_of_a_step_with_two_tasks():
    """A step of two tasks: its peak is the sum of both (TRESUsageInTot), not one (MaxRSS)."""
    text = (DATA / "sacct_usage_tasks.txt").read_text()
    ((key, usage),) = usage_by_run(text, HISTORY_FIELDS).items()
    assert key == (2718, "2026-12-07T22:03:05")
    assert usage == Usage(14.0, 6.524, 2, G, 333892 * K, 300.0)
    lines = text.splitlines()[1:]
    batch, step = (dict(zip(HISTORY_FIELDS, line.split("|"), strict=True)) for line in lines)
    assert step_peak(batch) == 12316 * K
    assert step_peak(step) == 333892 * K
    assert parse_memory(step["MaxRSS"]) == 167024 * K
    # Without TRESUsageInTot (not asked, or empty): MaxRSS.
    assert step_peak(step | {"TRESUsageInTot": ""}) == 167024 * K
    assert step_peak({"MaxRSS": "167024K"}) == 167024 * K
    assert step_peak({"MaxRSS": "", "TRESUsageInTot": "energy=0"}) is None


def test_advice(usage):
    # One python process on two CPUs; no memory sample, so no memory advice.
    (cpu,) = usage[1, "2026-12-07T21:39:10"].advice()
    assert cpu.kind == "cpu"
    assert cpu.option == "#SBATCH --cpus-per-task"
    assert cpu.message == "used 0.4 of its 2 CPUs (21%): lower #SBATCH --cpus-per-task"
    steps = usage[18, "2026-12-07T21:40:53"]
    (memory,) = steps.advice()
    assert memory.kind == "memory"
    assert memory.option == "#SBATCH --mem"
    assert memory.message == (
        "used 216M of its 1.0G memory (21%): lower #SBATCH --mem (or --mem-per-cpu)"
    )
    # Near its time limit (95 %), with one CPU and no --mem (ReqMem: the node's memory).
    memory, time = usage[19, "2026-12-07T21:40:53"].advice()
    assert memory.message.startswith("used 3.2M of its 12G memory (0%): lower #SBATCH --mem")
    assert time.kind == "time"
    assert time.message == "ran 95% of its time limit: raise #SBATCH --time"
    kinds = [advice.kind for advice in usage[20, "2026-12-07T21:40:53"].advice()]
    assert kinds == ["memory", "time"]
    assert usage[3, "2026-12-07T21:39:10"].advice() == []
    # One CPU cannot be lowered; exactly a quarter is no waste, exactly 90 % no risk.
    assert Usage(100.0, 0.0, 1, G, G // 4, 1000.0 / 9 * 10).advice() == []


def test_to_json(usage):
    assert usage[18, "2026-12-07T21:40:53"].to_json() == {
        "cpus": 2,
        "cpu_seconds": 6.532,
        "cpu_efficiency": pytest.approx(6.532 / 14),
        "requested_memory_bytes": G,
        "peak_memory_bytes": 221248 * K,
        "memory_use": pytest.approx(221248 / (1024 * 1024)),
        "time_limit_seconds": 300.0,
        "time_use": pytest.approx(7 / 300),
    }

"""One job folder of an `sbatch_array()` step, as its submission and waiting see it."""

from dataclasses import dataclass
from datetime import datetime

from path import Path

from .joblog import LOG_NAME, JobLog
from .wrapper import JobScript

__all__ = ("ARRAYS_DIR", "ENDED_DIR", "ArrayFolder")

# Below the folder of plan.py: per step and submission (`ARRAYS_DIR/NAME/TOKEN/N`), the
# symlinks through which SLURM writes the output of each task into its job folder. Hidden, so
# the job tools do not search it. Removed once every task of the step ended.
ARRAYS_DIR = Path(".stepup-queue/arrays")
# Below `ARRAYS_DIR/NAME`: the empty files `ARRAYID_N` that tasks make as they end.
ENDED_DIR = "ended"


@dataclass
class ArrayFolder:
    """One job folder of the step."""

    path: Path
    digest: str
    script: JobScript
    joblog: JobLog | None = None
    # The end: the exit code, or SLURM's state when the script left none.
    code: int | None = None
    state: str | None = None
    # Until when a missing exit code of a script that ended is waited for.
    ret_deadline: float | None = None
    # Since when neither squeue nor sacct knows the task.
    unknown_since: datetime | None = None
    # The pending reason for which StepUp Queue cancelled the task, and its likely fix.
    hopeless: tuple[str, str] | None = None

    @property
    def log_path(self) -> Path:
        return self.path / LOG_NAME

    @property
    def key(self) -> tuple[int, int]:
        return self.joblog.job_id, self.joblog.task

    @property
    def name(self) -> str:
        """The task as SLURM names it, `ARRAYID_N`."""
        return f"{self.joblog.job_id}_{self.joblog.task}"

"""A job found through its log by the job tools, with what the log, `slurmjob.ret` and SLURM
say of it, and the verdicts the tools act on: alive, ended, succeeded, or not ours to touch.
"""

import getpass
import os
from dataclasses import dataclass
from datetime import datetime

from path import Path

from .arraymanifest import read_manifest
from .efficiency import Usage
from .joblog import JobLog
from .slurm.identity import (
    array_task_folder,
    foreign_workdir,
    why_not_array_task,
    why_not_logged_job,
)
from .states import FAILED_STATES, FINAL_STATES

__all__ = ("FoundJob",)


# Final states in which the job did not end well.


@dataclass
class FoundJob:
    """A job found through its log, with what the log, `slurmjob.ret` and SLURM say of it.

    Attributes
    ----------
    log
        The parsed log, with a job id or with the token of an interrupted submission.
    ret
        The contents of `slurmjob.ret`, see `read_ret`.
    asked
        True when SLURM answered the query for this job's cluster.
    asked_at
        When that answer was given (a cached answer may be older than the search), else `None`.
    live
        The state SLURM lists for the job now, `None` when it is not listed (or not asked).
    reason
        Why SLURM keeps the job pending (e.g. `Priority`), `None` when it does not say.
    token_id
        For a log without `Submitted` record: the job that SLURM lists with the log's token.
    account
        SLURM's accounting record of a job that squeue no longer lists (see
        `slurm.queries.HISTORY_FIELDS`), `None` when sacct was not asked or does not know it.
    history
        SLURM's accounting record of the job, also when squeue lists it; only asked for by
        `stepup jobs` (for the times and exit codes), else `None`.
    usage
        What the run of `history` asked for and used (CPU, memory, time), from the lines of
        the job steps in the same sacct call; `None` without `history`.
    workdir
        The folder in which squeue lists the job, `None` when it is not listed. Of an array
        task: the work directory of its array, the folder of the plan that submitted it.
    token
        Of an array task that squeue lists: its array's comment (the submission token), which
        with `workdir` tells the task's folder (see `why_not_ours`); else `None`.
    orphan
        True for a live job of StepUp Queue found without a log in its folder; `log` then
        holds only its job id and cluster.
    """

    log: JobLog
    ret: int | str | None
    asked: bool = False
    asked_at: datetime | None = None
    live: str | None = None
    reason: str | None = None
    token_id: int | None = None
    account: dict[str, str] | None = None
    history: dict[str, str] | None = None
    usage: Usage | None = None
    workdir: str | None = None
    token: str | None = None
    orphan: bool = False

    @property
    def folder(self) -> Path:
        """The job folder, normalized for printing."""
        return Path(os.path.normpath(self.log.path.parent))

    @property
    def job_id(self) -> int | None:
        return self.log.job_id if self.log.job_id is not None else self.token_id

    @property
    def name(self) -> str:
        """The job as SLURM names it: `ID`, or `ID_N` for an array task."""
        return self.log.job_name or str(self.job_id)

    @property
    def sacct_id(self) -> int | str | None:
        """The job id to ask sacct about: the job id, or `ID_N` for an array task."""
        return self.job_id if self.log.task is None else self.log.job_name

    @property
    def cluster(self) -> str | None:
        return self.log.cluster

    @property
    def ended_by_log(self) -> bool:
        """True when the log records a final state or `slurmjob.ret` holds an exit code.

        StepUp Queue ends a step as soon as the exit code appears, without logging a state,
        so an exit code alone means the job has finished.
        """
        return self.log.done or isinstance(self.ret, int)

    @property
    def active(self) -> bool | None:
        """True when the job has not finished, False when that is confirmed, else `None`.

        squeue no longer listing a job does not prove that it ended (it lists only the user's
        own jobs, and may forget one): the end is confirmed by sacct or by the log.
        """
        if not self.asked:
            return None
        if self.live is not None:
            return self.live not in FINAL_STATES
        if self.account is not None:
            return self.account["State"] not in FINAL_STATES
        return False if self.ended_by_log else None

    @property
    def owner(self) -> str | None:
        """The user who submitted the job according to sacct, `None` when unknown."""
        return None if self.account is None else self.account["User"]

    @property
    def why_not_ours(self) -> str | None:
        """Why SLURM's job with this id is not the log's job, `None` when nothing says so.

        Job ids are reused (e.g. after a reinstall of SLURM), and a folder may hold the log of
        another user's job: such a job is never cancelled and its files are never removed.
        """
        if self.log.task is not None:
            return self._why_task_not_ours()
        if self.live is not None:
            # squeue lists the user's own jobs only: the folder tells whether it is this one.
            why = foreign_workdir(self.job_id, self.workdir or "", self.log.path.parent)
        elif self.account is None:
            return None
        elif self.owner != getpass.getuser():
            return f"job of user {self.owner}: not touched"
        else:
            why = why_not_logged_job(
                self.job_id, self.account, self.log.path.parent, self.log.submitted_time
            )
        return None if why is None else f"{why}, not touched"

    def _why_task_not_ours(self) -> str | None:
        """`why_not_ours` of an array task: its array's token and work directory lead to the
        symlink of task N, which must point to this folder (see `why_not_array_task`)."""
        if self.live is not None:
            # squeue shows the comment of every job: an array without one is no array of ours.
            workdir, token, state, first = self.workdir or "", self.token or "", self.live, None
        elif self.account is not None or self.history is not None:
            record = self.account or self.history
            if record["User"] != getpass.getuser():
                return f"task of user {record['User']}: not touched"
            # The accounting keeps no comment by default: the token is not asked of it.
            workdir, token, state = record["WorkDir"], None, record["State"]
            first = record.get("FirstSubmit", record["Submit"])
        else:
            return None
        why = why_not_array_task(
            self.name,
            workdir,
            token,
            index=self.log.task,
            folder=self.log.path.parent,
            ended=state in FINAL_STATES,
            first_submit=first,
            submitted=self.log.submitted_time,
        )
        if why is None and not (token and array_task_folder(workdir, token, self.log.task)):
            # An ended task whose link is gone (its step removed the links): at least its
            # array's work directory must hold the manifest of a step that lists this folder.
            why = _unplanned(self.name, workdir, self.log.path.parent)
        return None if why is None else f"{why}, not touched"

    @property
    def end_state(self) -> str | None:
        """The final state recorded in the log, else the one SLURM lists, else `None`."""
        if self.log.done:
            return self.log.last_state
        for state in self.live, self.account and self.account["State"]:
            if state in FINAL_STATES:
                return state
        return None

    @property
    def succeeded(self) -> bool:
        """True when the script left exit code 0 and no failed end state is known."""
        return self.ret == 0 and self.end_state not in FAILED_STATES

    def slurm_column(self) -> str:
        """What SLURM says now, with the reason of a pending job, for printing."""
        if not self.asked:
            return "?"
        if self.live is None and self.account is not None:
            return self.account["State"]
        if self.live == "PENDING" and self.reason is not None:
            return f"PENDING ({self.reason})"
        return self.live or "gone"

    def log_column(self) -> str:
        """What the log and `slurmjob.ret` say, for printing."""
        if self.orphan:
            return "no log"
        # SUBMITTING: killed before the job id was logged; the job was found by its token.
        words = [self.log.last_state or ("SUBMITTING" if self.log.job_id is None else "SUBMITTED")]
        if isinstance(self.ret, int):
            words.append(f"exit={self.ret}")
        elif isinstance(self.ret, str):
            words.append("exit=?")
        return " ".join(words)


def _unplanned(name: str, workdir: str, folder: str) -> str | None:
    """Why an array task that ran in `workdir` cannot be the task of `folder`: no manifest of
    an sbatch_array() step there (`NAME.json` next to plan.py) lists the folder."""
    if workdir == "":
        return None
    real = os.path.realpath(folder)
    for path in Path(workdir).glob("*.json"):
        try:
            manifest = read_manifest(path)
        except ValueError:
            continue
        if any(os.path.realpath(Path(workdir) / other) == real for other in manifest.folders):
            return None
    return f"SLURM's task {name} ran from {workdir}, whose sbatch_array() steps list no {folder}"

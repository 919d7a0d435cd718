"""The errors with which a job step fails, each with a message that says what to do."""

__all__ = ("JobError", "RetryError", "SubmitInterrupted")


class JobError(RuntimeError):
    """The job cannot be submitted or did not end well. The message says why and what to do."""


class SubmitInterrupted(KeyboardInterrupt):
    """Interrupted before the job's id was known.

    Attributes
    ----------
    maybe_submitted
        False when no submission can have reached SLURM (e.g. while waiting for room under a
        submit limit), True when one may have (sbatch was cut off, or did not answer).
    """

    def __init__(self, maybe_submitted: bool):
        super().__init__()
        self.maybe_submitted = maybe_submitted


class RetryError(Exception):
    """SLURM ended the job in a state after which it is submitted again (see `retries`).

    Attributes
    ----------
    state
        SLURM's end state, e.g. `NODE_FAIL`.
    """

    def __init__(self, state: str):
        super().__init__(state)
        self.state = state

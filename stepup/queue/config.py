"""Settings of StepUp Queue, read from environment variables in one place.

Every variable is documented here and in the usage docs.
Invalid values raise a `ConfigError` that names the variable and the accepted values.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from path import Path

__all__ = ("Config", "ConfigError", "OnChange", "QueryMethod")


E = TypeVar("E", bound=Enum)

# The spellings StepUp Core 3 accepts, so a value keeps its meaning on StepUp 4.
_TRUE = ("yes", "true", "t", "y", "1")
_FALSE = ("no", "false", "f", "n", "0")


# Variables of the original StepUp Queue 2.x without an equivalent here, and why. Those with an
# equivalent are read in `Config.from_environ`, where the new name wins when both are set.
# The list is what 2.0.1's sq-sbatch-and-wait was seen to read (traced, not read in its code).
_LEGACY_IGNORED = {
    "STEPUP_SBATCH_RETRY_DELAY_MAX": "the delay before the next try of a failed sbatch starts "
    "at STEPUP_SBATCH_SUBMIT_BACKOFF and doubles each time",
    "STEPUP_SBATCH_UNLISTED_TIMEOUT": "a job that squeue no longer lists is looked up in sacct, "
    "which tells how it ended",
    "STEPUP_SACCT_START_TIME": "sacct is asked about each job from the submission time in its "
    "slurmjob.log",
    "STEPUP_SBATCH_CANCEL_TIMEOUT": "with onchange=resubmit, the old job is cancelled and the new "
    "one submitted at once, without waiting for the old one to leave the queue",
}


class ConfigError(ValueError):
    """An environment variable of StepUp Queue has an invalid value."""


class OnChange(Enum):
    """What to do when a job's inputs changed since it was submitted."""

    RAISE = "raise"
    RESUBMIT = "resubmit"
    IGNORE = "ignore"


class QueryMethod(Enum):
    """How the states of waiting jobs are asked from SLURM."""

    SQUEUE = "squeue"
    SCONTROL = "scontrol"


@dataclass(frozen=True)
class Config:
    """All settings of StepUp Queue.

    Attributes
    ----------
    onchange
        What to do with a job whose inputs changed since submission
        (`STEPUP_QUEUE_ONCHANGE`, or the older `STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS`).
    onchange_source
        The name of the variable that set `onchange`, or an empty string for the default.
    debug
        `STEPUP_SBATCH_DEBUG`: print each decision and look every second.
    cache_timeout
        `STEPUP_SBATCH_CACHE_TIMEOUT`: seconds a cached scheduler answer is reused.
    polling_interval
        `STEPUP_SBATCH_POLLING_INTERVAL`: seconds between two looks at `slurmjob.ret` of a
        job that has been waiting for a while (jobs younger than 20 intervals are looked at
        more often, see `sleep_range`).
    jitter
        `STEPUP_SBATCH_TIME_MARGIN`: maximal random extra seconds added to each sleep and to
        the time until the next status query, to spread the steps out.
    settle_time
        `STEPUP_SBATCH_SETTLE_TIME` (by default the value of `STEPUP_SBATCH_TIME_MARGIN`, which
        had both meanings, or 0.5): seconds after a submission, or after the script wrote its
        exit code, before SLURM's answer about the job is trusted.
    query
        `STEPUP_SBATCH_QUERY`: `squeue` (own jobs only, default) or `scontrol` (all jobs).
    command_timeout
        `STEPUP_SBATCH_COMMAND_TIMEOUT`: seconds after which a SLURM command is killed (see
        also `lock_timeout`).
    submit_retries
        `STEPUP_SBATCH_SUBMIT_RETRIES`: how often a transiently failing sbatch is retried.
    submit_backoff
        `STEPUP_SBATCH_SUBMIT_BACKOFF`: seconds before the first retry, doubled each time.
    ret_timeout
        `STEPUP_SBATCH_RET_TIMEOUT`: seconds to wait for `slurmjob.ret` to show an exit code
        once SLURM reports the job ended (or no longer lists it).
    hopeless_grace
        `STEPUP_SBATCH_HOPELESS_GRACE`: seconds a job may stay pending with a reason that never
        resolves by itself (e.g. `PartitionTimeLimit`) before it is cancelled.
    runaway_timeout
        `STEPUP_SBATCH_RUNAWAY_TIMEOUT`: seconds a job may be missing from squeue while the
        accounting still says it is pending or running (a runaway job) before the step fails.
    retries
        `STEPUP_QUEUE_RETRIES`: how often a job that SLURM ended with an infrastructure
        failure (NODE_FAIL, BOOT_FAIL, PREEMPTED) is submitted again, unless `sbatch(retries=...)`
        sets it for the step. 0 by default: the step fails.
    cache_dir
        Where the shared scheduler cache lives: `$XDG_CACHE_HOME/stepup-queue`,
        `~/.cache/stepup-queue`, or `STEPUP_QUEUE_CACHE_DIR` when set.
    warnings
        One line for each variable of the original StepUp Queue 2.x that is set and ignored.

    Variables of the original StepUp Queue 2.x are read where they have an equivalent, unless
    the new variable is set: `STEPUP_SBATCH_POLLING_MIN` and `STEPUP_SBATCH_POLLING_MAX` (the
    sleep between two looks lies between them), `STEPUP_SBATCH_RETRY_NUM` (submit_retries) and
    `STEPUP_SBATCH_RETRY_DELAY_MIN` (submit_backoff).
    """

    onchange: OnChange = OnChange.RAISE
    onchange_source: str = ""
    debug: bool = False
    cache_timeout: float = 30.0
    polling_interval: float = 1.0
    jitter: float = 0.5
    settle_time: float = 0.5
    query: QueryMethod = QueryMethod.SQUEUE
    command_timeout: float = 60.0
    submit_retries: int = 5
    submit_backoff: float = 10.0
    ret_timeout: float = 60.0
    hopeless_grace: float = 300.0
    runaway_timeout: float = 600.0
    retries: int = 0
    cache_dir: Path = field(default_factory=lambda: Path("~/.cache/stepup-queue").expanduser())
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Config":
        """Read all settings from environment variables.

        Parameters
        ----------
        environ
            The environment to read, `os.environ` by default.

        Returns
        -------
        config
            The settings, with defaults for unset variables.

        Raises
        ------
        ConfigError
            When a variable is set to a value that cannot be used.
        """
        if environ is None:
            environ = os.environ
        onchange, onchange_source = _read_onchange(environ)
        debug = _read_bool(environ, "STEPUP_SBATCH_DEBUG", False)
        polling_interval, jitter = _read_polling(environ)
        settle = _either(environ, "STEPUP_SBATCH_SETTLE_TIME", "STEPUP_SBATCH_TIME_MARGIN")
        retries = _either(environ, "STEPUP_SBATCH_SUBMIT_RETRIES", "STEPUP_SBATCH_RETRY_NUM")
        backoff = _either(environ, "STEPUP_SBATCH_SUBMIT_BACKOFF", "STEPUP_SBATCH_RETRY_DELAY_MIN")
        return cls(
            onchange=onchange,
            onchange_source=onchange_source,
            debug=debug,
            cache_timeout=_read_float(environ, "STEPUP_SBATCH_CACHE_TIMEOUT", 30.0),
            polling_interval=polling_interval,
            jitter=jitter,
            settle_time=_read_float(environ, settle, 0.5),
            query=_read_enum(environ, "STEPUP_SBATCH_QUERY", QueryMethod, QueryMethod.SQUEUE),
            command_timeout=_read_float(environ, "STEPUP_SBATCH_COMMAND_TIMEOUT", 60.0, 1.0),
            submit_retries=int(_read_float(environ, retries, 5, 0, True)),
            submit_backoff=_read_float(environ, backoff, 10.0),
            ret_timeout=_read_float(environ, "STEPUP_SBATCH_RET_TIMEOUT", 60.0),
            hopeless_grace=_read_float(environ, "STEPUP_SBATCH_HOPELESS_GRACE", 300.0),
            runaway_timeout=_read_float(environ, "STEPUP_SBATCH_RUNAWAY_TIMEOUT", 600.0),
            retries=int(_read_float(environ, "STEPUP_QUEUE_RETRIES", 0, 0, True)),
            cache_dir=_cache_dir(environ),
            warnings=tuple(
                f"{name} (a variable of the original StepUp Queue 2.x) is ignored: {why}. "
                "Unset it to silence this warning."
                for name, why in _LEGACY_IGNORED.items()
                if environ.get(name, "") != ""
            ),
        )

    def sleep_range(self, age: float | None = None) -> tuple[float, float]:
        """Return the bounds of the random sleep between two looks at a job.

        Parameters
        ----------
        age
            Seconds since the job was submitted, `None` when unknown.
            Young jobs are looked at more often, down to a fifth of the polling interval,
            so that a short job is noticed quickly; from an age of 20 polling intervals on,
            the sleep is the full interval (plus up to the time margin).
        """
        if self.debug:
            return 1.0, 1.0
        base = self.polling_interval
        if age is not None:
            base = min(base, max(base / 5, age / 20))
        scale = base / self.polling_interval if self.polling_interval > 0 else 1.0
        return base, base + self.jitter * scale

    @property
    def lock_timeout(self) -> float:
        """Seconds a step waits for a lock of the shared cache: as long as the holder's query
        may take (`command_timeout`), after which the holder is taken to be stuck."""
        return self.command_timeout


def _either(environ: Mapping[str, str], name: str, old: str) -> str:
    """The name of the variable to read: the new one, unless only the old one is set."""
    return old if environ.get(name, "") == "" and environ.get(old, "") != "" else name


def _read_polling(environ: Mapping[str, str]) -> tuple[float, float]:
    """The polling interval and the jitter, from the variables of either generation."""
    name = _either(environ, "STEPUP_SBATCH_POLLING_INTERVAL", "STEPUP_SBATCH_POLLING_MIN")
    interval = _read_float(environ, name, 1.0)
    if environ.get("STEPUP_SBATCH_TIME_MARGIN", "") != "":
        return interval, _read_float(environ, "STEPUP_SBATCH_TIME_MARGIN", 0.5)
    if environ.get("STEPUP_SBATCH_POLLING_MAX", "") != "":
        # 2.x sleeps between POLLING_MIN and POLLING_MAX: the margin spans the difference.
        maximum = _read_float(environ, "STEPUP_SBATCH_POLLING_MAX", 20.0, interval)
        return interval, maximum - interval
    return interval, 0.5


def _read_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean. Use yes/no, true/false or 1/0.")


def _read_float(
    environ: Mapping[str, str],
    name: str,
    default: float,
    minimum: float = 0.0,
    integer: bool = False,
) -> float:
    value = environ.get(name)
    if value is None or value == "":
        return default
    kind = "a whole number" if integer else "a number"
    try:
        result = int(value) if integer else float(value)
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not {kind}. Set it to {kind} >= {minimum:g} or unset it "
            f"(default {default:g})."
        ) from None
    if not result >= minimum:
        raise ConfigError(
            f"{name}={value!r} is too small. Set it to {kind} >= {minimum:g} or unset it "
            f"(default {default:g})."
        )
    return result


def _read_enum(environ: Mapping[str, str], name: str, enum: type[E], default: E) -> E:
    value = environ.get(name)
    if value is None or value == "":
        return default
    try:
        return enum(value.strip().lower())
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        raise ConfigError(f"{name}={value!r} is not one of: {choices}.") from None


def _read_onchange(environ: Mapping[str, str]) -> tuple[OnChange, str]:
    """Combine the new and the old variable; the new one wins when both are set."""
    if environ.get("STEPUP_QUEUE_ONCHANGE", "") != "":
        onchange = _read_enum(environ, "STEPUP_QUEUE_ONCHANGE", OnChange, OnChange.RAISE)
        return onchange, "STEPUP_QUEUE_ONCHANGE"
    if environ.get("STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS", "") != "":
        resubmit = _read_bool(environ, "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS", False)
        onchange = OnChange.RESUBMIT if resubmit else OnChange.RAISE
        return onchange, "STEPUP_QUEUE_RESUBMIT_CHANGED_INPUTS"
    return OnChange.RAISE, ""


def _cache_dir(environ: Mapping[str, str]) -> Path:
    explicit = environ.get("STEPUP_QUEUE_CACHE_DIR", "")
    if explicit != "":
        return Path(explicit)
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg != "":
        return Path(xdg) / "stepup-queue"
    home = environ.get("HOME", "")
    if home == "":
        raise ConfigError(
            "Cannot find a folder for the shared scheduler cache: HOME and XDG_CACHE_HOME are "
            "unset. Set one of them, or set STEPUP_QUEUE_CACHE_DIR to a writable folder."
        )
    return Path(home) / ".cache" / "stepup-queue"

"""The timeline chart of `stepup jobs --timeline FILE`: a Gantt chart of a workflow's jobs.

One bar per job, folder names on the y axis, time on the x axis: a light part while the job
queued, a dark part while it ran, colored by its end state. matplotlib is an optional
dependency (`pip install matplotlib`, the plot extra), imported only when a chart is drawn.
"""

import math
import os
from dataclasses import dataclass
from datetime import datetime

from path import Path

from .jobrows import JobRow
from .tables import shorten_middle

__all__ = ("FORMATS", "PLOT_HINT", "Bar", "draw_timeline", "timeline_bars", "timeline_problem")

PLOT_HINT = "pip install matplotlib"
FORMATS = (".png", ".svg", ".pdf")

# Colors of matplotlib's default cycle, by what the end state means for the user.
_COLORS = {
    "COMPLETED": "tab:green",
    "FAILED": "tab:red",
    "OUT_OF_MEMORY": "tab:red",
    "NODE_FAIL": "tab:red",
    "BOOT_FAIL": "tab:red",
    "TIMEOUT": "tab:orange",
    "DEADLINE": "tab:orange",
    "CANCELLED": "tab:gray",
    "PREEMPTED": "tab:gray",
    "REVOKED": "tab:gray",
}
# Jobs that have not ended (pending, running, or unknown).
_ACTIVE_COLOR = "tab:blue"
# The queue part of a bar is the run color, lighter.
_QUEUE_ALPHA = 0.35
# Inches per bar, for the first bars and for those after them: 500 jobs stay readable.
_FIRST_BARS = 40
_PITCH = 0.25
_PITCH_MANY = 0.07
# The smallest distance between folder labels, in points.
_LABEL_PITCH = 8.0
# The shortest time axis (days): ten seconds, so that ticks fall on whole seconds.
_MIN_SPAN = 10 / 86400
_LABEL_WIDTH = 40


@dataclass(frozen=True)
class Bar:
    """One bar of the chart.

    Attributes
    ----------
    folder
        The label on the y axis.
    job
        The job as SLURM names it: `ID`, or `ID_N` for an array task (drawn like a job).
    state
        The job's state, which sets the bar's color.
    submitted
        Where the bar starts.
    started
        Where the queue part ends and the run part starts, `None` when the job never ran.
    end
        Where the bar ends: when the job ended, or now when it has not.
    """

    folder: str
    job: str
    state: str
    submitted: datetime
    started: datetime | None
    end: datetime

    @property
    def color(self) -> str:
        return _COLORS.get(self.state, _ACTIVE_COLOR)


def timeline_problem(path: Path) -> str | None:
    """Why a timeline cannot be drawn into `path`, `None` when it can."""
    if path.suffix.lower() not in FORMATS:
        return (
            f"Cannot draw a timeline into {path}: the file name must end with "
            f"{', '.join(FORMATS)}, which selects the format."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return (
            f"Cannot draw a timeline into {path}: the folder {folder} does not exist. "
            "Create it first, or name a file in an existing folder."
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"The timeline needs matplotlib, which is not installed: {PLOT_HINT}"
    return None


def timeline_bars(rows: list[JobRow], now: datetime) -> list[Bar]:
    """The bars of the chart, top to bottom: one per row with a known submission time.

    A job that has not ended ends at `now`; an ended job whose end is unknown (e.g. SLURM
    could not be asked) gets no bar beyond what is known.
    """
    bars = []
    for row in rows:
        if row.submitted is None:
            continue
        end = row.ended if row.ended is not None else (None if row.has_ended else now)
        if end is None:
            end = row.started or row.submitted
        bars.append(Bar(row.folder, row.name, row.state, row.submitted, row.started, end))
    return bars


def draw_timeline(rows: list[JobRow], path: Path, now: datetime):
    """Draw the jobs as a Gantt chart and save it; the format follows the file's extension.

    Returns
    -------
    figure
        The matplotlib figure: its first axes holds two bar containers, labelled `queued`
        and `ran`, with one bar per job of `timeline_bars` in the same order.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    bars = timeline_bars(rows, now)
    count = max(len(bars), 1)
    height = 1.6 + _PITCH * min(count, _FIRST_BARS) + _PITCH_MANY * max(count - _FIRST_BARS, 0)
    fig, ax = plt.subplots(figsize=(10, height), layout="constrained")
    y = list(range(len(bars)))
    colors = [bar.color for bar in bars]
    starts = [dates.date2num(bar.submitted) for bar in bars]
    middles = [dates.date2num(bar.started or bar.end) for bar in bars]
    ends = [dates.date2num(bar.end) for bar in bars]
    queued = [middle - start for start, middle in zip(starts, middles, strict=True)]
    ran = [
        end - middle if bar.started else 0.0
        for bar, middle, end in zip(bars, middles, ends, strict=True)
    ]
    ax.barh(y, queued, left=starts, color=colors, alpha=_QUEUE_ALPHA, label="queued", height=0.8)
    # An edge in the bar's color: a job that sacct says ran 0 s (whole seconds) shows as a line.
    ax.barh(
        y, ran, left=middles, color=colors, edgecolor=colors, linewidth=1.0, label="ran", height=0.8
    )
    # Thin out the folder labels when the bars are too close for them.
    pitch = (height - 1.6) * 72 / count
    step = max(1, math.ceil(_LABEL_PITCH / pitch))
    ax.set_yticks(y[::step], [shorten_middle(bar.folder, _LABEL_WIDTH) for bar in bars][::step])
    ax.tick_params(axis="y", labelsize=min(9.0, max(pitch * step * 0.9, 5.0)))
    ax.set_ylim(len(bars) - 0.5, -0.5)
    if bars and max(ends) - min(starts) < _MIN_SPAN:
        # Shorter spans get ticks every fraction of a second, which all read the same.
        ax.set_xlim(min(starts), min(starts) + _MIN_SPAN)
    ax.xaxis.set_major_locator(dates.AutoDateLocator())
    # Clock times on every tick: a concise formatter shows bare seconds (05 06 07) for short runs.
    short = not bars or max(ends) - min(starts) < 1.0
    ax.xaxis.set_major_formatter(dates.DateFormatter("%H:%M:%S" if short else "%b %d %H:%M"))
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("clock time (light: queued, dark: running)")
    states = sorted({bar.state for bar in bars})
    handles = [Patch(color=_COLORS.get(state, _ACTIVE_COLOR), label=state) for state in states]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title(f"{len(bars)} SLURM job{'' if len(bars) == 1 else 's'}")
    fig.savefig(path)
    plt.close(fig)
    return fig

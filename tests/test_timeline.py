"""`stepup jobs --timeline FILE`: the chart of a real workflow's jobs, and its data."""

import argparse
import re
import sys
from datetime import datetime, timedelta

import pytest
from conftest import JobTools, sacct, wait_for
from matplotlib import dates
from path import Path

from stepup.queue.joblog import read_log
from stepup.queue.jobrows import JobRow, job_rows
from stepup.queue.jobs import jobs_tool
from stepup.queue.jobsearch import search_jobs
from stepup.queue.timeline import PLOT_HINT, draw_timeline, timeline_bars

MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".pdf": b"%PDF-", ".svg": b"<?xml"}


def bars(figure) -> dict[str, list[tuple[float, float, float]]]:
    """The bars of a drawn timeline: container label → (y, left, right) per bar."""
    (ax,) = figure.axes
    return {
        container.get_label(): [
            (
                patch.get_y() + patch.get_height() / 2,
                patch.get_x(),
                patch.get_x() + patch.get_width(),
            )
            for patch in container.patches
        ]
        for container in ax.containers
    }


def test_timeline_files_and_bars_match_sacct(jobtools: JobTools, monkeypatch):
    wf = jobtools.workflow
    wf.plan("""
        static("a/", "a/slurmjob.sh", "b/", "b/slurmjob.sh", "c/", "c/slurmjob.sh")
        sbatch("a/")
        sbatch("b/")
        sbatch("c/")
    """)
    wf.job("a", "#!/usr/bin/env bash\nsleep 3\n")
    wf.job("b", "#!/usr/bin/env bash\nsleep 1\nexit 1\n")
    wf.job("c", "#!/usr/bin/env bash\nsleep 2\n")
    assert wf.boot("-n", "3").returncode != 0
    held = jobtools.submit("d")
    records = {int(r["JobIDRaw"]): r for r in wf.final_jobs(3)}
    wait_for(lambda: len(sacct("-j", str(held))) == 1, 60, "sacct to list the held job")

    for suffix, magic in MAGIC.items():
        path = wf.root / f"timeline{suffix}"
        result = jobtools.run("jobs", "--timeline", path.name)
        assert result.returncode == 0, result.stderr
        assert f"Timeline of 4 jobs written to {path.name}" in result.stderr
        data = path.read_bytes()
        assert data.startswith(magic)
        assert len(data) > 5000
    assert b"<svg" in (wf.root / "timeline.svg").read_bytes()[:1000]

    # The chart's data, drawn in this process from what the tool finds, against sacct.
    monkeypatch.setenv("PATH", wf.env["PATH"])
    monkeypatch.chdir(wf.root)
    now = datetime.now()
    rows = job_rows(search_jobs([Path(".")], history=True), now)
    figure = draw_timeline(rows, wf.root / "check.png", now)
    drawn = bars(figure)
    assert sorted(drawn) == ["queued", "ran"]
    assert [y for y, _, _ in drawn["queued"]] == [0, 1, 2, 3]
    ids = [read_log(wf.root / f"{folder}/slurmjob.log").job_id for folder in "abc"]
    for y, job_id in enumerate(ids):
        record = records[job_id]
        submit, start, end = (
            dates.date2num(datetime.fromisoformat(record[name]))
            for name in ("Submit", "Start", "End")
        )
        assert drawn["queued"][y][1:] == pytest.approx((submit, start), abs=1e-9)
        assert drawn["ran"][y][1:] == pytest.approx((start, end), abs=1e-9)
    # The held job queues until now and never ran.
    submit = dates.date2num(datetime.fromisoformat(sacct("-j", str(held))[0]["Submit"]))
    assert drawn["queued"][3][1:] == pytest.approx((submit, dates.date2num(now)), abs=1e-9)
    assert drawn["ran"][3][2] - drawn["ran"][3][1] == 0
    # Colors by end state: the failed job's bar differs from the two completed ones.
    (ax,) = figure.axes
    colors = [patch.get_facecolor() for patch in ax.containers[1].patches]
    assert colors[0] == colors[2] != colors[1]
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels == ["a", "b", "c", "d"]


def synthetic_rows(count: int) -> list[JobRow]:
    """Rows as `stepup jobs` makes them, for the layout of charts with many jobs."""
    start = datetime(2026, 1, 1, 12)
    return [
        JobRow(
            folder=f"sweep/value{i:03d}",
            job_id=1000 + i,
            cluster=None,
            state="COMPLETED" if i % 7 else "FAILED",
            source="sacct",
            reason=None,
            exit_code=0 if i % 7 else 1,
            signal=None,
            submitted=start + timedelta(seconds=i),
            started=start + timedelta(seconds=2 * i + 5),
            ended=start + timedelta(seconds=2 * i + 65),
            queued=i + 5,
            ran=60,
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 500])
def test_layout_for_1_and_500_jobs(tmp_path, count: int):
    path = Path(tmp_path) / "timeline.png"
    figure = draw_timeline(synthetic_rows(count), path, datetime(2026, 1, 2))
    assert path.read_bytes().startswith(MAGIC[".png"])
    drawn = bars(figure)
    assert len(drawn["queued"]) == len(drawn["ran"]) == count
    height = figure.get_size_inches()[1]
    (ax,) = figure.axes
    labels = [label for label in ax.get_yticklabels() if label.get_text()]
    if count == 1:
        assert height < 3
        assert [label.get_text() for label in labels] == ["sweep/value000"]
    else:
        # Tall enough for each bar, labels thinned so that they do not overlap.
        assert 30 < height < 50
        assert 100 < len(labels) < count
        pitch = height * 72 / count * (count / len(labels))
        assert all(5 <= label.get_fontsize() < pitch for label in labels)


def test_without_matplotlib_or_with_a_bad_name(tmp_path, monkeypatch, capsys):
    """Without matplotlib, the tool says how to install it, before it asks SLURM anything.

    `sys.modules["matplotlib"] = None` makes `import matplotlib` fail, as when it is not
    installed (the test venvs have it, for the other tests).
    """
    args = argparse.Namespace(
        paths=[Path(tmp_path)],
        state=None,
        json=False,
        timeline=Path(tmp_path) / "t.png",
        watch=None,
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert jobs_tool(args) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(PLOT_HINT)
    assert PLOT_HINT == "pip install matplotlib"
    monkeypatch.undo()
    args.timeline = Path(tmp_path) / "t.jpg"
    assert jobs_tool(args) == 2
    err = capsys.readouterr().err
    assert f"Cannot draw a timeline into {args.timeline}" in err
    assert ".png, .svg, .pdf" in err
    assert not args.timeline.exists()


def test_timeline_into_a_missing_folder(jobtools: JobTools):
    """A chart into a folder that does not exist: a clear error before SLURM is asked, no
    traceback, and no folder made."""
    jobtools.submit("a")
    target = jobtools.workflow.root / "missing/chart.png"
    result = jobtools.run("jobs", "--timeline", str(target), ".")
    assert result.returncode != 0
    assert f"the folder {target.parent} does not exist" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not target.parent.exists()
    assert jobtools.calls("squeue") == []


def test_time_axis_shows_clock_times(tmp_path):
    """Every tick of a run of a few minutes is a clock time, not bare seconds (`05 06 07`)."""
    figure = draw_timeline(synthetic_rows(3), Path(tmp_path) / "timeline.png", datetime(2026, 1, 2))
    (ax,) = figure.axes
    ticks = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    assert len(ticks) >= 3
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d", tick) for tick in ticks), ticks
    assert ax.get_xlabel().startswith("clock time")


def test_short_and_zero_length_jobs(tmp_path):
    """Jobs of a few seconds get distinct clock times on the axis, and a job that sacct says
    queued and ran 0 s (whole seconds) is still drawn."""
    rows = synthetic_rows(2)
    start = rows[0].submitted
    for row in rows:
        row.started = row.ended = row.submitted = start
    rows[1].ended = start + timedelta(seconds=3)
    figure = draw_timeline(rows, Path(tmp_path) / "timeline.png", datetime(2026, 1, 2))
    (ax,) = figure.axes
    figure.canvas.draw()
    ticks = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
    assert len(ticks) >= 3
    assert len(set(ticks)) == len(ticks), ticks
    zero = ax.containers[1].patches[0]
    assert zero.get_width() == 0
    assert zero.get_linewidth() > 0
    assert tuple(zero.get_edgecolor()) == tuple(zero.get_facecolor())


def test_array_tasks_drawn_as_jobs():
    rows = synthetic_rows(2)
    rows[1].task = 3
    bars = timeline_bars(rows, datetime(2026, 1, 2))
    assert [bar.job for bar in bars] == ["1000", "1001_3"]

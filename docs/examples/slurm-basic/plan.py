#!/usr/bin/env python3
# StepUp 4: run with `stepup build -j 8`; each waiting step holds one of the 8
# slots. For StepUp 3, see plan-stepup3.py.
from stepup.core.api import render_jinja, static

from stepup.queue.api import sbatch

static("pass/slurmjob.py", "fail/slurmjob.sh", "sweep.sh", "rc.sh")

# A static job script written in Python.
sbatch("pass/", ext=".py", out="pi.txt")

# A static job script that fails: this step fails with the script's exit code.
sbatch("fail/")

# Three job scripts rendered from one template, each submitted after running
# rc.sh.
for value in 1, 2, 3:
    folder = f"sweep/value{value}/"
    render_jinja("sweep.sh", {"value": value}, f"{folder}slurmjob.sh")
    sbatch(folder, rc=". ../../rc.sh", inp="../../rc.sh", out="result.txt")

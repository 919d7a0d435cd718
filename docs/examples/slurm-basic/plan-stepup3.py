#!/usr/bin/env python3
# StepUp 3: run with `stepup boot -n 8`. For StepUp 4, see plan.py.
from stepup.core.api import mkdir, render_jinja, static

from stepup.queue.api import sbatch

static("pass/", "pass/slurmjob.py", "fail/", "fail/slurmjob.sh")
static("sweep.sh", "rc.sh")

# A static job script written in Python.
sbatch("pass/", ext=".py", out="pi.txt")

# A static job script that fails: this step fails with the script's exit code.
sbatch("fail/")

# Three job scripts rendered from one template, each submitted after running
# rc.sh.
mkdir("sweep/")
for value in 1, 2, 3:
    folder = f"sweep/value{value}/"
    mkdir(folder)
    render_jinja("sweep.sh", {"value": value}, f"{folder}slurmjob.sh")
    sbatch(folder, rc=". ../../rc.sh", inp="../../rc.sh", out="result.txt")

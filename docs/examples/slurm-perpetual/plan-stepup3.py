#!/usr/bin/env python3
# StepUp 3: run with `stepup boot -n 8`. For StepUp 4, see plan.py.
from stepup.core.api import static

from stepup.queue.api import sbatch

static("produce/", "produce/slurmjob.sh", "consume/", "consume/slurmjob.sh")

# The first job writes numbers.txt, which the second job reads.
sbatch("produce/", out="numbers.txt")
sbatch("consume/", inp="../produce/numbers.txt", out="sum.txt")

#!/usr/bin/env python3
# StepUp 4. For StepUp 3, see plan-stepup3.py.
from stepup.core.api import static

from stepup.queue.api import sbatch

static("produce/slurmjob.sh", "consume/slurmjob.sh")

# The first job writes numbers.txt, which the second job reads.
sbatch("produce/", out="numbers.txt")
sbatch("consume/", inp="../produce/numbers.txt", out="sum.txt")

#!/usr/bin/env python3
# fmt: off
#SBATCH --job-name=pass
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
# fmt: on
"""A job script in Python: estimate pi (midpoint rule), write it to pi.txt."""

n = 1_000_000
pi = sum(4 / (1 + ((i + 0.5) / n) ** 2) for i in range(n)) / n
print(f"pi is approximately {pi:.10f}")
with open("pi.txt", "w") as fh:
    fh.write(f"{pi:.10f}\n")

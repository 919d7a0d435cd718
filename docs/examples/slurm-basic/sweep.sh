#!/usr/bin/env bash
#SBATCH --job-name=sweep-{{ value }}
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
# Rendered from sweep.sh with value={{ value }}.
# EXAMPLE_FACTOR is exported by rc.sh, which runs just before sbatch.
echo "value={{ value }} factor=${EXAMPLE_FACTOR}"
# Runs for a few seconds, so that the jobs show up as bars in `stepup jobs
# --timeline`.
sleep {{ value }}
echo $(({{ value }} * EXAMPLE_FACTOR)) > result.txt

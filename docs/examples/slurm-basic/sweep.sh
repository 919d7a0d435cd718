#!/usr/bin/env bash
#SBATCH --job-name=sweep-{{ value }}
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
# Rendered from sweep.sh with value={{ value }}.
# EXAMPLE_FACTOR is exported by rc.sh, which runs just before sbatch.
echo "value={{ value }} factor=${EXAMPLE_FACTOR}"
echo $(({{ value }} * EXAMPLE_FACTOR)) > result.txt

#!/usr/bin/env bash
#SBATCH --job-name=fail
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
echo "This job fails on purpose." >&2
exit 1

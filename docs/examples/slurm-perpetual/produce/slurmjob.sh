#!/usr/bin/env bash
#SBATCH --job-name=produce
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
# The sleep stands for a long computation, longer than one run of workflow.sh in
# CI.
sleep 10
seq 1 100 > numbers.txt

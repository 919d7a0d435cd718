#!/usr/bin/env bash
#SBATCH --job-name=consume
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
awk '{total += $1} END {print total}' ../produce/numbers.txt > sum.txt

# Sourced before sbatch, in the same shell (/bin/sh). This is the place to load modules or
# activate a software environment. sbatch passes the exported variables on to the job.
export EXAMPLE_FACTOR=10

# Sourced before sbatch by bash, in the same shell as sbatch. This is the place
# to load modules or activate a software environment. sbatch passes the exported
# variables on to the job. Print nothing on standard output: StepUp Queue reads
# the job id from it.
export EXAMPLE_FACTOR=10

"""StepUp Queue: submit SLURM jobs as steps of a StepUp workflow and wait for them."""

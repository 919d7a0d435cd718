"""Benchmarks of StepUp Queue on a real (local) SLURM: run `python -m benchmarks.run_all`."""

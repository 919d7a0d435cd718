"""Everything that talks to SLURM, one concern per module, from the bottom up.

- `commands`: runs any SLURM command, in one clean environment and with a time-out.
- `parsers`: plain functions over what squeue, sacct and scontrol print.
- `queries`: one function per question to SLURM (squeue, sacct, scontrol show).
- `control`: the commands that change the queue (sbatch after rc, scancel).
- `locks`: the file locks shared by the steps of all of a user's workflows.
- `cache`: the shared cache of the status query that every waiting step reads.
- `identity`: which job is whose (reused ids, requeues, interrupted submissions).

Nothing here knows of job folders' logs or of StepUp: the job lifecycle and the tools decide,
these modules ask and answer.
"""

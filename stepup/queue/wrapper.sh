#!/usr/bin/env bash
#@DIRECTIVES@
# Written by StepUp Queue from its template stepup/queue/wrapper.sh: runs the job script and
# keeps its exit code. Needs bash >= 4.3. The template's slots, filled by render_wrapper, are
# written between at signs: the #SBATCH lines of the script, the names of the exit code file
# and the job log, the token of the submission, the code that enters an array task's job
# folder (empty for a single job), the command that runs the script and the code that says
# that an array task ended (empty for a single job).
ret=@RET@
log=@LOG@
token=@TOKEN@
#@PRELUDE@

# Is this job the one that the job log names? Its last Submitted record, or, before it is
# written, the token of its Submitting record. The step rewrites the log before it submits a
# job in place of another (changed inputs): the replaced job's late exit code is never taken
# for its successor's. Without a log (the wrapper run by hand), it is.
logged() {
    local kind rest submitted="" submitting=""
    if [[ ! -e $log ]]; then return 0; fi
    while read -r _ kind rest; do
        case $kind in
            Submitted) submitted=$rest ;;
            Submitting) submitting=$rest ;;
        esac
    done < "$log"
    if [[ -n $submitted ]]; then
        # sbatch -M prints ID;CLUSTER. An array task's log records ARRAYID_TASK (sbatch_array).
        if [[ ${submitted%%;*} == *_* ]]; then
            local task="${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}"
            if [[ ${submitted%%;*} != "$task" ]]; then return 1; fi
        elif [[ ${submitted%%;*} != "${SLURM_JOB_ID:-}" ]]; then
            return 1
        fi
        if [[ $submitted != *";"* || -z ${SLURM_CLUSTER_NAME:-} ]]; then return 0; fi
        if [[ ${submitted#*;} == "$SLURM_CLUSTER_NAME" ]]; then return 0; fi
        return 1
    fi
    if [[ -n $token && $submitting == "$token" ]]; then return 0; fi
    return 1
}

# Write the exit code to slurmjob.ret, or empty it without an argument, when this job is the
# logged one. The step empties the file under the same lock once it rewrote the log, so no
# job's code lands after that. Without flock (or on a file system without locks) the file is
# written all the same.
put_ret() {
    {
        flock -w 60 5 2> /dev/null
        if logged; then
            if (($#)); then printf '%s\n' "$1" > "$ret"; else : > "$ret"; fi
        fi
    } 5>> "$ret"
}

put_ret

# Signals that SLURM sends to this batch shell alone (scancel -b, --signal=B:SIG@TIME) are
# meant for the script. Not TERM (see on_term), CONT (SLURM sends it to every process before
# ending a job) and those of the kernel about the wrapper itself (SEGV, PIPE, CHLD, ...).
# shellcheck disable=SC2317 # Called from the traps.
forward() { if [[ -n ${pid:-} ]]; then kill -s "$1" "$pid" 2> /dev/null; fi; }
for sig in HUP INT QUIT ABRT USR1 USR2 ALRM URG XCPU XFSZ VTALRM PROF WINCH; do
    # shellcheck disable=SC2064 # The signal's name is meant to be expanded now.
    trap "forward $sig" "$sig"
done

# SLURM ends a job (scancel, time limit, requeue) with SIGTERM to all its processes, and then
# lists it no longer as RUNNING. True when SLURM says so: when scontrol fails three times, a
# second apart, the job counts as running, so that the script gets the SIGTERM and its exit code
# is kept (the step then compares it with SLURM's state). Outside SLURM, true. Every return has
# an explicit status: in a trap handler, a bare `return` gives that of the command before it.
ended() {
    local try show
    if [[ -z ${SLURM_JOB_ID:-} ]]; then return 0; fi
    for try in 1 2 3; do
        if show=$(scontrol show job "$SLURM_JOB_ID" 2> /dev/null) && [[ $show == *JobState=* ]]
        then
            if [[ $show == *" JobState=RUNNING "* ]]; then return 1; fi
            return 0
        fi
        if ((try < 3)); then sleep 1; fi
    done
    return 1
}
# A SIGTERM while the job runs on is for this batch shell alone (--signal=B:TERM@60,
# scancel -b -s TERM): it is the script's.
# shellcheck disable=SC2317 # Called from the trap.
on_term() { if ended; then terminated=yes; else forward TERM; fi; }
trap on_term TERM

# The script runs in the process group of this shell, as if it were the batch shell itself, so
# that SLURM's signals for the whole batch step (scancel --full, ProctrackType=proctrack/pgid)
# reach its children too. In the background without job control, bash starts it with SIGINT
# and SIGQUIT ignored, which `trap -` undoes, and with standard input from /dev/null: fd 4 is
# this shell's. Then job control, for the sleeps only: each in a group of its own, out of reach
# of signals for the batch step. Poll, not wait: bash 5.2 may lose the exit code of a script
# that ends while a trap interrupts wait. Traps run between the sleeps, short ones first so
# that a short job ends without delay. Bash's job status lines (Terminated, ...) go to /dev/null.
{
    (
        trap - INT QUIT
        exec @COMMAND@ <&4 4<&- 2>&3 3>&-
    ) &
    pid=$!
    set -m
    while kill -0 "$pid"; do
        if ((SECONDS < 10)); then sleep 0.1; else sleep 1; fi
    done
    wait "$pid"
    code=$?
    set +m
} 4<&0 3>&2 2> /dev/null

# SLURM's SIGTERM may reach the script first, and end it before this shell traps it.
if ((code != 0)) && [[ -n ${SLURM_JOB_ID:-} ]] && ended; then terminated=yes; fi
# A job ended by SLURM leaves no exit code: the step then reports SLURM's state.
if [[ -z ${terminated:-} ]]; then put_ret "$code"; fi
#@EPILOGUE@
exit "$code"

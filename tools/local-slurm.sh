#!/usr/bin/env bash
# Install and run a single-node SLURM (munge, MariaDB, slurmdbd, slurmctld, slurmd) on this
# Debian machine, as root and without systemd. Used by the tests, the benchmarks and the demo.
#
#   tools/local-slurm.sh start    install what is missing, start what is not running, wait idle
#   tools/local-slurm.sh stop     end only the daemons this script started
#   tools/local-slurm.sh status   show which daemons run
#
# Safe to run again at any time, also after every process was killed without warning:
# stale pid files, sockets and locks are detected and cleared before a daemon starts.
set -euo pipefail

CLUSTER="${STEPUP_QUEUE_TEST_CLUSTER:-localcluster}"
STATE="${STEPUP_QUEUE_SLURM_STATE:-/var/lib/stepup-queue-slurm}"
MIN_JOB_AGE="${STEPUP_QUEUE_SLURM_MIN_JOB_AGE:-30}"
# More CPUs than the machine has, so that tests with many short jobs need not queue them.
NODE_CPUS="${STEPUP_QUEUE_SLURM_CPUS:-64}"
# 1: confine jobs with cgroups (v1), so that a job over its --mem ends OUT_OF_MEMORY.
CGROUP="${STEPUP_QUEUE_SLURM_CGROUP:-0}"
MARKER="# Written by stepup-queue tools/local-slurm.sh"
DB_PASS="stepup-queue-local"
CONFIG_CHANGED=

say() { echo "local-slurm: $*" >&2; }

# True when the pid in file $1 is alive and its command name contains $2.
# A killed daemon whose parent never reaps it stays a zombie (state Z): that counts as dead.
alive() {
    local pidfile=$1 name=$2 pid stat
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2> /dev/null) || return 1
    [[ $stat == *"($name)"* ]] || return 1
    # The state is the first field after the command name in parentheses.
    [[ ${stat##*) } != Z* ]]
}

wait_for() {
    local what=$1 tries=$2
    shift 2
    for ((i = 0; i < tries; i++)); do
        if "$@" > /dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    say "timed out waiting for $what"
    return 1
}

install_packages() {
    local missing=()
    for cmd in sbatch slurmctld slurmd slurmdbd munged mysqld_safe; do
        command -v "$cmd" > /dev/null || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing Debian packages (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        slurm-wlm slurmdbd munge mariadb-server > /dev/null
}

write_config() {
    local host mem
    host=$(hostname -s)
    # Half of the machine's memory, in MB, so the node never claims more than it has.
    mem=$(awk '/MemTotal/ {print int($2 / 2048)}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE"/{ctld,slurmd,log,run}
    if [[ -f /etc/slurm/slurm.conf ]] && ! grep -qF "$MARKER" /etc/slurm/slurm.conf; then
        say "/etc/slurm/slurm.conf exists and was not written by this script; leaving it alone."
        say "Move it away to let this script configure a local test cluster."
        exit 1
    fi
    local old proctrack=proctrack/linuxproc task=task/none select=CR_Core
    if [[ $CGROUP == 1 ]]; then
        if [[ ! -w /sys/fs/cgroup/memory/cgroup.procs ]]; then
            say "STEPUP_QUEUE_SLURM_CGROUP=1 needs the cgroup v1 memory controller, writable"
            say "at /sys/fs/cgroup/memory; this machine does not have it."
            exit 1
        fi
        proctrack=proctrack/cgroup task=task/cgroup select=CR_Core_Memory
        cat > /etc/slurm/cgroup.conf << EOF
$MARKER
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainRAMSpace=yes
EOF
    elif grep -qsF "$MARKER" /etc/slurm/cgroup.conf; then
        rm /etc/slurm/cgroup.conf
    fi
    old=$(cat /etc/slurm/slurm.conf 2> /dev/null || true)
    cat > /etc/slurm/slurm.conf << EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=$proctrack
TaskPlugin=$task
SelectType=select/cons_tres
SelectTypeParameters=$select
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
MinJobAge=$MIN_JOB_AGE
# Between SLURM's SIGTERM and SIGKILL when a job ends: time for a job script's TERM trap to run
# on a loaded machine (with 2 s, CI once saw a trap that never ran).
KillWait=10
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
# Limits set with sacctmgr (e.g. MaxSubmitJobs, in the cluster-limit tests) are enforced.
AccountingStorageEnforce=associations,limits
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
NodeName=$host CPUs=$NODE_CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    [[ $old == "$(< /etc/slurm/slurm.conf)" ]] || CONFIG_CHANGED=1
    cat > /etc/slurm/slurmdbd.conf << EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 600 /etc/slurm/slurmdbd.conf
}

start_munge() {
    if alive /run/munge/munged.pid munged; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    rm -f /run/munge/munged.pid
    # --force: take over the socket left behind by a killed munged.
    su -s /bin/sh munge -c "/usr/sbin/munged --force"
    wait_for munge 40 sh -c "munge -n | unmunge"
    touch "$STATE/run/started-munge"
}

start_mariadb() {
    if mysqladmin ping > /dev/null 2>&1; then return 0; fi
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    rm -f /run/mysqld/mysqld.pid /run/mysqld/mysqld.sock /run/mysqld/mysqld.sock.lock
    setsid nohup mysqld_safe --skip-syslog > "$STATE/log/mysqld_safe.log" 2>&1 < /dev/null &
    wait_for MariaDB 120 mysqladmin ping
    touch "$STATE/run/started-mariadb"
    mysql -u root << EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if alive "$STATE/run/slurmdbd.pid" slurmdbd; then return 0; fi
    rm -f "$STATE/run/slurmdbd.pid"
    slurmdbd
    wait_for slurmdbd 60 sacctmgr -n list cluster
}

add_associations() {
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" > /dev/null
    fi
    # With AccountingStorageEnforce, only users with an association may submit: root has one
    # with the cluster; the tests also submit as nobody (a job of another user).
    if ! sacctmgr -n -P list user format=user | grep -qx nobody; then
        sacctmgr -i add user nobody account=root cluster="$CLUSTER" > /dev/null
    fi
}

start_slurmctld() {
    if alive "$STATE/run/slurmctld.pid" slurmctld; then return 0; fi
    rm -f "$STATE/run/slurmctld.pid"
    slurmctld
    wait_for slurmctld 60 scontrol ping
}

start_slurmd() {
    if alive "$STATE/run/slurmd.pid" slurmd; then return 0; fi
    rm -f "$STATE/run/slurmd.pid"
    slurmd
}

node_ready() {
    local state
    state=$(sinfo -h -N -o %T | head -n 1)
    case "$state" in
        idle* | mixed* | allocated*) return 0 ;;
        down* | drain* | fail*)
            # A node left down by an earlier test or a killed slurmd: bring it back.
            scontrol update nodename="$(hostname -s)" state=resume > /dev/null 2>&1 || true
            return 1
            ;;
        *) return 1 ;;
    esac
}

start() {
    [[ $(id -u) == 0 ]] || { say "run me as root"; exit 1; }
    install_packages
    write_config
    if [[ -n $CONFIG_CHANGED ]]; then
        # Some settings (e.g. SelectType) are read only when the daemons start; jobs survive.
        stop_pidfile "$STATE/run/slurmd.pid" slurmd
        stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
    fi
    start_munge
    start_mariadb
    start_slurmdbd
    add_associations
    start_slurmctld
    start_slurmd
    wait_for "the node to become idle" 120 node_ready
    say "cluster $CLUSTER is up: $(sinfo -h -o '%P %a %D %T' | head -n 1)"
}

stop_pidfile() {
    local pidfile=$1 name=$2
    alive "$pidfile" "$name" || return 0
    kill "$(<"$pidfile")"
    for ((i = 0; i < 40; i++)); do alive "$pidfile" "$name" || return 0; sleep 0.25; done
    kill -9 "$(<"$pidfile")" 2> /dev/null || true
}

stop() {
    stop_pidfile "$STATE/run/slurmd.pid" slurmd
    stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
    stop_pidfile "$STATE/run/slurmdbd.pid" slurmdbd
    if [[ -e $STATE/run/started-mariadb ]]; then
        mysqladmin shutdown > /dev/null 2>&1 || true
        rm -f "$STATE/run/started-mariadb"
    fi
    if [[ -e $STATE/run/started-munge ]]; then
        stop_pidfile /run/munge/munged.pid munged
        rm -f "$STATE/run/started-munge"
    fi
    say "stopped"
}

status() {
    alive /run/munge/munged.pid munged && echo "munged: running" || echo "munged: stopped"
    mysqladmin ping > /dev/null 2>&1 && echo "mariadb: running" || echo "mariadb: stopped"
    for d in slurmdbd slurmctld slurmd; do
        alive "$STATE/run/$d.pid" "$d" && echo "$d: running" || echo "$d: stopped"
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac

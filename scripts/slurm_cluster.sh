#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying and testing hydra/launcher=slurm (tests/test_slurm.py):
#
#   scripts/slurm_cluster.sh install       # as root: Debian's slurmctld, slurmd, slurm-client and munge
#   scripts/slurm_cluster.sh start DIR     # as root: munged, slurmctld and slurmd, their files in DIR
#   export SLURM_CONF=DIR/slurm.conf       # then sinfo, sbatch, squeue, scancel talk to it
#   scripts/slurm_cluster.sh stop DIR      # stops them all
#
# The node is this machine (localhost) with all its CPUs and memory, in one partition `debug`. Processes are
# tracked without cgroups (proctrack/linuxproc, task/none) and no accounting database runs (sacct has nothing
# to say; submitit then follows its jobs by their result files). A requeued job (scontrol requeue) keeps its job
# id and may start again after 2 minutes (SLURM's hold; `scontrol update JobId=N StartTime=now` skips it).
# SLURMCTLD_PORT and SLURMD_PORT (default 6817, 6818) let several clusters run side by side.
set -euo pipefail

usage() { echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2; }

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    # another apt-get at the same time (a second test worker): wait for its lock rather than fail
    apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q slurmctld slurmd slurm-client munge
}

start() {
    local dir host cpus memory_mb
    dir=$(realpath -m "$1")
    host=$(hostname -s)
    cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc, which OMP_NUM_THREADS lowers
    memory_mb=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p "$dir"/{munge,spool,state,log}
    chmod 700 "$dir" "$dir/munge"

    mungekey --create --keyfile="$dir/munge/munge.key" --force
    munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

    cat > "$dir/slurm.conf" <<EOF
ClusterName=experiments
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=60
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -i -f "$SLURM_CONF"   # -i: no state from an earlier cluster in DIR
    slurmd -f "$SLURM_CONF"
    for _ in $(seq 120); do
        if [ "$(sinfo --noheader --format=%t 2>/dev/null)" = idle ]; then
            echo "SLURM cluster up: export SLURM_CONF=$SLURM_CONF"
            return
        fi
        sleep 1
    done
    echo "the SLURM node did not become idle in 120 s; logs in $dir/log" >&2
    sinfo >&2 || true
    stop "$dir"
    exit 1
}

stop() {
    local dir pid
    dir=$(realpath -m "$1")
    export SLURM_CONF="$dir/slurm.conf"
    if scancel --user="$(id -un)" 2>/dev/null; then  # jobs first: their processes end with them
        for _ in $(seq 60); do [ -z "$(squeue --noheader 2>/dev/null)" ] && break; sleep 1; done
    fi
    for name in slurmd slurmctld munge/munged; do
        pid=$(cat "$dir/$name.pid" 2>/dev/null) || continue
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || continue 2; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}

case "${1:-}" in
    install) install ;;
    start) [ $# -eq 2 ] || usage; start "$2" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac

#!/usr/bin/env bash
# slurm-local.sh -- a throwaway single-node SLURM cluster on loopback.
#
# For CI and for developers who want to try the SLURM profile on a laptop.
# It runs munged, slurmctld and slurmd as plain background processes (no
# systemd, no cgroups, no accounting database), with every file they write in
# one scratch directory.
#
# Usage:
#   scripts/slurm-local.sh install          # apt-get install slurm-wlm munge (if missing)
#   scripts/slurm-local.sh start [--force]  # start the cluster, wait for an idle node
#   scripts/slurm-local.sh status           # daemons, sinfo, squeue (exit 3 if not running)
#   scripts/slurm-local.sh stop             # cancel jobs, stop the daemons, remove the symlink
#
# Then, from the repository root:
#   snakemake --workflow-profile profiles/slurm ...
# With the fake GPU, a job given a GPU sees no CUDA device and stops (lossgeom.devices); run such a
# study with LOSSGEOM_DEVICE=cpu in the environment (sbatch carries it into the jobs), as the tests do.
#
# Environment:
#   SLURM_LOCAL_DIR        scratch dir (default: <repo>/.slurm, git-ignored)
#   SLURM_LOCAL_GPU_FILES  space-separated device files for the node's "gpu" GRES.
#                          Default: the real /dev/nvidia[0-9]* if any, else one
#                          fake GPU on /dev/null (enough to schedule gpu=1 jobs).
#                          Only character devices work (/dev/null, /dev/zero, ...);
#                          set it to "" for a node without GPUs.
#   SLURM_LOCAL_TIMEOUT    seconds to wait for the node to become idle (default 60)
#
# Needs root (it re-runs itself with sudo otherwise): munged runs as the munge
# user, and /etc/slurm/slurm.conf must be a symlink to the generated config,
# because the executor's job step strips SLURM_CONF before calling srun.  An
# existing regular /etc/slurm/slurm.conf (a real cluster) is never replaced
# unless --force is given; it is then backed up and restored by `stop`.
# Ports 6817 (slurmctld) and 6818 (slurmd) on 127.0.0.1 must be free.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
S="$(realpath -m "${SLURM_LOCAL_DIR:-$REPO/.slurm}")"
ETC_CONF=/etc/slurm/slurm.conf
BACKUP="$ETC_CONF.slurm-local-backup"
MARKER_NAME=.slurm-local          # marks a scratch dir made by this script
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-60}"
PARTITION=debug
NODE=localhost

say() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { printf 'slurm-local: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
}

need_root() {
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null || die "must run as root (and sudo is not available)"
        say "re-running as root via sudo"
        exec sudo --preserve-env=SLURM_LOCAL_DIR,SLURM_LOCAL_GPU_FILES,SLURM_LOCAL_TIMEOUT \
            bash "${BASH_SOURCE[0]}" "$@"
    fi
}

have_binaries() {
    local b
    for b in slurmctld slurmd sinfo squeue sbatch srun scancel munged; do
        command -v "$b" >/dev/null 2>&1 || return 1
    done
}

# ---------------------------------------------------------------- install --
cmd_install() {
    export PATH="$PATH:/usr/sbin:/sbin"
    if have_binaries; then
        say "slurm-wlm and munge already installed ($(slurmd -V))"
        return 0
    fi
    need_root install
    command -v apt-get >/dev/null || die "apt-get not found: install slurm-wlm and munge with your package manager"
    export DEBIAN_FRONTEND=noninteractive
    # The packages' maintainer scripts try to start system-wide daemons; keep
    # them from doing so (only if no policy-rc.d exists already).
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    {
        if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
            say "apt-get update"
            apt-get update -qq
        fi
        say "apt-get install slurm-wlm munge"
        apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    } || rc=$?
    [[ $made_policy == 1 ]] && rm -f "$policy"
    [[ $rc == 0 ]] || die "apt-get install failed (rc=$rc)"
    have_binaries || die "installed, but SLURM/munge binaries are still missing"
    say "installed $(slurmd -V)"
}

# ------------------------------------------------------------- helpers ----
pidfile() { echo "$S/pids/$1"; }

# pid of a daemon we started, if it is still alive and still that program
alive_pid() {
    local f pid comm
    f="$(pidfile "$1")"
    [[ -r $f ]] || return 1
    pid="$(<"$f")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm ]] || return 1
    comm="$(</proc/"$pid"/comm)"
    [[ $comm == "$1" ]] || return 1
    echo "$pid"
}

# the recorded process exists (it may not have exec'd into the daemon yet)
started_pid_alive() {
    local f
    f="$(pidfile "$1")"
    [[ -r $f && -d /proc/$(<"$f") ]]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log_tails() {
    local f
    for f in "$S"/log/*.log; do
        [[ -e $f ]] || continue
        printf '\n----- last lines of %s -----\n' "$f" >&2
        tail -n 15 "$f" >&2 || true
    done
}

gpu_files() {
    if [[ -n ${SLURM_LOCAL_GPU_FILES+set} ]]; then
        echo "$SLURM_LOCAL_GPU_FILES"
        return
    fi
    local real=() d
    for d in /dev/nvidia[0-9]*; do [[ -c $d ]] && real+=("$d"); done
    if ((${#real[@]})); then echo "${real[*]}"; else echo /dev/null; fi
}

write_config() {
    local cpus mem_kb real_mb files=() f gres_node=""
    cpus="$(nproc)"
    mem_kb="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
    # a bit under the free memory, so slurmd never finds less than configured
    real_mb=$((mem_kb * 9 / 10 / 1024))
    ((real_mb >= 256)) || die "only $((mem_kb / 1024)) MB of memory available"
    read -r -a files <<<"$(gpu_files)"
    for f in "${files[@]}"; do
        [[ -c $f ]] || die "GPU device file '$f' is not a character device (SLURM refuses regular files)"
    done
    ((${#files[@]})) && gres_node=" Gres=gpu:${#files[@]}"

    mkdir -p "$S/etc"
    cat >"$S/etc/slurm.conf" <<EOF
# Generated by scripts/slurm-local.sh -- a single-node test cluster on loopback.
ClusterName=slurmlocal
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/munge/run/munge.socket.2
StateSaveLocation=$S/state/ctld
SlurmdSpoolDir=$S/state/d
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# trust this file over the detected hardware (laptops with hyper-threading)
SlurmdParameters=config_overrides
DefMemPerCPU=500
# keep finished jobs visible to squeue for 5 minutes (no sacct without a
# database; the profile polls with squeue)
MinJobAge=300
ReturnToService=2
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$real_mb$gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    {
        echo "# Generated by scripts/slurm-local.sh"
        echo "AutoDetect=off"
        for f in "${files[@]}"; do
            echo "NodeName=$NODE Name=gpu File=$f"
        done
    } >"$S/etc/gres.conf"
    chmod 644 "$S/etc/slurm.conf" "$S/etc/gres.conf"
    say "config: $S/etc/slurm.conf (CPUs=$cpus RealMemory=${real_mb}MB GPUs=${#files[@]}${files[*]:+ on ${files[*]}})"
}

# /etc/slurm/slurm.conf -> $S/etc/slurm.conf (pitfall: jobs' inner srun only
# finds the config there)
link_config() {
    local force=$1 target
    mkdir -p /etc/slurm
    if [[ -L $ETC_CONF ]]; then
        target="$(readlink "$ETC_CONF")"
        if [[ $target != "$S/etc/slurm.conf" && -e $target && ! -e "$(dirname "$target")/../$MARKER_NAME" && $force != 1 ]]; then
            die "$ETC_CONF is a symlink to $target, not made by this script; use --force to replace it"
        fi
        rm -f "$ETC_CONF"
    elif [[ -e $ETC_CONF ]]; then
        [[ $force == 1 ]] || die "$ETC_CONF exists and is a regular file (a real SLURM config?); refusing to replace it. Use --force to back it up to $BACKUP for the life of the test cluster."
        [[ -e $BACKUP ]] && die "$BACKUP exists already; sort that out first"
        say "backing up $ETC_CONF to $BACKUP"
        mv "$ETC_CONF" "$BACKUP"
    fi
    ln -s "$S/etc/slurm.conf" "$ETC_CONF"
}

unlink_config() {
    if [[ -L $ETC_CONF && "$(readlink "$ETC_CONF")" == "$S/etc/slurm.conf" ]]; then
        rm -f "$ETC_CONF"
        say "removed symlink $ETC_CONF"
    fi
    if [[ ! -e $ETC_CONF && -e $BACKUP ]]; then
        mv "$BACKUP" "$ETC_CONF"
        say "restored $ETC_CONF from $BACKUP"
    fi
}

# start a daemon in its own session (so it outlives the calling shell / CI
# step), detached from our stdio, and record its PID
launch() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$S/log/$name.out" 2>&1 &
    echo $! >"$(pidfile "$name")"
}

# TERM the given daemons together, wait up to 10 s, then KILL what is left
stop_daemons() {
    local name pid i left
    local -A pids=()
    for name in "$@"; do
        if pid="$(alive_pid "$name")"; then
            pids[$name]=$pid
            kill -TERM "$pid" 2>/dev/null || true
        fi
        rm -f "$(pidfile "$name")"
    done
    for ((i = 0; i < 100; i++)); do
        left=0
        for name in "${!pids[@]}"; do [[ -d /proc/${pids[$name]} ]] && left=1; done
        ((left)) || break
        sleep 0.1
    done
    for name in "${!pids[@]}"; do
        pid=${pids[$name]}
        if [[ -d /proc/$pid ]]; then
            say "$name (pid $pid) did not stop after 10 s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name (pid $pid)"
    done
}

running_daemons() {
    local n c=0
    for n in munged slurmctld slurmd; do alive_pid "$n" >/dev/null && c=$((c + 1)); done
    echo "$c"
}

# ------------------------------------------------------------------ start --
# on a failed start, take down whatever was started (logs stay in $S/log)
start_failed() {
    local rc=$?
    trap - EXIT
    say "start failed; stopping what was started (logs kept in $S/log)"
    stop_daemons slurmd slurmctld
    stop_daemons munged
    unlink_config
    exit "$rc"
}

cmd_start() {
    local force=0 a
    for a in "$@"; do
        case $a in
            --force) force=1 ;;
            *) die "unknown option for start: $a" ;;
        esac
    done
    export PATH="$PATH:/usr/sbin:/sbin"
    have_binaries || die "slurm-wlm/munge not installed; run: $0 install"
    need_root start "$@"

    if [[ $(running_daemons) == 3 ]] && sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
        say "already running (scratch dir $S)"
        return 0
    fi
    if [[ $(running_daemons) != 0 ]]; then
        say "found a half-running cluster in $S; stopping it first"
        cmd_stop
    fi
    port_busy 6817 && die "port 6817 on 127.0.0.1 is in use (another slurmctld?); stop it first"
    port_busy 6818 && die "port 6818 on 127.0.0.1 is in use (another slurmd?); stop it first"

    local t0=$SECONDS
    if [[ -d $S && ! -e $S/$MARKER_NAME && -n "$(ls -A "$S")" ]]; then
        die "$S is not empty and was not made by this script; choose another SLURM_LOCAL_DIR"
    fi
    # fresh state and logs each start: this is a throwaway cluster
    rm -rf "$S/state" "$S/log" "$S/run" "$S/munge" "$S/pids"
    mkdir -p "$S" "$S/state/ctld" "$S/state/d" "$S/log" "$S/run" "$S/pids" \
        "$S/munge/etc" "$S/munge/run" "$S/munge/lib" "$S/munge/log"
    touch "$S/$MARKER_NAME"
    chmod 755 "$S" "$S/log" "$S/run"

    # config first: it validates the GPU files and the /etc/slurm/slurm.conf link
    write_config
    trap start_failed EXIT
    link_config "$force"

    # munge: own key, socket and state, running as the munge user
    id munge >/dev/null 2>&1 || die "user 'munge' missing (is the munge package installed?)"
    dd if=/dev/urandom of="$S/munge/etc/munge.key" bs=1024 count=1 status=none
    chown -R munge:munge "$S/munge"
    chmod 700 "$S/munge/etc" "$S/munge/lib" "$S/munge/log"
    chmod 755 "$S/munge" "$S/munge/run"
    chmod 400 "$S/munge/etc/munge.key"
    launch munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground \
        --key-file="$S/munge/etc/munge.key" \
        --socket="$S/munge/run/munge.socket.2" \
        --pid-file="$S/munge/run/munged.pid" \
        --seed-file="$S/munge/lib/munged.seed" \
        --log-file="$S/munge/log/munged.log"
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -S $S/munge/run/munge.socket.2 ]] && break
        started_pid_alive munged || break
        sleep 0.1
    done
    if [[ ! -S $S/munge/run/munge.socket.2 ]]; then
        tail -n 20 "$S/log/munged.out" "$S/munge/log/munged.log" >&2 2>/dev/null || true
        die "munged did not start"
    fi

    export SLURM_CONF="$S/etc/slurm.conf"
    launch slurmctld slurmctld -D -i
    launch slurmd slurmd -D -N "$NODE"

    # wait for the node to be idle
    local state=""
    while :; do
        state="$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null || true)"
        [[ $state == idle ]] && break
        for a in munged slurmctld slurmd; do
            if ! started_pid_alive "$a"; then
                log_tails
                die "$a exited during start-up (logs above, all in $S/log)"
            fi
        done
        if ((SECONDS - t0 > TIMEOUT)); then
            sinfo -R >&2 2>/dev/null || true
            log_tails
            die "node not idle after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
        fi
        sleep 0.2
    done
    trap - EXIT
    say "running: node $NODE idle in partition $PARTITION ($((SECONDS - t0)) s); scratch dir $S"
    say "stop with: $0 stop"
}

# ------------------------------------------------------------------- stop --
cmd_stop() {
    export PATH="$PATH:/usr/sbin:/sbin"
    need_root stop
    if [[ $(running_daemons) == 0 ]]; then
        say "not running"
    else
        if alive_pid slurmctld >/dev/null; then
            # cancel whatever is still queued or running
            SLURM_CONF="$S/etc/slurm.conf" scancel --partition="$PARTITION" 2>/dev/null || true
        fi
        stop_daemons slurmd slurmctld
        stop_daemons munged
    fi
    unlink_config
}

# ----------------------------------------------------------------- status --
cmd_status() {
    export PATH="$PATH:/usr/sbin:/sbin"
    local n pid up=0
    for n in munged slurmctld slurmd; do
        if pid="$(alive_pid "$n")"; then
            printf '%-10s running (pid %s)\n' "$n" "$pid"
            up=$((up + 1))
        else
            printf '%-10s not running\n' "$n"
        fi
    done
    printf 'scratch:   %s\nconfig:    %s -> %s\n' "$S" "$ETC_CONF" "$(readlink "$ETC_CONF" 2>/dev/null || echo '(no symlink)')"
    if ((up == 3)); then
        export SLURM_CONF="$S/etc/slurm.conf"
        echo
        sinfo -N -l || true
        echo
        squeue || true
        return 0
    fi
    return 3
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        install) cmd_install "$@" ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        -h | --help | help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"

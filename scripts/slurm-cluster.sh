#!/usr/bin/env bash
# A private one-node Slurm cluster (munged + slurmctld + slurmd) for tests and trials.
#   scripts/slurm-cluster.sh start DIR   writes DIR/etc/slurm.conf, starts the daemons, waits
#                                        until the node is idle, prints `SLURM_CONF=…`
#   scripts/slurm-cluster.sh stop DIR    cancels the cluster's jobs, stops every daemon
#   scripts/slurm-cluster.sh restart-slurmd DIR   restarts slurmd only (node features stay)
#   scripts/slurm-cluster.sh status DIR  sinfo of the cluster
# Everything (config, munge key and socket, state, spool, logs, pid files) lives under DIR and
# the ports are chosen free at start, so several clusters can run at once on one host.
# Runs as root (SlurmUser=root): no system-wide file or service is touched.
set -euo pipefail

usage() { echo "usage: $0 start|stop|restart-slurmd|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
[ -n "$dir" ] || usage
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
export SLURM_CONF="$dir/etc/slurm.conf"

die() { echo "slurm-cluster: $*" >&2; exit 1; }

need() {
  for b in "$@"; do
    command -v "$b" >/dev/null 2>&1 || die "$b is not installed (run scripts/setup.sh --deps: Debian packages slurm-wlm, slurm-client, munge)"
  done
}

# A TCP port no socket uses now, below the kernel's ephemeral range (an outgoing connection
# holding the port would make bind fail). Two clusters starting at the same instant could
# still pick the same one; start retries with new ports when slurmctld cannot bind.
free_port() {
  local p lo
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
  [ "$lo" -gt 12000 ] || lo=32768
  for _ in $(seq 1 200); do
    p=$(( 10000 + (RANDOM * 32768 + RANDOM) % (lo - 10000) ))
    if [ -z "$(ss -Htan "sport = :$p")" ]; then echo "$p"; return 0; fi
  done
  die "no free TCP port found"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
  local ctld_port=$1 slurmd_port=$2 node line
  node=$(hostname -s)
  # This host as it really is, so slurmd registers without being drained for a mismatch.
  line=$(slurmd -C)
  line=${line%%$'\n'*}
  [[ $line == NodeName=* ]] || die "slurmd -C printed no node line: $line"
  local hw=${line#NodeName=* }
  cat >"$SLURM_CONF" <<EOF
# Written by scripts/slurm-cluster.sh for a private test cluster; not a site configuration.
ClusterName=vfarm$(basename "$dir" | tr -cd 'a-z0-9' | tail -c 20)
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# cgroups here are hybrid v1/v2: the cgroup plugins are not used at all.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without it a job asking no memory is given the whole node, so jobs would run one at a time.
DefMemPerCPU=512
ReturnToService=2
# A job no node can ever run (too many CPUs, too much memory) is refused by sbatch instead
# of pending forever with Reason=PartitionConfig.
EnforcePartLimits=ALL
# No accounting daemon: a finished job's exit code is read from slurmctld, which keeps it
# for MinJobAge seconds.
MinJobAge=3600
# Jobs end promptly in tests: a timed-out job gets SIGKILL 5 s after SIGTERM.
KillWait=5
InactiveLimit=0
# A job submitted to an idle node is started by the periodic scheduler pass, not at submit:
# a 1 s pass keeps submit -> running under a second (the default 60 s makes it ~3 s).
SchedulerParameters=sched_interval=1
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=vfarm Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if pid_alive "$dir/munge/munged.pid"; then return 0; fi
  mkdir -p "$dir/munge"
  chmod 0700 "$dir/munge"
  if [ ! -s "$dir/munge/munge.key" ]; then
    mungekey --create --keyfile="$dir/munge/munge.key" --force 2>/dev/null \
      || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
  fi
  # --force: DIR may sit below a world-writable directory such as /tmp, which munged's
  # permission checks would otherwise refuse.
  munged --force --socket="$dir/munge/munge.socket.2" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed" \
    || die "munged did not start; see $dir/munge/munged.log"
  for _ in $(seq 1 50); do [ -S "$dir/munge/munge.socket.2" ] && return 0; sleep 0.1; done
  die "munged socket $dir/munge/munge.socket.2 did not appear"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }

start() {
  need munged mungekey slurmctld slurmd sinfo scontrol sbatch ss
  mkdir -p "$dir"/{etc,state,spool,log,run}
  start_munge
  local attempt ctld_port slurmd_port up=
  for attempt in 1 2 3; do
    if pid_alive "$dir/run/slurmctld.pid"; then up=1; break; fi
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    [ "$ctld_port" != "$slurmd_port" ] || continue
    write_conf "$ctld_port" "$slurmd_port"
    # A log from a failed attempt must not be read as this attempt's.
    [ -f "$dir/log/slurmctld.log" ] && mv "$dir/log/slurmctld.log" "$dir/log/slurmctld.log.attempt$attempt"
    # -c: a fresh cluster starts from this configuration, not from saved state of an earlier run.
    slurmctld -c -f "$SLURM_CONF" || true
    for _ in $(seq 1 75); do
      if [[ $(scontrol ping 2>/dev/null) == *UP* ]]; then up=1; break; fi
      # The daemon forks before it writes its pid file: only a bind failure ends the wait early.
      grep -q 'Address already in use' "$dir/log/slurmctld.log" 2>/dev/null && break
      sleep 0.2
    done
    [ -n "$up" ] && break
    if grep -q 'Address already in use' "$dir/log/slurmctld.log" 2>/dev/null; then
      echo "slurm-cluster: port $ctld_port taken, retrying (attempt $attempt)" >&2
      [ -f "$dir/run/slurmctld.pid" ] && kill "$(cat "$dir/run/slurmctld.pid")" 2>/dev/null || true
      continue
    fi
    break
  done
  [ -n "$up" ] || die "slurmctld did not come up; last log lines:
$(tail -n 15 "$dir/log/slurmctld.log" 2>/dev/null)"
  if ! pid_alive "$dir/run/slurmd.pid"; then
    slurmd -f "$SLURM_CONF" -N "$(hostname -s)" || die "slurmd did not start; see $dir/log/slurmd.log"
  fi
  wait_idle
  echo "SLURM_CONF=$SLURM_CONF"
}

wait_idle() {
  local st=
  for _ in $(seq 1 150); do
    st=$(node_state)
    case "$st" in idle|mixed|allocated) break ;; esac
    sleep 0.2
  done
  case "$st" in
    idle|mixed|allocated) ;;
    *) die "node is '$st', not idle, after 30 s; last slurmd log lines:
$(tail -n 15 "$dir/log/slurmd.log" 2>/dev/null)" ;;
  esac
}

# Restarts slurmd alone (what a node reboot or a package upgrade does) and waits until it
# has registered with slurmctld again.
restart_slurmd() {
  local before
  before=$(grep -c 'slurmd started on' "$dir/log/slurmd.log" || true)
  if pid_alive "$dir/run/slurmd.pid"; then
    kill "$(cat "$dir/run/slurmd.pid")"
    wait_gone "$dir/run/slurmd.pid" 10 || die "slurmd did not stop"
  fi
  slurmd -f "$SLURM_CONF" -N "$(hostname -s)" || die "slurmd did not start; see $dir/log/slurmd.log"
  for _ in $(seq 1 150); do
    [ "$(grep -c 'slurmd started on' "$dir/log/slurmd.log" || true)" -gt "$before" ] && break
    sleep 0.2
  done
  [ "$(grep -c 'slurmd started on' "$dir/log/slurmd.log" || true)" -gt "$before" ] \
    || die "slurmd did not register again; see $dir/log/slurmd.log"
  wait_idle
}

wait_gone() { # pidfile, seconds
  local i
  for i in $(seq 1 $(( $2 * 10 ))); do pid_alive "$1" || return 0; sleep 0.1; done
  return 1
}

stop() {
  if [ -f "$SLURM_CONF" ] && pid_alive "$dir/run/slurmctld.pid"; then
    # Jobs' processes belong to slurmstepd, which outlives slurmd: end the jobs first.
    scancel --quiet --full --signal=KILL --user=root 2>/dev/null || true
    for _ in $(seq 1 50); do
      [ -n "$(squeue -h -t running,completing -o '%i' 2>/dev/null)" ] || break
      sleep 0.1
    done
    scontrol shutdown 2>/dev/null || true
  fi
  local f
  for f in slurmd slurmctld; do
    if ! wait_gone "$dir/run/$f.pid" 10 && pid_alive "$dir/run/$f.pid"; then
      kill -KILL "$(cat "$dir/run/$f.pid")" 2>/dev/null || true
    fi
    rm -f "$dir/run/$f.pid"
  done
  if pid_alive "$dir/munge/munged.pid"; then
    munged --stop --socket="$dir/munge/munge.socket.2" >/dev/null 2>&1 \
      || kill "$(cat "$dir/munge/munged.pid")" 2>/dev/null || true
    wait_gone "$dir/munge/munged.pid" 5 || kill -KILL "$(cat "$dir/munge/munged.pid")" 2>/dev/null || true
  fi
  rm -f "$dir/munge/munged.pid"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart-slurmd) restart_slurmd ;;
  status) sinfo -N -o '%N %T %c %m %f' ;;
  *) usage ;;
esac

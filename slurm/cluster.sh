#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost (slurmctld + slurmd + munged, with slurmdbd/MariaDB
# accounting so that sacct and submitit see job states), for machines without systemd or cgroups.
#
#   bash slurm/cluster.sh up       install (Debian packages, once) + configure + start, wait until idle
#   bash slurm/cluster.sh status   daemons and node state
#   bash slurm/cluster.sh down     stop every daemon (by the PIDs in their pid files, never by name)
#
# Idempotent: `up` skips what is already installed / running. Needs root (or sudo).
set -euo pipefail
ACTION=${1:-up}
HOST=$(hostname)
CPUS=$(nproc)
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
DBPASS=${SLURM_DB_PASS:-cmkdbench}
log() { echo "[slurm] $*"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local pkgs=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
  local missing=()
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  $SUDO mkdir -p /run/munge && $SUDO chown munge:munge /run/munge && $SUDO chmod 0755 /run/munge
  [ -f /etc/munge/munge.key ] || { $SUDO mungekey -c 2>/dev/null || $SUDO /usr/sbin/create-munge-key; }
  $SUDO su -s /bin/sh munge -c /usr/sbin/munged
  for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.5; done
  log "munged did not come up"; exit 1
}

start_mariadb() {
  if mysqladmin ping >/dev/null 2>&1; then return; fi
  $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld
  ($SUDO mysqld_safe --user=mysql >/dev/null 2>&1 &)
  for _ in $(seq 1 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
  mysqladmin ping >/dev/null 2>&1 || { log "MariaDB did not start"; exit 1; }
  $SUDO mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DBPASS}'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

write_confs() {
  $SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  local tmp; tmp=$(mktemp)
  cat > "$tmp" <<CONF
# written by cmkd-bench slurm/cluster.sh: single node, no cgroups, no systemd
ClusterName=local
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=3600
# seconds between the SIGTERM of scancel/time limit and SIGKILL (submitit ignores SIGTERM)
KillWait=5
NodeName=${HOST} CPUs=${CPUS} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  if ! cmp -s "$tmp" "$CONF" 2>/dev/null; then
    $SUDO install -m 0644 "$tmp" "$CONF"; CHANGED=1
  fi
  cat > "$tmp" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DBPASS}
StorageLoc=slurm_acct_db
CONF
  cmp -s "$tmp" "$DBDCONF" 2>/dev/null || $SUDO install -m 0600 "$tmp" "$DBDCONF"
  rm -f "$tmp"
}

start_slurm() {
  if ! alive /run/slurmdbd.pid; then
    $SUDO /usr/sbin/slurmdbd
    for _ in $(seq 1 90); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
  fi
  if [ "${CHANGED:-0}" = 1 ]; then  # a changed slurm.conf needs both daemons restarted
    for f in /run/slurmd.pid /run/slurmctld.pid; do alive "$f" && $SUDO kill "$(cat "$f")" || true; done
    sleep 1
  fi
  alive /run/slurmctld.pid || $SUDO /usr/sbin/slurmctld
  alive /run/slurmd.pid || $SUDO /usr/sbin/slurmd
  for _ in $(seq 1 60); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
    case "$state" in idle*|mixed*|allocated*) log "node ${HOST} is ${state} (${CPUS} CPUs, partition debug)"; return;; esac
    sleep 1
  done
  log "node did not become idle: $(sinfo 2>&1 | tail -2)"; exit 1
}

down() {
  for f in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid; do
    if alive "$f"; then $SUDO kill "$(cat "$f")"; log "stopped $(basename "$f" .pid)"; fi
  done
  mysqladmin ping >/dev/null 2>&1 && { $SUDO mysqladmin shutdown && log "stopped mariadb"; } || true
  for f in /run/munge/munged.pid; do alive "$f" && { $SUDO kill "$(cat "$f")"; log "stopped munged"; } || true; done
}

case "$ACTION" in
  up) install_packages; start_munge; start_mariadb; write_confs; start_slurm ;;
  down) down ;;
  status)
    for f in /run/munge/munged.pid /run/slurmdbd.pid /run/slurmctld.pid /run/slurmd.pid; do
      alive "$f" && echo "$(basename "$f" .pid): running (pid $(cat "$f"))" || echo "$(basename "$f" .pid): stopped"
    done
    sinfo 2>&1 | tail -n +1 ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

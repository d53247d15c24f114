#!/usr/bin/env bash
# Start a one-node Slurm cluster (munged, slurmdbd, slurmctld, slurmd) for photonstream's tests and CI, without
# systemd. Debian 12, run as root. Idempotent: daemons already running are left alone and NOT recorded, so
# stop-slurm.sh stops only what this script started (PIDs in $SLURM_PIDS).
#
# Environment:
#   SLURM_ACCT=dbd (default)  accounting through slurmdbd into an EXISTING MariaDB/MySQL server (sacct works)
#   SLURM_ACCT=none           no accounting daemon (sacct answers nothing; photonstream falls back to squeue)
#   SLURM_DB_HOST / SLURM_DB_PORT / SLURM_DB_ADMIN / SLURM_DB_ADMIN_PASSWORD   the database server and an account
#                             that may create a database and a user (default 127.0.0.1 3306 root, empty password)
#   SLURM_PIDS                where started daemons are recorded (default /tmp/photonstream-slurm/pids)
set -euo pipefail

ACCT=${SLURM_ACCT:-dbd}
DB_HOST=${SLURM_DB_HOST:-127.0.0.1}
DB_PORT=${SLURM_DB_PORT:-3306}
DB_ADMIN=${SLURM_DB_ADMIN:-root}
DB_ADMIN_PASSWORD=${SLURM_DB_ADMIN_PASSWORD:-}
DB_SLURM_PASSWORD=photonstream-slurm
PIDS=${SLURM_PIDS:-/tmp/photonstream-slurm/pids}
MARKER="# written by photonstream scripts/slurm/start-slurm.sh"
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))

log() { echo "start-slurm: $*" >&2; }
die() { log "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (it starts munged and the Slurm daemons)"
case $ACCT in dbd|none) ;; *) die "SLURM_ACCT must be 'dbd' or 'none', not '$ACCT'" ;; esac

# Packages
packages="munge slurmctld slurmd slurm-client"
[ "$ACCT" = dbd ] && packages="$packages slurmdbd mariadb-client"
missing=""
for package in $packages; do
  dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null | grep -qx installed || missing="$missing $package"
done
if [ -n "$missing" ]; then
  log "installing$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

mkdir -p "$(dirname "$PIDS")"
touch "$PIDS"
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >> /etc/hosts

# is_running PIDFILE NAME: the pidfile names a live process called NAME (daemons leave stale pidfiles behind)
is_running() { local pid; pid=$(cat "$1" 2>/dev/null) && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; }
# record NAME PIDFILE: remember a daemon this script started
record() { local pid; pid=$(cat "$2"); sed -i "/^$1 /d" "$PIDS"; echo "$1 $pid" >> "$PIDS"; }
wait_until() {
  local i
  for i in $(seq 1 120); do
    if eval "$1" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "timed out waiting for: $1"
}
# start_daemon NAME PIDFILE COMMAND...: start unless running, record it, wait for its pidfile
start_daemon() {
  local name=$1 pidfile=$2
  shift 2
  if is_running "$pidfile" "$name"; then log "$name already running; left as it is"; return 0; fi
  rm -f "$pidfile"
  "$@"
  wait_until "is_running $pidfile $name"
  record "$name" "$pidfile"
  log "started $name (pid $(cat "$pidfile"))"
}

# munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey -c
install -d -o munge -g munge -m 0755 /run/munge /var/log/munge /var/lib/munge
start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
wait_until 'munge -n | unmunge'

# slurm.conf: never overwrite a configuration somebody else wrote
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
if [ -e /etc/slurm/slurm.conf ] && ! grep -qxF "$MARKER" /etc/slurm/slurm.conf; then
  die "/etc/slurm/slurm.conf exists and was not written by this script; refusing to replace it"
fi
if [ "$ACCT" = dbd ]; then
  accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
else
  accounting="AccountingStorageType=accounting_storage/none"
fi
cat > /etc/slurm/slurm.conf <<CONF
$MARKER
ClusterName=photonstream
SlurmctldHost=$NODE
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups in containers: track processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
ReturnToService=2
# seconds between SIGTERM and SIGKILL on scancel or time limit
KillWait=5
$accounting
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# slurmdbd into the existing database server
if [ "$ACCT" = dbd ]; then
  sql() { MYSQL_PWD=$DB_ADMIN_PASSWORD mysql --protocol=TCP -h "$DB_HOST" -P "$DB_PORT" -u "$DB_ADMIN" -e "$1"; }
  sql "SELECT 1" >/dev/null 2>&1 \
    || die "no database server answers at $DB_HOST:$DB_PORT as $DB_ADMIN (set SLURM_DB_*, or SLURM_ACCT=none)"
  sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
       CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_SLURM_PASSWORD';
       CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_SLURM_PASSWORD';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > /etc/slurm/slurmdbd.conf <<CONF
$MARKER
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=$DB_HOST
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_SLURM_PASSWORD
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 600 /etc/slurm/slurmdbd.conf
  start_daemon slurmdbd /run/slurmdbd.pid slurmdbd
  wait_until 'sacctmgr -n show cluster'
fi

start_daemon slurmctld /run/slurmctld.pid slurmctld
wait_until 'scontrol ping | grep -q UP'
start_daemon slurmd /run/slurmd.pid slurmd
if sinfo -h -n "$NODE" -o %T | grep -qE 'down|drain'; then scontrol update nodename="$NODE" state=resume; fi
wait_until "sinfo -h -n $NODE -o %T | grep -qx idle"
sinfo

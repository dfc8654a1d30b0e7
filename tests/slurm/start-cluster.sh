#!/usr/bin/env bash
# A one-node SLURM on this machine, from Debian's packages, for the tests marked `slurm` (tests/slurm/).
#
#   sudo tests/slurm/start-cluster.sh          # install (once), configure, start; a second call changes nothing
#   sudo tests/slurm/start-cluster.sh stop     # stop the daemons this script started, by their PID files
#
# Daemons: MariaDB (bound to 127.0.0.1, for the accounting that `sacct` reads), munge, slurmdbd, slurmctld and
# slurmd; every one listens on localhost only. The node offers this machine's CPUs and 80 % of its memory, so a
# request above them is refused at submission. Its state (configuration copies, spool, logs, PID files) lives in
# $STFUSION_SLURM_DIR (default /var/lib/stfusion-slurm); /etc/slurm/slurm.conf and slurmdbd.conf are written only when absent or
# written by this script.
set -euo pipefail

STATE=${STFUSION_SLURM_DIR:-/var/lib/stfusion-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf  # slurmdbd reads it beside slurm.conf
MARK="# written by stfusion tests/slurm/start-cluster.sh"
DAEMONS=(slurmd slurmctld slurmdbd munged mariadbd)  # stop order: the reverse of the start order

running() { [ -s "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

stop() {  # stop [DAEMON...]: by default all of them
  for d in "${@:-${DAEMONS[@]}}"; do
    if running "$d"; then
      pid=$(cat "$STATE/$d.pid")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      echo "stopped $d ($pid)"
    fi
    rm -f "$STATE/$d.pid"
  done
}

wait_for() {  # wait_for WHAT COMMAND...: up to 30 s
  local what=$1; shift
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "start-cluster.sh: $what did not come up (logs in $STATE/log)" >&2
  exit 1
}

install() {
  command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

configure() {
  mkdir -p "$STATE"/{log,spool/ctld,spool/d,mysql,run}
  chmod 755 "$STATE"
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  for f in "$CONF" "$DBD_CONF"; do
    if [ -e "$f" ] && ! grep -qF "$MARK" "$f"; then
      echo "start-cluster.sh: $f exists and was not written by this script; not touching it" >&2
      exit 1
    fi
  done
  local old
  old=$(cat "$CONF" 2>/dev/null || true)
  cat >"$CONF" <<CONF
$MARK
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it starts again (the default, 120 s, is long for tests)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
# slurmctld and slurmd listen on 127.0.0.1 only (slurmdbd too: the same line in slurmdbd.conf)
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MessageTimeout=20
# the tests submit many short jobs: a job's record stays in slurmctld 5 minutes after it ends
MinJobAge=300
# time-limit warnings and kills take effect within seconds
KillWait=10
OverTimeLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
# a job in partition urgent preempts the jobs of partition debug (preempt/partition_prio): they get SIGTERM, then SIGKILL
# GraceTime seconds later, and end PREEMPTED (PreemptMode=CANCEL; REQUEUE would put them back in the queue)
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=localhost Default=NO MaxTime=INFINITE State=UP PriorityTier=2
CONF
  if [ "$old" != "$(cat "$CONF")" ] && running slurmctld; then  # a changed configuration: restart the two
    stop slurmd slurmctld
  fi
  cat >"$DBD_CONF" <<CONF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$DBD_CONF"
}

start() {
  if ! running mariadbd; then
    [ -d "$STATE/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$STATE/mysql" >"$STATE/log/mariadb-install.log" 2>&1
    chown -R mysql:mysql "$STATE/mysql" "$STATE/run"
    mariadbd --user=mysql --datadir="$STATE/mysql" --bind-address=127.0.0.1 --port=3306 \
      --socket="$STATE/run/mysqld.sock" --pid-file="$STATE/run/mariadbd.pid" --skip-log-bin \
      >"$STATE/log/mariadb.log" 2>&1 &
    echo $! >"$STATE/mariadbd.pid"
    wait_for MariaDB mariadb --socket="$STATE/run/mysqld.sock" -e "SELECT 1"
    mariadb --socket="$STATE/run/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  fi
  if ! running munged; then
    mkdir -p /run/munge "$STATE/munge" && chown munge:munge /run/munge "$STATE/munge"
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid"
    wait_for munge test -s "$STATE/munge/munged.pid"
    cp "$STATE/munge/munged.pid" "$STATE/munged.pid"
  fi
  if ! running slurmdbd; then
    slurmdbd
    wait_for slurmdbd sacctmgr -n list cluster
  fi
  running slurmctld || slurmctld
  running slurmd || slurmd -N localhost
  wait_for "the node" sh -c 'sinfo -h -n localhost -o %T | grep -Eq "idle|mixed|allocated"'
  echo "SLURM up: $(sinfo -h -o '%P %D %c CPUs %m MB %T')"
}

case "${1:-start}" in
  start) install; configure; start ;;
  stop) stop "${DAEMONS[@]}" ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Single-node Apache Kafka broker (KRaft, no ZooKeeper, no Docker) for riffle
# development and integration tests.
#
#   scripts/kafka.sh start     fetch jars if needed, format storage once, start, wait until it serves
#   scripts/kafka.sh stop      SIGTERM, then SIGKILL after a grace period
#   scripts/kafka.sh status    exit 0 and print the bootstrap address if the broker answers
#   scripts/kafka.sh logs [-f] show (or follow) the broker log
#
# Environment (all optional):
#   RIFFLE_KAFKA_PORT             PLAINTEXT port on 127.0.0.1 (default 9092; start uses
#                                 this, the other commands fall back to the port the
#                                 state dir was last started with)
#   RIFFLE_KAFKA_CONTROLLER_PORT  KRaft controller port (default PORT+1)
#   RIFFLE_KAFKA_STATE            data, config, pid and log dir (default ~/.cache/riffle/kafka-state)
#   RIFFLE_KAFKA_HOME             jar cache (default ~/.cache/riffle/kafka-<version>)
#   RIFFLE_KAFKA_FRESH=1          on start: stop our broker if running and wipe the state dir
#   RIFFLE_KAFKA_START_TIMEOUT    seconds to wait for the broker to serve (default 60)
#   RIFFLE_PYTHON                 interpreter with kafka-python, used for the readiness probe
#                                 (default python3)
set -euo pipefail

readonly KAFKA_VERSION=4.1.1
readonly HOST=127.0.0.1
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

KAFKA_HOME="${RIFFLE_KAFKA_HOME:-$HOME/.cache/riffle/kafka-$KAFKA_VERSION}"
LIBS="$KAFKA_HOME/libs"
STATE="${RIFFLE_KAFKA_STATE:-$HOME/.cache/riffle/kafka-state}"
PYTHON="${RIFFLE_PYTHON:-python3}"
CONFIG="$STATE/server.properties"
DATA_DIR="$STATE/data"
LOG="$STATE/broker.log"
PID_FILE="$STATE/broker.pid"
# The port of the last start, so stop/status/logs work without re-exporting it.
PORT_FILE="$STATE/broker.port"
START_TIMEOUT="${RIFFLE_KAFKA_START_TIMEOUT:-60}"
STOP_GRACE=20

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

start_port() { echo "${RIFFLE_KAFKA_PORT:-9092}"; }

# For commands other than start: an explicit port wins, then the port this
# state dir was started with, then the default.
known_port() {
  if [[ -n "${RIFFLE_KAFKA_PORT:-}" ]]; then
    echo "$RIFFLE_KAFKA_PORT"
  elif [[ -s "$PORT_FILE" ]]; then
    cat "$PORT_FILE"
  else
    echo 9092
  fi
}

# True if PID exists and is not a zombie. A broker killed while its parent
# shell is still alive (the failed-start path) lingers as a zombie, for which
# `kill -0` still succeeds.
pid_alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
  [[ -n "$state" && "$state" != Z ]]
}

# The pid of the broker that belongs to THIS state dir, or nothing. The pid
# file alone is not trusted: after a reboot or a crash the pid may have been
# reused by an unrelated process, so the command line must name our config.
broker_pid() {
  local pid cmdline f
  if [[ -s "$PID_FILE" ]]; then
    pid="$(cat "$PID_FILE")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid"; then
      cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
      if [[ "$cmdline" == *kafka.Kafka\ "$CONFIG"\ * ]]; then
        echo "$pid"
        return 0
      fi
    fi
  fi
  # Pid file lost or stale: look for a java started on exactly our config
  # file, so a lost pid file can never leave an orphaned broker behind.
  for f in $(grep -lsF -- "$CONFIG" /proc/[0-9]*/cmdline 2>/dev/null || true); do
    cmdline="$(tr '\0' ' ' <"$f" 2>/dev/null || true)"
    pid="${f#/proc/}"
    pid="${pid%/cmdline}"
    if [[ "$cmdline" == *java*kafka.Kafka\ "$CONFIG"\ * ]] && pid_alive "$pid"; then
      echo "$pid"
      return 0
    fi
  done
  return 0
}

# Ask the broker for real (ApiVersions + Metadata through kafka-python), not
# just whether the TCP port is open: the socket accepts connections well
# before KRaft has elected itself and the broker is unfenced.
#   probe BOOTSTRAP TIMEOUT_S [PID]   exit 0 = serving, 1 = timed out, 3 = PID died
probe() {
  "$PYTHON" - "$@" <<'PY'
import os, socket, sys, time

bootstrap, timeout_s = sys.argv[1], float(sys.argv[2])
pid = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else 0
host, port = bootstrap.rsplit(":", 1)
deadline = time.monotonic() + timeout_s

try:
    from kafka import KafkaAdminClient
except ImportError:
    sys.stderr.write(f"kafka.sh: {sys.executable} has no kafka-python; set RIFFLE_PYTHON\n")
    sys.exit(2)


def alive(p):
    try:
        os.kill(p, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def tcp_open():
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


while True:
    # A cheap TCP check first: a failed KafkaAdminClient bootstrap leaves its
    # IO thread behind, so only build one once something is listening.
    if tcp_open():
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="riffle-kafka-probe",
                                     bootstrap_timeout_ms=3000, request_timeout_ms=5000)
            try:
                admin.list_topics()
                sys.exit(0)
            finally:
                admin.close()
        except Exception:
            pass
    if pid and not alive(pid):
        sys.exit(3)
    if time.monotonic() >= deadline:
        sys.exit(1)
    time.sleep(0.2)  # poll interval between readiness checks
PY
}

# Resolve the broker jars from Maven Central into the cache, once. The copy
# goes to a temp dir that is renamed into place, so an interrupted download
# is never mistaken for a complete cache.
ensure_jars() {
  if [[ -f "$LIBS/.complete" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found; it is needed once to fetch the Kafka jars"
  mkdir -p "$KAFKA_HOME"
  local tmp="$KAFKA_HOME/libs.tmp.$$"
  rm -rf "$tmp"
  log "fetching Kafka $KAFKA_VERSION jars into $LIBS (one-time)"
  # Maven's output (including its colour escapes, which -q does not silence)
  # goes to a file and is shown only if the fetch fails.
  local mvn_log="$KAFKA_HOME/mvn.log"
  if ! mvn -q -B -f "$SCRIPT_DIR/kafka/pom.xml" \
      -Dkafka.version="$KAFKA_VERSION" -Dkafka.libs.dir="$tmp" \
      dependency:copy-dependencies >"$mvn_log" 2>&1; then
    cat "$mvn_log" >&2
    rm -rf "$tmp"
    die "maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
  fi
  touch "$tmp/.complete"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
}

write_config() {
  local port="$1" cport="$2"
  mkdir -p "$DATA_DIR"
  cat >"$CONFIG" <<EOF
# Generated by scripts/kafka.sh on every start; edits here are overwritten.
process.roles=broker,controller
node.id=1
# Static voter set: the controller address lives only in this file, not in
# the formatted metadata log (as it would with --standalone), so a state dir
# can be restarted on a different port.
controller.quorum.voters=1@$HOST:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR

# One broker: every internal topic must be satisfiable with one replica, or
# consumer groups and transactions never come up.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than the default 50: creating them is most of the
# latency of the first group join on a 2-core machine.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=4

num.partitions=1
auto.create.topics.enable=true
# Tests join groups constantly; the default 3 s delay would add up.
group.initial.rebalance.delay.ms=0

# Room for a 2 MiB record plus batch overhead (default is ~1 MiB).
message.max.bytes=8388608
replica.fetch.max.bytes=8388608

# Retention by size only. Time-based retention goes by record timestamps,
# so a test replaying historical events (old CreateTime) would see its data
# deleted by the next retention check a few minutes in.
log.retention.ms=-1
log.retention.bytes=268435456
log.segment.bytes=67108864
EOF
}

# Format the KRaft metadata log once per state dir. Formatting twice fails
# (and would change the cluster id), so it is keyed on meta.properties.
ensure_formatted() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  local cluster_id=""
  # random-uuid prints the id alone on stdout; slf4j chatter goes to stderr.
  # The `if` keeps set -e from exiting silently when java itself fails.
  if ! cluster_id="$(java -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>>"$LOG")" \
      || [[ -z "$cluster_id" ]]; then
    tail -n 40 "$LOG" >&2
    die "StorageTool random-uuid failed (jar cache $LIBS broken? delete it to refetch)"
  fi
  log "formatting $DATA_DIR (cluster id $cluster_id)"
  java -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$CONFIG" >>"$LOG" 2>&1 \
    || { tail -n 40 "$LOG" >&2; die "storage format failed"; }
}

port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

cmd_start() {
  local port cport pid
  port="$(start_port)"
  cport="${RIFFLE_KAFKA_CONTROLLER_PORT:-$((port + 1))}"

  if [[ "${RIFFLE_KAFKA_FRESH:-0}" == 1 ]]; then
    if [[ -n "$(broker_pid)" ]]; then
      cmd_stop
    fi
    # Refuse to wipe anything that is not plausibly a dedicated state dir.
    case "$STATE" in
      "" | / | "$HOME" | "$HOME/") die "refusing to wipe RIFFLE_KAFKA_STATE=$STATE" ;;
    esac
    rm -rf "$STATE"
  fi
  mkdir -p "$STATE"

  pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    log "already running (pid $pid) on $HOST:$(known_port)"
    echo "$HOST:$(known_port)"
    return 0
  fi

  local p
  for p in "$port" "$cport"; do
    if port_in_use "$p"; then
      die "port $p on $HOST is already in use by another process"
    fi
  done

  command -v java >/dev/null || die "java not found on PATH (Kafka $KAFKA_VERSION needs Java 17+)"
  ensure_jars
  write_config "$port" "$cport"
  ensure_formatted
  echo "$port" >"$PORT_FILE"

  local t0=$EPOCHREALTIME
  {
    echo "===== $(date -Is) starting Kafka $KAFKA_VERSION on $HOST:$port ====="
  } >>"$LOG"
  # nohup + stdin from /dev/null: the broker must outlive the calling shell
  # (a pytest subprocess, a terminal) and must not hold its pipes open, nor
  # the state lock (fd 9), or the next stop would wait on it forever.
  nohup java -Xms256m -Xmx512m \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.dateTimeFormat="yyyy-MM-dd'T'HH:mm:ss.SSS" \
    -cp "$LIBS/*" kafka.Kafka "$CONFIG" </dev/null >>"$LOG" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local rc=0
  probe "$HOST:$port" "$START_TIMEOUT" "$pid" || rc=$?
  if [[ $rc -ne 0 ]]; then
    case $rc in
      3) log "broker process $pid exited during startup" ;;
      2) ;;
      *) log "broker did not answer on $HOST:$port within ${START_TIMEOUT}s" ;;
    esac
    log "last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    cmd_stop >/dev/null 2>&1 || true
    exit 1
  fi
  log "started pid $pid, serving on $HOST:$port $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1fs", b-a}') after launch"
  echo "$HOST:$port"
}

cmd_stop() {
  local pid
  pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_GRACE))
  while pid_alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2  # poll interval while the broker shuts down
  done
  if pid_alive "$pid"; then
    log "pid $pid still alive after ${STOP_GRACE}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do
      sleep 0.1  # SIGKILL is asynchronous; wait until the pid is gone
    done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local bootstrap
  local port
  port="$(known_port)"
  bootstrap="$HOST:$port"
  # Nothing listening: answer at once instead of polling for the probe timeout.
  if port_in_use "$port" && probe "$bootstrap" 10 >/dev/null 2>&1; then
    echo "$bootstrap"
    return 0
  fi
  log "no broker answering on $bootstrap"
  return 1
}

cmd_logs() {
  [[ -f "$LOG" ]] || die "no log yet at $LOG"
  if [[ "${1:-}" == "-f" ]]; then
    exec tail -n 100 -F "$LOG"
  fi
  tail -n 200 "$LOG"
}

# start and stop mutate the state dir; serialise them per state dir so two
# concurrent callers (e.g. parallel test sessions) cannot interleave a wipe,
# a format and a launch. The lock sits beside STATE because FRESH removes STATE.
lock_state() {
  mkdir -p "$(dirname "$STATE")"
  exec 9>"${STATE%/}.lock"
  flock -w 120 9 || die "timed out waiting for the lock on $STATE"
}

case "${1:-}" in
  start) lock_state; cmd_start ;;
  stop) lock_state; cmd_stop ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  *)
    echo "usage: $0 start|stop|status|logs [-f]" >&2
    exit 2
    ;;
esac

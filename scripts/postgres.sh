#!/usr/bin/env bash
# A local PostgreSQL (Debian's `postgresql` package, no Docker) for the model registry's
# tests and for development.
#
#   scripts/postgres.sh start      initdb a cluster once in the state dir, start it on
#                                  127.0.0.1:PORT, wait until it answers, print its URL
#   scripts/postgres.sh stop       fast shutdown (then immediate, if that hangs)
#   scripts/postgres.sh status     exit 0 and print the URL if the server answers
#   scripts/postgres.sh logs [-f]  show (or follow) the server log
#
# Environment (all optional):
#   RIFFLE_PG_PORT           port on 127.0.0.1 (default 55432; start uses this, the other
#                            commands fall back to the port the state dir was started with)
#   RIFFLE_PG_STATE          state dir: cluster, log, port (default ~/.cache/riffle/pg-state)
#   RIFFLE_PG_FRESH=1        on start: stop the server if running and wipe the cluster
#   RIFFLE_PG_OPTIONS        extra server settings, e.g. "-c fsync=off" (throwaway test data)
#   RIFFLE_PG_START_TIMEOUT  seconds to wait for the server to answer (default 60)
#   RIFFLE_PG_BINDIR         PostgreSQL's programs (default: `pg_config --bindir`, else the
#                            newest /usr/lib/postgresql/*/bin)
#
# The cluster trusts every local TCP connection (superuser `postgres`, no password): it is
# for tests and development on this machine only. It serves no unix socket. PostgreSQL
# refuses to run as root: as root, the server runs as the `postgres` OS user, and if that
# user cannot reach the state dir (say, under /root) the cluster and its log live in
# /var/tmp/riffle-pg/<hash of the state dir>, linked from the state dir as data/ and
# postgres.log.
set -euo pipefail

readonly HOST=127.0.0.1
STATE="$(realpath -m "${RIFFLE_PG_STATE:-$HOME/.cache/riffle/pg-state}")"
readonly STATE
PORT_FILE="$STATE/port"
START_TIMEOUT="${RIFFLE_PG_START_TIMEOUT:-60}"
DB=riffle

log() { echo "postgres.sh: $*" >&2; }
die() { log "$*"; exit 1; }

find_bindir() {
  local dir
  if [[ -n "${RIFFLE_PG_BINDIR:-}" ]]; then
    echo "$RIFFLE_PG_BINDIR"
    return 0
  fi
  if command -v pg_config >/dev/null && dir="$(pg_config --bindir 2>/dev/null)" \
      && [[ -x "$dir/initdb" ]]; then
    echo "$dir"
    return 0
  fi
  dir="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$dir" && -x "$dir/initdb" ]] \
    || die "no PostgreSQL server programs found (install Debian's postgresql package: make test-deps)"
  echo "$dir"
}

BIN="$(find_bindir)"
readonly BIN

# Where the cluster and its log live, and as whom the server runs (see the header).
AS_POSTGRES=()
DATA="$STATE/data"
LOG="$STATE/postgres.log"
mkdir -p "$STATE"
if [[ "$(id -u)" == 0 ]]; then
  id postgres >/dev/null 2>&1 || die "running as root, but there is no postgres OS user to run the server as"
  AS_POSTGRES=(runuser -u postgres --)
  chown postgres: "$STATE"
  if ! (cd / && runuser -u postgres -- test -w "$STATE"); then
    SHADOW="/var/tmp/riffle-pg/$(printf '%s' "$STATE" | sha1sum | cut -c1-12)"
    mkdir -p "$SHADOW"
    chown postgres: "$SHADOW" /var/tmp/riffle-pg
    chmod 700 "$SHADOW"
    DATA="$SHADOW/data"
    LOG="$SHADOW/postgres.log"
    ln -sfn "$DATA" "$STATE/data"
    ln -sfn "$LOG" "$STATE/postgres.log"
  fi
fi
readonly DATA LOG

# Run a server program as the user the server belongs to, from a folder it can read.
as_owner() { (cd / && "${AS_POSTGRES[@]}" "$@") 9>&-; }  # the lock stays ours

start_port() { echo "${RIFFLE_PG_PORT:-55432}"; }

known_port() {
  if [[ -n "${RIFFLE_PG_PORT:-}" ]]; then
    echo "$RIFFLE_PG_PORT"
  elif [[ -s "$PORT_FILE" ]]; then
    cat "$PORT_FILE"
  else
    echo 55432
  fi
}

url() { echo "postgresql+psycopg://postgres@$HOST:$1/$DB"; }

answers() { "$BIN/pg_isready" -q -h "$HOST" -p "$1" -U postgres -d postgres -t 2; }

running() { [[ -f "$DATA/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# One start or stop at a time per state dir (two test sessions, a developer and CI).
take_lock() {
  exec 9>"$STATE.lock"
  flock -w 120 9 || die "another postgres.sh holds $STATE.lock"
}

do_stop() {
  running || return 0
  as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 30 >>"$LOG" 2>&1 \
    || as_owner "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 30 >>"$LOG" 2>&1 \
    || die "the server of $DATA does not stop (see $LOG)"
}

cmd_start() {
  local port deadline
  port="$(start_port)"
  take_lock
  if [[ "${RIFFLE_PG_FRESH:-0}" == 1 ]]; then
    do_stop
    rm -rf "$DATA"
  fi
  if running; then
    local was
    was="$(known_port)"
    answers "$was" || die "a server runs on $DATA but does not answer on port $was (see $LOG)"
    [[ "$was" == "$port" ]] || log "already running on port $was (not $port)"
    url "$was"
    return 0
  fi
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    rm -rf "$DATA"
    mkdir -p "$DATA"
    [[ ${#AS_POSTGRES[@]} -eq 0 ]] || chown postgres: "$DATA"
    chmod 700 "$DATA"
    log "initdb $DATA ($BIN)"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-locale \
      >"$LOG.initdb" 2>&1 || { cat "$LOG.initdb" >&2; die "initdb failed"; }
  fi
  ! port_in_use "$port" || die "port $port on $HOST is taken by another process (set RIFFLE_PG_PORT)"
  echo "$port" >"$PORT_FILE"
  # shellcheck disable=SC2086  # RIFFLE_PG_OPTIONS is a list of server options
  if ! as_owner "$BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t "$START_TIMEOUT" \
      -o "-c listen_addresses=$HOST -p $port -c unix_socket_directories='' ${RIFFLE_PG_OPTIONS:-}" \
      >/dev/null 2>&1; then
    tail -n 40 "$LOG" >&2 || true
    die "the server did not start on port $port (log: $LOG)"
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  until answers "$port"; do
    ((SECONDS < deadline)) || { tail -n 40 "$LOG" >&2; die "no answer on port $port after ${START_TIMEOUT}s"; }
    sleep 0.2
  done
  if [[ "$("$BIN/psql" -h "$HOST" -p "$port" -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
    "$BIN/createdb" -h "$HOST" -p "$port" -U postgres "$DB"
  fi
  log "running on $HOST:$port (log: $LOG)"
  url "$port"
}

cmd_stop() {
  take_lock
  do_stop
  log "stopped"
}

cmd_status() {
  local port
  port="$(known_port)"
  if running && answers "$port"; then
    url "$port"
  else
    echo "not running" >&2
    exit 1
  fi
}

cmd_logs() {
  [[ -f "$LOG" ]] || die "no log at $LOG"
  if [[ "${1:-}" == -f ]]; then tail -F "$LOG"; else tail -n 100 "$LOG"; fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 start|stop|status|logs [-f]" >&2; exit 2 ;;
esac

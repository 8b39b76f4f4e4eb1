#!/usr/bin/env bash
# Local infrastructure for tnrwatch: a real single-node Kafka (KRaft) broker and a
# PostgreSQL server, both bound to 127.0.0.1, no Docker.
#
#   deploy/local/stack.sh up       start (or reuse) the stack, write .run/stack.env
#   deploy/local/stack.sh down     stop both, keep the data
#   deploy/local/stack.sh status   show what runs; exit 0 only if both are healthy
#   deploy/local/stack.sh env      print .run/stack.env
#   deploy/local/stack.sh clean    down, then delete .run/ (the jar cache in .cache/ stays)
#
# Kafka runs from Maven Central jars fetched once into .cache/kafka/libs (Maven local
# repository in .cache/m2). PostgreSQL comes from the Debian packages
# (/usr/lib/postgresql/*/bin); when running as root and they are missing, they are
# installed with apt-get. As root, PostgreSQL runs as the `postgres` OS user.
#
# Environment:
#   TNR_LOCAL_KAFKA_PORT             broker (PLAINTEXT) port        default 19092
#   TNR_LOCAL_KAFKA_CONTROLLER_PORT  KRaft controller port          default 19093
#   TNR_LOCAL_PG_PORT                PostgreSQL port                default 15432
#   TNR_LOCAL_STACK_TIMEOUT          seconds to wait for readiness  default 120
#   TNR_LOCAL_KAFKA_HEAP             JVM heap options               default "-Xms256m -Xmx512m"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
HERE="$ROOT/deploy/local"

KAFKA_PORT="${TNR_LOCAL_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${TNR_LOCAL_KAFKA_CONTROLLER_PORT:-19093}"
PG_PORT="${TNR_LOCAL_PG_PORT:-15432}"
TIMEOUT="${TNR_LOCAL_STACK_TIMEOUT:-120}"
KAFKA_HEAP="${TNR_LOCAL_KAFKA_HEAP:--Xms256m -Xmx512m}"

PG_USER="tnrwatch"
PG_DB="tnrwatch"

CACHE="$ROOT/.cache"
M2="$CACHE/m2"
LIBS="$CACHE/kafka/libs"
STAMP="$LIBS/.complete"
POM="$HERE/kafka/pom.xml"

RUN="$ROOT/.run"
ENV_FILE="$RUN/stack.env"
LOCK_FILE="$RUN/.stack.lock"

K_RUN="$RUN/kafka"
K_DATA="$K_RUN/data"
K_LOGS="$K_RUN/logs"
K_CONF="$K_RUN/server.properties"
K_PID="$K_RUN/kafka.pid"
K_CLUSTER_ID="$K_RUN/cluster-id"

# As root, PostgreSQL runs as the `postgres` OS user, which must be able to reach its data
# dir. If the checkout is not reachable by it (e.g. a clone under /root, mode 700), keep the
# PostgreSQL files in a per-checkout directory under /var/tmp instead.
resolve_pg_paths() {
    PG_RUN="$RUN/pg"
    if [[ "$(id -u)" == 0 ]] && id postgres >/dev/null 2>&1 \
            && ! runuser -u postgres -- test -x "$ROOT" 2>/dev/null; then
        PG_RUN="/var/tmp/tnrwatch-pg-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    fi
    PG_DATA="$PG_RUN/data"
    PG_SOCK="$PG_RUN/sock"
    PG_LOG="$PG_RUN/postgresql.log"
}
resolve_pg_paths
PG_PIDFILE="$RUN/pg.pid"          # copy of the postmaster PID, for humans/tools

KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
DATABASE_URL="postgresql://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"

# ----------------------------------------------------------------------------- helpers

log()  { printf '[stack] %s\n' "$*" >&2; }
die()  { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }
now()  { date +%s; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# Is something accepting TCP connections on 127.0.0.1:$1?
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Alive and not a zombie (an exited daemon stays a zombie until PID 1 reaps it).
pid_alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    local state
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    [[ "$state" != Z && -n "$state" ]]
}

# PID of our Kafka JVM, or empty. Only trusts the pid file if that PID really is a
# kafka.Kafka process using *our* config (pid reuse after reboot/cleanup).
kafka_pid() {
    [[ -f "$K_PID" ]] || return 0
    local pid; pid="$(cat "$K_PID" 2>/dev/null || true)"
    if pid_alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $K_CONF"; then
        echo "$pid"
    fi
}

tail_logs() {  # tail_logs LABEL FILE...
    local label="$1"; shift
    local f
    for f in "$@"; do
        [[ -f "$f" ]] || continue
        printf '\n[stack] ---- %s: last 40 lines of %s ----\n' "$label" "$f" >&2
        tail -n 40 "$f" >&2 || true
    done
}

# ----------------------------------------------------------------------------- kafka

libs_complete() {
    [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(sha256sum "$POM" | cut -d' ' -f1)" ]]
}

fetch_kafka() {
    if libs_complete; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (needed once to fetch the Kafka jars into $LIBS)"
    command -v java >/dev/null || die "java not found (Java 17+ is needed to run Kafka)"
    log "fetching Kafka jars from Maven Central into $LIBS (first run only; may take a few minutes)"
    local tmp="$CACHE/kafka/libs.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp" "$M2"
    local mvnlog="$CACHE/kafka/fetch.log"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" \
            -Dmaven.repo.local="$M2" \
            dependency:copy-dependencies \
            -DincludeScope=runtime \
            -DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
        rm -rf "$tmp"
        tail -n 60 "$mvnlog" >&2
        die "maven failed to fetch the Kafka jars (full output: $mvnlog)"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "kafka_2.13 jar missing after fetch"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    sha256sum "$POM" | cut -d' ' -f1 >"$STAMP"
    log "fetched $(ls "$LIBS"/*.jar | wc -l) jars"
}

java_cp() { echo "$LIBS/*"; }

render_kafka_config() {
    mkdir -p "$K_DATA" "$K_LOGS"
    sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
        -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
        -e "s|@DATA_DIR@|$K_DATA|g" \
        "$HERE/kafka/server.properties.template" >"$K_CONF.tmp"
    mv "$K_CONF.tmp" "$K_CONF"
}

format_kafka_storage() {
    if [[ -f "$K_DATA/meta.properties" ]]; then
        return 0
    fi
    if [[ ! -s "$K_CLUSTER_ID" ]]; then
        java -cp "$(java_cp)" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 >"$K_CLUSTER_ID.tmp"
        [[ -s "$K_CLUSTER_ID.tmp" ]] || die "kafka.tools.StorageTool random-uuid produced nothing"
        mv "$K_CLUSTER_ID.tmp" "$K_CLUSTER_ID"
    fi
    log "formatting Kafka storage (cluster id $(cat "$K_CLUSTER_ID"))"
    if ! java -cp "$(java_cp)" \
            -Dlog4j2.configurationFile="$HERE/kafka/log4j2.xml" -Dkafka.logs.dir="$K_LOGS" \
            kafka.tools.StorageTool format \
            -t "$(cat "$K_CLUSTER_ID")" -c "$K_CONF" --ignore-formatted >"$K_LOGS/format.log" 2>&1; then
        cat "$K_LOGS/format.log" >&2
        die "formatting Kafka storage failed"
    fi
}

# Ask the broker for ApiVersions and Metadata over a raw socket. Succeeds only when the
# broker answers and lists itself (node 1 on our port) as a live broker.
kafka_probe() {
    if command -v python3 >/dev/null; then
        python3 - "$KAFKA_PORT" "${1:-}" <<'PY' 2>/dev/null
import socket, struct, sys, time
port = int(sys.argv[1])
warm = sys.argv[2] == "warm"

def rpc(sock, api_key, version, corr, body):
    client = b"tnr-stack-probe"
    req = struct.pack(">hhih", api_key, version, corr, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(req)) + req)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf
    (size,) = struct.unpack(">i", read(4))
    resp = read(size)
    (got,) = struct.unpack(">i", resp[:4])
    if got != corr:
        raise ValueError("correlation id mismatch")
    return resp[4:]

with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
    s.settimeout(3)
    # ApiVersions v0: error_code int16 first.
    r = rpc(s, 18, 0, 1, b"")
    (err,) = struct.unpack(">h", r[:2])
    if err != 0:
        sys.exit(2)
    # Metadata v4 (oldest non-removed version in Kafka 4.x), no topics, no auto-create.
    r = rpc(s, 3, 4, 2, struct.pack(">ib", 0, 0))
    off = 4                                   # throttle_time_ms
    (n,) = struct.unpack(">i", r[off:off + 4]); off += 4
    ok = False
    for _ in range(n):
        (node,) = struct.unpack(">i", r[off:off + 4]); off += 4
        (hl,) = struct.unpack(">h", r[off:off + 2]); off += 2
        off += hl
        (bport,) = struct.unpack(">i", r[off:off + 4]); off += 4
        (rl,) = struct.unpack(">h", r[off:off + 2]); off += 2
        off += max(rl, 0)
        if node == 1 and bport == port:
            ok = True
    if not ok:
        sys.exit(3)
    if warm:
        # FindCoordinator v1 for a group and a transactional id: makes the broker create
        # __consumer_offsets and __transaction_state now, so the first test does not
        # race their creation (clients log GroupCoordinatorNotAvailable and retry).
        for key_type in (0, 1):
            deadline = time.monotonic() + 30
            key = b"tnr-stack-warmup"
            corr = 10 + key_type
            while True:
                corr += 2
                r = rpc(s, 10, 1, corr, struct.pack(">h", len(key)) + key + struct.pack(">b", key_type))
                (err,) = struct.unpack(">h", r[4:6])
                if err == 0:
                    break
                if time.monotonic() > deadline:
                    sys.exit(4)
                time.sleep(0.2)
    sys.exit(0)
PY
    else
        # Fallback without python3: port open and the start-up line logged.
        port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$K_LOGS/server.log" 2>/dev/null
    fi
}


start_kafka() {
    local pid; pid="$(kafka_pid)"
    if [[ -n "$pid" ]]; then
        if kafka_probe; then
            log "kafka: reusing running broker (pid $pid) on $KAFKA_BOOTSTRAP"
            return 0
        fi
        log "kafka: pid $pid is running but not answering yet; waiting for it"
        wait_kafka "$pid"
        return 0
    fi
    rm -f "$K_PID"
    for p in "$KAFKA_PORT" "$CONTROLLER_PORT"; do
        if port_open "$p"; then
            die "port 127.0.0.1:$p is taken by something that is not this repo's Kafka; stop it or set TNR_LOCAL_KAFKA_PORT / TNR_LOCAL_KAFKA_CONTROLLER_PORT"
        fi
    done
    fetch_kafka
    render_kafka_config
    format_kafka_storage

    log "kafka: starting broker on $KAFKA_BOOTSTRAP (controller 127.0.0.1:$CONTROLLER_PORT)"
    # setsid: own session, so the broker survives the shell that started it.
    # shellcheck disable=SC2086
    setsid java $KAFKA_HEAP \
        -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/kafka/log4j2.xml" \
        -Dkafka.logs.dir="$K_LOGS" \
        -cp "$(java_cp)" \
        kafka.Kafka "$K_CONF" \
        </dev/null >>"$K_LOGS/stdout.log" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$K_PID"
    wait_kafka "$pid"
}

wait_kafka() {
    local pid="$1" deadline=$(( $(now) + TIMEOUT ))
    while :; do
        if ! pid_alive "$pid"; then
            tail_logs kafka "$K_LOGS/stdout.log" "$K_LOGS/server.log"
            rm -f "$K_PID"
            die "kafka exited during start-up (logs above, in $K_LOGS)"
        fi
        if kafka_probe; then
            if ! kafka_probe warm; then
                log "kafka: warning: group/transaction coordinators not available yet (clients will retry)"
            fi
            log "kafka: ready (pid $pid)"
            return 0
        fi
        if (( $(now) >= deadline )); then
            tail_logs kafka "$K_LOGS/stdout.log" "$K_LOGS/server.log" "$K_LOGS/controller.log"
            die "kafka did not answer a metadata request on $KAFKA_BOOTSTRAP within ${TIMEOUT}s (still running as pid $pid; run '$0 down' to stop it)"
        fi
        sleep 0.3
    done
}

stop_kafka() {
    local pid; pid="$(kafka_pid)"
    if [[ -z "$pid" ]]; then
        rm -f "$K_PID"
        log "kafka: not running"
        return 0
    fi
    log "kafka: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( $(now) + 30 ))
    while pid_alive "$pid"; do
        if (( $(now) >= deadline )); then
            log "kafka: still alive after 30s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$K_PID"
    log "kafka: stopped"
}

# ----------------------------------------------------------------------------- postgres

PG_BIN=""

find_pg_bin() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    if [[ -n "$d" && -x "$d/initdb" ]]; then PG_BIN="$d"; return 0; fi
    if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        PG_BIN="$(pg_config --bindir)"; return 0
    fi
    if command -v initdb >/dev/null; then PG_BIN="$(dirname "$(command -v initdb)")"; return 0; fi
    return 1
}

ensure_pg_installed() {
    find_pg_bin && return 0
    if is_root && command -v apt-get >/dev/null; then
        log "postgres: server binaries missing; installing the Debian 'postgresql' package"
        # Do not let the package create and start its own 'main' cluster on port 5432.
        mkdir -p /etc/postgresql-common
        if [[ ! -f /etc/postgresql-common/createcluster.conf ]]; then
            echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
        find_pg_bin || die "postgresql installed but initdb still not found"
        resolve_pg_paths   # the postgres OS user exists only now
    else
        die "PostgreSQL server binaries not found; install them (Debian: apt-get install -y postgresql)"
    fi
}

# Run a PostgreSQL server-side binary as the right OS user (postgres refuses root).
AS_PG=()
if is_root; then AS_PG=(runuser -u postgres --); fi
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_running() { as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

pg_postmaster_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

pg_ready() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres >/dev/null 2>&1
}

psql_cmd() {  # psql_cmd DB SQL
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$1" -tAc "$2"
}

init_pg() {
    [[ -f "$PG_DATA/PG_VERSION" ]] && return 0
    log "postgres: initialising cluster in $PG_DATA"
    mkdir -p "$PG_RUN"
    rm -rf "$PG_DATA"
    mkdir -p "$PG_DATA" "$PG_SOCK"
    if is_root; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user (install the postgresql package)"
        chown -R postgres:postgres "$PG_RUN"
        runuser -u postgres -- test -x "$PG_RUN" \
            || die "the postgres OS user cannot access $PG_RUN (a parent directory is not world-executable)"
    fi
    chmod 700 "$PG_DATA"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=trust >"$PG_RUN/initdb.log" 2>&1; then
        cat "$PG_RUN/initdb.log" >&2
        die "initdb failed"
    fi
    # Trust, loopback only (plus the unix socket in the run dir).
    as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<'EOF'
# tnrwatch local dev/test cluster: trust, 127.0.0.1 only.
local   all   all                  trust
host    all   all   127.0.0.1/32   trust
EOF
    # Durability is irrelevant for a throw-away dev/test database; speed is not.
    as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<'EOF'

# ---- tnrwatch local stack (deploy/local/stack.sh) ----
# port, listen_addresses and unix_socket_directories are passed on the pg_ctl command line.
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 128MB
log_min_messages = warning
log_min_error_statement = error
EOF
}

start_pg() {
    ensure_pg_installed
    mkdir -p "$PG_RUN"
    if [[ -f "$PG_DATA/PG_VERSION" ]] && pg_running; then
        if ! pg_ready; then
            wait_pg
        fi
        log "postgres: reusing running server (pid $(pg_postmaster_pid)) on 127.0.0.1:$PG_PORT"
    else
        if port_open "$PG_PORT"; then
            die "port 127.0.0.1:$PG_PORT is taken by something that is not this repo's PostgreSQL; stop it or set TNR_LOCAL_PG_PORT"
        fi
        init_pg
        mkdir -p "$PG_SOCK"
        if is_root; then chown postgres:postgres "$PG_SOCK" "$PG_RUN"; fi
        log "postgres: starting on 127.0.0.1:$PG_PORT"
        # Socket path must stay under ~107 bytes; fall back to a private /tmp dir otherwise.
        local sockdir="$PG_SOCK"
        if (( ${#sockdir} > 90 )); then
            sockdir="/tmp/tnrwatch-pg-$(echo "$ROOT" | sha256sum | cut -c1-12)"
            mkdir -p "$sockdir"; chmod 700 "$sockdir"
            if is_root; then chown postgres:postgres "$sockdir"; fi
        fi
        # setsid: the postmaster gets its own session and outlives this shell.
        if ! setsid -w "${AS_PG[@]}" "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$TIMEOUT" -s \
                -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$sockdir" \
                </dev/null >"$PG_RUN/pg_ctl.out" 2>&1 9>&-; then
            cat "$PG_RUN/pg_ctl.out" >&2 || true
            tail_logs postgres "$PG_LOG"
            die "postgres failed to start"
        fi
        wait_pg
        log "postgres: ready (pid $(pg_postmaster_pid))"
    fi
    pg_postmaster_pid >"$PG_PIDFILE"
    ensure_pg_db
}

wait_pg() {
    local deadline=$(( $(now) + TIMEOUT ))
    until pg_ready; do
        if (( $(now) >= deadline )); then
            tail_logs postgres "$PG_LOG"
            die "postgres did not become ready on 127.0.0.1:$PG_PORT within ${TIMEOUT}s"
        fi
        sleep 0.2
    done
}

ensure_pg_db() {
    # initdb -U tnrwatch already made tnrwatch the bootstrap superuser; keep this
    # idempotent for clusters made otherwise.
    if [[ "$(psql_cmd postgres "select 1 from pg_roles where rolname = '$PG_USER'")" != 1 ]]; then
        psql_cmd postgres "create role $PG_USER login superuser"
    fi
    if [[ "$(psql_cmd postgres "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]]; then
        log "postgres: creating database $PG_DB"
        psql_cmd postgres "create database $PG_DB owner $PG_USER"
    fi
    [[ "$(psql_cmd "$PG_DB" "select 1")" == 1 ]] || die "postgres: 'select 1' on $DATABASE_URL failed"
}

stop_pg() {
    if ! find_pg_bin; then
        log "postgres: binaries not installed; nothing to stop"
        return 0
    fi
    if [[ ! -f "$PG_DATA/PG_VERSION" ]] || ! pg_running; then
        rm -f "$PG_PIDFILE"
        log "postgres: not running"
        return 0
    fi
    local pid; pid="$(pg_postmaster_pid)"
    log "postgres: stopping pid $pid"
    if ! as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 30 -s >/dev/null 2>&1; then
        log "postgres: fast shutdown timed out; using immediate"
        as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 15 -s >/dev/null 2>&1 || true
    fi
    if pid_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PG_PIDFILE"
    log "postgres: stopped"
}

# ----------------------------------------------------------------------------- commands

write_env() {
    cat >"$ENV_FILE.tmp" <<EOF
TNR_KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP
TNR_DATABASE_URL=$DATABASE_URL
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

# Serialise concurrent up/down/clean (parallel test runners). The daemons are started
# with fd 9 closed, or they would hold the lock for their whole life.
lock() {
    mkdir -p "$RUN"
    exec 9>"$LOCK_FILE"
    if command -v flock >/dev/null; then
        flock -w 180 9 || die "another '$0' has held $LOCK_FILE for 3 minutes"
    fi
}

cmd_up() {
    lock
    local t0; t0="$(now)"
    # Start the JVM first (slowest), bring postgres up while it boots? Kept sequential
    # for clear error output; both are fast with a warm jar cache.
    start_kafka
    start_pg
    write_env
    log "stack up in $(( $(now) - t0 ))s; env in $ENV_FILE:"
    cat "$ENV_FILE"
}

cmd_down() {
    lock
    stop_kafka
    stop_pg
}

cmd_status() {
    local rc=0 pid
    pid="$(kafka_pid)"
    if [[ -n "$pid" ]] && kafka_probe; then
        echo "kafka:    running  pid $pid  $KAFKA_BOOTSTRAP  (healthy)"
    elif [[ -n "$pid" ]]; then
        echo "kafka:    running  pid $pid  $KAFKA_BOOTSTRAP  (NOT answering)"; rc=1
    else
        echo "kafka:    stopped"; rc=1
    fi
    if find_pg_bin && [[ -f "$PG_DATA/PG_VERSION" ]] && pg_running; then
        if pg_ready; then
            echo "postgres: running  pid $(pg_postmaster_pid)  127.0.0.1:$PG_PORT  (healthy)"
        else
            echo "postgres: running  pid $(pg_postmaster_pid)  127.0.0.1:$PG_PORT  (NOT ready)"; rc=1
        fi
    else
        echo "postgres: stopped"; rc=1
    fi
    if [[ -f "$ENV_FILE" ]]; then echo "env:      $ENV_FILE"; fi
    return "$rc"
}

cmd_env() {
    [[ -f "$ENV_FILE" ]] || die "no $ENV_FILE; run '$0 up' first"
    cat "$ENV_FILE"
}

cmd_clean() {
    cmd_down
    exec 9>&-
    rm -rf "$RUN"
    log "removed $RUN"
    if [[ "$PG_RUN" != "$RUN"/* && -d "$PG_RUN" ]]; then
        rm -rf "$PG_RUN"
        log "removed $PG_RUN"
    fi
}

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    up)     cmd_up ;;
    down)   cmd_down ;;
    status) cmd_status ;;
    env)    cmd_env ;;
    clean)  cmd_clean ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac

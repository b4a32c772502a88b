#!/usr/bin/env bash
# A team's services on one machine, on 127.0.0.1: PostgreSQL, the MLflow tracking server (backend
# store on PostgreSQL, artifacts proxied into a local folder that stands in for object storage),
# the Prefect server (on the same PostgreSQL), a `process` work pool and its workers.
#
#   deploy/services.sh up       start whatever is not running (idempotent)
#   deploy/services.sh down     stop everything (idempotent; data stays)
#   deploy/services.sh status   health of each service; exit 1 when one is down
#   deploy/services.sh env      the exports that point `ppg` and the flows at the servers:
#                               eval "$(deploy/services.sh env)"
#   deploy/services.sh purge    down, then delete the folder (data, logs, secrets)
#
# Everything lives under PPG_SERVICES_DIR (default .services/ in the repository): pg/ (the
# cluster), artifacts/, prefect/ (PREFECT_HOME), logs/, run/ (pid files, sockets) and secrets/
# (generated passwords, mode 600; never printed by `up` or `status`, only by `env`).
# Knobs (environment): PPG_PG_PORT (55432), PPG_MLFLOW_PORT (5097), PPG_PREFECT_PORT (4299),
# PPG_POOL (ppg), PPG_WORKERS (1), PPG_MLFLOW_AUTH (1: MLflow's basic-auth app; 0: open),
# PPG_PG_BIN (the newest /usr/lib/postgresql/*/bin), PPG_VENV (the repository's .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${PPG_SERVICES_DIR:-$ROOT/.services}"
mkdir -p "$DIR" && DIR="$(cd "$DIR" && pwd)"
PG_PORT="${PPG_PG_PORT:-55432}"
MLFLOW_PORT="${PPG_MLFLOW_PORT:-5097}"
PREFECT_PORT="${PPG_PREFECT_PORT:-4299}"
POOL="${PPG_POOL:-ppg}"
WORKERS="${PPG_WORKERS:-1}"
AUTH="${PPG_MLFLOW_AUTH:-1}"
VENV="${PPG_VENV:-$ROOT/.venv}"
PG_BIN="${PPG_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
LOGS="$DIR/logs" RUN="$DIR/run" SECRETS="$DIR/secrets"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
PREFECT_URL="http://127.0.0.1:$PREFECT_PORT/api"

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }

# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user that
# Debian's package creates; otherwise to whoever runs this script.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

secret() {  # a generated password, kept in secrets/NAME (mode 600)
    local f="$SECRETS/$1"
    if [ ! -s "$f" ]; then
        (umask 077 && mkdir -p "$SECRETS" && "$VENV/bin/python" -c \
            'import secrets; print(secrets.token_urlsafe(24))' > "$f.tmp" && mv "$f.tmp" "$f")
    fi
    cat "$f"
}

alive() { [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

wait_for() {  # NAME URL SECONDS: poll URL until it answers 2xx (or 401 with auth on)
    local name="$1" url="$2" n="$3" code
    for _ in $(seq "$n"); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        case "$code" in 2*|401) return 0 ;; esac
        alive "$name" || die "$name exited while starting; its log: $LOGS/$name.log
$(tail -20 "$LOGS/$name.log" 2>/dev/null)"
        sleep 1
    done
    die "$name did not answer $url within ${n} s; its log: $LOGS/$name.log"
}

start() {  # NAME CMD...: run CMD in its own session (its children die with it), pid in run/
    local name="$1"; shift
    alive "$name" && { say "$name already running (pid $(cat "$RUN/$name.pid"))"; return 0; }
    setsid "$@" >> "$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! > "$RUN/$name.pid"
}

stop() {  # NAME: the process group started by start()
    local name="$1" pid
    [ -s "$RUN/$name.pid" ] || return 0
    pid=$(cat "$RUN/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true  # the group: a worker's flow runs, uvicorn's children
    rm -f "$RUN/$name.pid"
    say "$name stopped"
}

# The role ppg reads its password from a pgpass file, so no connection URI (in a log, a
# process list or MLflow's own records) carries it.
pg_env() {
    export PGPASSFILE="$SECRETS/pgpass" PGHOST=127.0.0.1 PGPORT="$PG_PORT" PGUSER=ppg
}

pg_up() {
    [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server binaries (PPG_PG_BIN=$PG_BIN); install Debian's \
postgresql package (apt-get install -y postgresql) or set PPG_PG_BIN"
    local data="$DIR/pg" pw
    pw=$(secret pg)
    (umask 077 && echo "127.0.0.1:$PG_PORT:*:ppg:$pw" > "$SECRETS/pgpass")
    pg_env
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- test -x "$DIR" || die "the postgres user cannot reach $DIR; set \
PPG_SERVICES_DIR to a folder it can (e.g. under /tmp or /srv)"
        mkdir -p "$data" "$RUN/pg" && chown postgres "$data" "$RUN/pg" && chmod 700 "$data"
    else
        mkdir -p "$data" "$RUN/pg" && chmod 700 "$data"
    fi
    if [ ! -s "$data/PG_VERSION" ]; then
        local pwfile="$RUN/pg/initpw"
        (umask 077 && echo "$pw" > "$pwfile") && { [ "$(id -u)" != 0 ] || chown postgres "$pwfile"; }
        as_pg "$PG_BIN/initdb" -D "$data" -U ppg --auth-host=scram-sha-256 --auth-local=scram-sha-256 \
            --pwfile="$pwfile" -E UTF8 > "$LOGS/initdb.log" 2>&1 || { rm -f "$pwfile"; die "initdb failed: $LOGS/initdb.log"; }
        rm -f "$pwfile"
    fi
    if as_pg "$PG_BIN/pg_ctl" -D "$data" status > /dev/null 2>&1; then
        say "postgres already running"
    else
        [ "$(id -u)" != 0 ] || { touch "$LOGS/postgres.log"; chown postgres "$LOGS/postgres.log"; }
        as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$LOGS/postgres.log" -w -t 60 start \
            -o "-p $PG_PORT -k $RUN/pg -c listen_addresses=127.0.0.1" > /dev/null \
            || die "postgres did not start; its log: $LOGS/postgres.log"
    fi
    local db
    for db in mlflow mlflow_auth prefect; do
        [ "$(psql -d postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db'")" = 1 ] \
            || psql -d postgres -qc "CREATE DATABASE $db" > /dev/null
    done
    # Prefect's migrations create pg_trgm (trigram indexes for searching logs and runs); creating
    # an extension needs rights a managed database may not give: made here, once, by the owner.
    PGOPTIONS="-c client_min_messages=warning" psql -d prefect -qc "CREATE EXTENSION IF NOT EXISTS pg_trgm" > /dev/null
}

auth_ini() {  # MLflow's basic-auth app: its own user database, on the same PostgreSQL. The admin's
    # password reaches the app as MLFLOW_AUTH_ADMIN_PASSWORD, when it first creates the admin.
    (umask 077 && cat > "$SECRETS/mlflow-auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg://ppg@127.0.0.1:$PG_PORT/mlflow_auth
admin_username = ppg-admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Checking a password is a PBKDF2 hash: 0.53 s per request on 2 cores, and a tiny pipeline run
# makes ~630 requests. Cached per server worker; a changed password is honoured after the TTL.
auth_cache_ttl_seconds = 300
EOF
    )
}

mlflow_up() {
    pg_env
    local app=()
    if [ "$AUTH" = 1 ]; then auth_ini; app=(--app-name basic-auth); fi
    mkdir -p "$DIR/artifacts"
    # No job runner (it spawns a pool of consumers that outlive the server); one worker.
    MLFLOW_AUTH_CONFIG_PATH="$SECRETS/mlflow-auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$(secret mlflow-admin)" \
    MLFLOW_FLASK_SERVER_SECRET_KEY="$(secret flask-key)" \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    MLFLOW_DISABLE_TELEMETRY=true \
        start mlflow "$VENV/bin/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
        --backend-store-uri "postgresql+psycopg://ppg@127.0.0.1:$PG_PORT/mlflow" \
        --artifacts-destination "$DIR/artifacts" "${app[@]}"
}

prefect_env() {
    pg_env
    export PREFECT_HOME="$DIR/prefect" PREFECT_API_URL="$PREFECT_URL" \
        PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_UI_ENABLED=false
}

prefect_up() {
    prefect_env
    PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://ppg@127.0.0.1:$PG_PORT/prefect" \
        start prefect "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
}

pool_up() {
    prefect_env
    wait_for prefect "$PREFECT_URL/health" 180
    "$VENV/bin/prefect" work-pool inspect "$POOL" > /dev/null 2>&1 \
        || "$VENV/bin/prefect" work-pool create "$POOL" --type process > "$LOGS/work-pool.log" 2>&1 \
        || die "work pool $POOL not created: $LOGS/work-pool.log"
    local i
    for i in $(seq "$WORKERS"); do
        # A worker runs each flow run as a subprocess with its own environment: the one `env`
        # prints, so stages reach the tracking server with the credentials.
        (eval "$(print_env)" && start "worker-$i" "$VENV/bin/prefect" worker start --pool "$POOL" \
            --name "$(hostname)-$POOL-$i" --type process)
    done
}

print_env() {
    echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL"
    echo "export PREFECT_API_URL=$PREFECT_URL"
    echo "export PPG_SERVICES_DIR=$DIR"
    if [ "$AUTH" = 1 ]; then
        echo "export MLFLOW_TRACKING_USERNAME=ppg-admin"
        echo "export MLFLOW_TRACKING_PASSWORD=$(secret mlflow-admin)"
    fi
}

status() {
    local bad=0 code
    if as_pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; then
        echo "postgres  up    127.0.0.1:$PG_PORT"
    else echo "postgres  DOWN  127.0.0.1:$PG_PORT"; bad=1; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$MLFLOW_URL/health" || true)
    if [ "$code" = 200 ]; then echo "mlflow    up    $MLFLOW_URL (auth: $([ "$AUTH" = 1 ] && echo basic || echo none))"
    else echo "mlflow    DOWN  $MLFLOW_URL (http $code)"; bad=1; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$PREFECT_URL/health" || true)
    if [ "$code" = 200 ]; then echo "prefect   up    $PREFECT_URL"
    else echo "prefect   DOWN  $PREFECT_URL (http $code)"; bad=1; fi
    local i
    for i in $(seq "$WORKERS"); do
        if alive "worker-$i"; then echo "worker-$i  up    pool $POOL (pid $(cat "$RUN/worker-$i.pid"))"
        else echo "worker-$i  DOWN  pool $POOL"; bad=1; fi
    done
    return $bad
}

down() {
    local f names=()
    for f in "$RUN"/*.pid; do [ -e "$f" ] && names+=("$(basename "$f" .pid)"); done
    # TERM to every service at once, then wait for each: the wait is the slowest one's, not the sum
    for f in "${names[@]}"; do alive "$f" && { kill -TERM -- "-$(cat "$RUN/$f.pid")" 2>/dev/null || true; }; done
    for f in "${names[@]}"; do stop "$f"; done
    if [ -s "$DIR/pg/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" status > /dev/null 2>&1; then
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/pg" -m fast -w stop > /dev/null && say "postgres stopped"
    fi
}

mkdir -p "$LOGS" "$RUN"
case "${1:-}" in
    up)
        [ -x "$VENV/bin/mlflow" ] || die "no $VENV/bin/mlflow: run \`make install\` first (or set PPG_VENV)"
        pg_up && say "postgres up on 127.0.0.1:$PG_PORT"
        # both servers start at once (10-25 s of imports each), then each is waited for
        mlflow_up && prefect_up
        wait_for mlflow "$MLFLOW_URL/health" 120 && say "mlflow up on $MLFLOW_URL"
        pool_up && say "prefect up on $PREFECT_URL, work pool $POOL, $WORKERS worker(s)"
        ;;
    down) down ;;
    status) status ;;
    env) print_env ;;
    purge) down; rm -rf "$DIR"; say "removed $DIR" ;;
    *) echo "usage: $0 up|down|status|env|purge" >&2; exit 2 ;;
esac

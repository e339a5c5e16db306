#!/usr/bin/env bash
# Usage: scripts/with-postgres.sh COMMAND [ARG...]
#
# Starts a throwaway PostgreSQL cluster (initdb under a temporary directory,
# listening on 127.0.0.1 on a free port, trust authentication, superuser
# `secureev`), runs COMMAND with SECUREEV_TEST_DATABASE_URL pointing at it,
# then stops the cluster and removes it; exits with COMMAND's status.
# PostgreSQL refuses to run as root: as root the cluster belongs to and runs
# as the `postgres` user (made by the Debian package), else as the caller.
set -euo pipefail
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$bin/initdb" ] || { echo "with-postgres: no PostgreSQL server (run scripts/postgres-prereqs.sh)" >&2; exit 1; }
dir="$(mktemp -d /tmp/secureev-pg.XXXXXX)"
as=()
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    as=(runuser -u postgres --)
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
stop() {
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
"${as[@]}" "$bin/initdb" -D "$dir/data" -U secureev -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log"; exit 1; }
# Enough connections for the suites' servers (each pools up to 16), fsync
# off: a throwaway cluster.
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null || { cat "$dir/server.log"; exit 1; }
export SECUREEV_TEST_DATABASE_URL="postgres://secureev@127.0.0.1:$port/postgres"
echo "with-postgres: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
rc=0
"$@" || rc=$?
if [ "$rc" != 0 ]; then
    echo "with-postgres: command failed ($rc); server log tail:" >&2
    tail -n 40 "$dir/server.log" >&2 || true
fi
exit "$rc"

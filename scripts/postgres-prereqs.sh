#!/usr/bin/env bash
# Installs PostgreSQL (Debian `postgresql`: the server binaries initdb,
# pg_ctl, postgres, and psql) for the backend's suites on PostgreSQL
# (scripts/with-postgres.sh, server/tests/multi_instance.rs). Called by
# scripts/test.sh; a no-op when the binaries are present. Needs root for
# apt-get: without root it says so and stops (exit 0) outside CI, and fails
# under CI, where the suites must run.
set -euo pipefail
bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
if [ -n "$(bindir)" ] && [ -x "$(bindir)/initdb" ] && command -v psql >/dev/null 2>&1; then
    "$(bindir)/postgres" --version
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    if [ -n "${CI:-}" ]; then
        echo "postgres-prereqs: postgresql is missing and CI is not root: cannot install it" >&2
        exit 1
    fi
    echo "postgres-prereqs: SKIPPED: postgresql is missing and this is not root;" \
        "install it (apt-get install postgresql) to run the suites on PostgreSQL"
    exit 0
fi
echo "postgres-prereqs: installing postgresql"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null >/dev/null
apt-get install -y -q --no-install-recommends postgresql </dev/null >/dev/null
"$(bindir)/postgres" --version

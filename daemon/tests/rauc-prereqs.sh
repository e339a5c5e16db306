#!/usr/bin/env bash
# Installs what daemon/tests/rauc.rs needs to run the real RAUC service:
# rauc (Debian: 1.8), squashfs-tools (rauc bundle / mounts), openssl (the test
# CA), dbus (a private dbus-daemon) and busctl (systemd). Called by
# scripts/test.sh before the workspace tests; a no-op when all are present.
# Needs root for apt-get; the tests themselves need root to mount bundles.
set -euo pipefail
need=()
command -v rauc >/dev/null 2>&1 || need+=(rauc)
command -v mksquashfs >/dev/null 2>&1 || need+=(squashfs-tools)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
command -v busctl >/dev/null 2>&1 || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
    echo "rauc-prereqs: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi
rauc --version

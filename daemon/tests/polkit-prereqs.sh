#!/usr/bin/env bash
# Installs what daemon/tests/e2e_polkit.rs needs: polkitd (Debian: polkitd,
# /usr/lib/polkit-1/polkitd and its bus policy in
# /usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf). Called by
# scripts/test.sh before the workspace tests; a no-op when present. Needs root
# for apt-get. The test starts its own polkitd on a private bus.
set -euo pipefail
if [ ! -x /usr/lib/polkit-1/polkitd ] || [ ! -f /usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf ]; then
    echo "polkit-prereqs: installing polkitd"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >/dev/null
    apt-get install -y -q --no-install-recommends polkitd </dev/null >/dev/null
fi
dpkg-query -W -f='polkitd ${Version}\n' polkitd 2>/dev/null || true

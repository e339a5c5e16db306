#!/usr/bin/env bash
# Installs what daemon/tests/e2e_mqtt.rs needs: the Mosquitto MQTT broker
# (Debian: mosquitto, with mosquitto_passwd) and openssl (the broker's test
# CA). Called by scripts/test.sh before the workspace tests; a no-op when all
# are present. Needs root for apt-get.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
if [ "${#need[@]}" -gt 0 ]; then
    echo "mosquitto-prereqs: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi
# Debian's package starts a system broker on port 1883; the tests start their
# own on an ephemeral loopback port and do not use it.
/usr/sbin/mosquitto -h 2>/dev/null | head -1 || true

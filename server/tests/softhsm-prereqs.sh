#!/usr/bin/env bash
# Installs SoftHSM2 (Debian `softhsm2`: the PKCS#11 module and softhsm2-util)
# for server/tests/hsm.rs, which runs the real server with its online keys
# and KEK in a SoftHSM2 token. Called by scripts/test.sh before the
# workspace tests; a no-op when softhsm2-util is present. Needs root for
# apt-get: without root it says so and stops (exit 0) outside CI, and fails
# under CI, where the test must run.
set -euo pipefail
if command -v softhsm2-util >/dev/null 2>&1; then
    softhsm2-util --version
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    if [ -n "${CI:-}" ]; then
        echo "softhsm-prereqs: softhsm2 is missing and CI is not root: cannot install it" >&2
        exit 1
    fi
    echo "softhsm-prereqs: SKIPPED: softhsm2 is missing and this is not root;" \
        "install it (apt-get install softhsm2) to run server/tests/hsm.rs"
    exit 0
fi
echo "softhsm-prereqs: installing softhsm2"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null >/dev/null
apt-get install -y -q --no-install-recommends softhsm2 </dev/null >/dev/null
softhsm2-util --version

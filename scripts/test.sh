#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, unit,
# integration, doc and interop tests (python-tuf), the demo, the vcan rigs
# (in a VM when the kernel has no CAN), and compiles fuzz targets. This is
# the README's test command and what CI runs.
#
# The workspace is built once (`cargo test --workspace`); everything after it
# reuses that build. The vcan VM step is the longest and uses the emulated
# CPUs of its own VM, so it runs in the background beside the host-only suites
# that follow the workspace tests; its log is printed when it ends. The script
# fails if any step fails, including the background one.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s   [%s, %ss]\n' "$*" "$(date -u +%H:%M:%S)" "$SECONDS"; }

step "toolchain"
cargo --version
rustc --version

step "python-tuf venv for interop tests"
SECUREEV_PYTHON="$(bash scripts/python-venv.sh)"
export SECUREEV_PYTHON
echo "SECUREEV_PYTHON=$SECUREEV_PYTHON"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "RAUC for the rauc installer tests (daemon/tests/rauc.rs)"
bash daemon/tests/rauc-prereqs.sh

step "SoftHSM2 for the PKCS#11 key store test (server/tests/hsm.rs)"
bash server/tests/softhsm-prereqs.sh

step "Mosquitto for the MQTT push test (daemon/tests/e2e_mqtt.rs)"
bash daemon/tests/mosquitto-prereqs.sh

step "PostgreSQL for the backend's suites on PostgreSQL (scripts/with-postgres.sh)"
bash scripts/postgres-prereqs.sh

step "polkitd for the polkit authorization test (daemon/tests/e2e_polkit.rs)"
bash daemon/tests/polkit-prereqs.sh

step "busctl, gdbus, setpriv, dbus-daemon for the D-Bus client suites (daemon/tests/e2e_busctl.rs, e2e_control.rs)"
dbus_pkgs=()
command -v dbus-daemon >/dev/null || dbus_pkgs+=(dbus)
command -v busctl >/dev/null || dbus_pkgs+=(systemd)
command -v gdbus >/dev/null || dbus_pkgs+=(libglib2.0-bin)
command -v setpriv >/dev/null || dbus_pkgs+=(util-linux)
if [ ${#dbus_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${dbus_pkgs[@]}" >/dev/null
    else
        echo "missing: ${dbus_pkgs[*]} (the D-Bus client suites need them)" >&2
        exit 1
    fi
fi

step "cargo test (workspace)"
cargo test --workspace --locked

step "backend integration suites on PostgreSQL (a throwaway cluster; SECUREEV_TEST_DATABASE_URL)"
# The same suites as above, every harness in a fresh PostgreSQL database.
# data_dir_review stays SQLite-only (it inspects the SQLite file's mode).
if [ -n "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null)" ]; then
    bash scripts/with-postgres.sh cargo test -p secureev-server --locked \
        --test attacks --test audit_atomic --test enrollment --test rollouts \
        --test device_certs --test flood --test rotation --test tls --test multi_instance
else
    echo "SKIPPED: no PostgreSQL server (see scripts/postgres-prereqs.sh)"
fi

# ---- the vcan VM, in the background --------------------------------------
vm_log="$(mktemp /tmp/secureev-vm-step.XXXXXX.log)"
step "vcan rigs (background; log: $vm_log): kernel ISO-TP, secureev-otad + secureev-ecu on vcan, udsoncan and can-utils interop, CAN benchmarks"
# On a host without CAN (this CI machine) this boots Debian's kernel under QEMU
# and runs the vcan tests inside; it fails when they fail or did not run.
# Its own session, so that a failure here can stop it and its QEMU at once.
SECUREEV_BENCH_MIB="${SECUREEV_BENCH_MIB:-0.5}" setsid -w bash can-tests/run-vm.sh </dev/null >"$vm_log" 2>&1 &
vm_pid=$!
vm_done=0
finish_vm() {
    [ "$vm_done" = 1 ] && return 0
    vm_done=1
    local rc=0
    wait "$vm_pid" || rc=$?
    step "vcan rigs: log of the background step (exit $rc)"
    cat "$vm_log"
    rm -f "$vm_log"
    return "$rc"
}
# A failing foreground step still shows (and ends) the VM step.
trap 'if [ "$vm_done" = 0 ]; then { kill -- "-$vm_pid" || kill "$vm_pid"; } 2>/dev/null || true; finish_vm || true; fi' EXIT

# ---- host-only suites, in the foreground ---------------------------------
step "end-to-end: backend over TLS + dbus-daemon + secureev-otad + secureevctl (the demo)"
SECUREEV_DEMO_PROFILE=debug bash scripts/demo.sh

step "fuzz targets compile"
(cd fuzz && cargo check --bins --quiet)

step "systemd units, D-Bus policy (real dbus-daemon), exposure scores"
bash systemd/tests/run.sh

step "Yocto layer: crates include up to date, oelint-adv"
bash yocto-layer/tests/run.sh

step "waiting for the vcan rigs"
finish_vm
trap - EXIT

step "all steps passed"

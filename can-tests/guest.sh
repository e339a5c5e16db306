#!/usr/bin/env bash
# Runs inside the test VM (or directly on a host that has vcan), as root.
# Called by run-vm.sh as: guest.sh OUT_DIR
#   OUT_DIR/tests.list   test executables to run, one path per line
#   OUT_DIR/bench.list   benchmark executables (optional)
# Writes OUT_DIR/logs/*.log, OUT_DIR/results.tsv (name, exit code, seconds),
# OUT_DIR/bench.md and finally the marker OUT_DIR/guest-done.
set -uo pipefail

out="$1"
mkdir -p "$out/logs"
# SECUREEV_BIN_DIR, SECUREEV_CAN_PYTHON, SECUREEV_BENCH_MIB (written by run-vm.sh).
# shellcheck source=/dev/null
[ -r "$out/guest-env.sh" ] && . "$out/guest-env.sh"
date +%s.%N > "$out/guest-start"
exec > >(tee -a "$out/logs/guest.log") 2>&1

echo "guest: kernel $(uname -r), $(nproc) cpus, uptime $(cut -d' ' -f1 /proc/uptime) s"
fail() { echo "guest: FATAL: $*"; echo "fatal: $*" > "$out/guest-fatal"; exit 1; }

for m in can can-raw can-isotp vcan; do
    modprobe "$m" || fail "modprobe $m"
done
# vcan0: classic CAN (MTU 16); vcan1: CAN FD (MTU 72).
for spec in vcan0:16 vcan1:72; do
    dev="${spec%%:*}" mtu="${spec##*:}"
    ip link show "$dev" >/dev/null 2>&1 || ip link add dev "$dev" type vcan || fail "ip link add $dev"
    ip link set "$dev" down
    ip link set "$dev" mtu "$mtu" || fail "mtu $mtu on $dev"
    ip link set "$dev" up || fail "ip link set $dev up"
done
ip -d link show vcan0 | head -2
ip -d link show vcan1 | head -2
echo "guest: can-isotp max PDU: $(cat /sys/module/can_isotp/parameters/max_pdu_size 2>/dev/null || echo 'built-in (no max_pdu_size parameter)')"

# Core dumps of anything that crashes go to OUT_DIR/cores (run-vm.sh lists
# them; `gdb <exe> <core>` on the host).
# Only inside the VM: on a host, core_pattern is the machine's setting.
mkdir -p "$out/cores"
if [ "${SECUREEV_IN_VM:-0}" = 1 ]; then
    ulimit -c unlimited
    echo "$out/cores/core.%e.%p" > /proc/sys/kernel/core_pattern || echo "guest: cannot set core_pattern"
fi

# Executables into the guest's RAM: 9p reads under emulation are slow, and a
# process start would page the binary in over 9p again.
if [ -d "$out/exe" ] && [ "${SECUREEV_IN_VM:-0}" = 1 ]; then
    g=/tmp/secureev-guest
    mkdir -p "$g/exe" "$g/bin"
    cp "$out"/exe/* "$g/exe/" 2>/dev/null || true
    cp "$out"/bin/* "$g/bin/" 2>/dev/null || true
    sed "s#^$out/exe/#$g/exe/#" "$out/tests.list" > "$g/tests.list"
    sed "s#^$out/exe/#$g/exe/#" "$out/bench.list" > "$g/bench.list"
    export SECUREEV_BIN_DIR="$g/bin"
    tests_list="$g/tests.list" bench_list="$g/bench.list"
    echo "guest: executables copied to $g ($(du -sh "$g" | cut -f1)) at uptime $(cut -d' ' -f1 /proc/uptime) s"
else
    tests_list="$out/tests.list" bench_list="$out/bench.list"
fi
# The rigs' deadlines are written for a host; everything here is emulated.
export SECUREEV_TEST_TIME_SCALE="${SECUREEV_TEST_TIME_SCALE:-5}"

export SECUREEV_VCAN=vcan0 SECUREEV_VCAN_FD=vcan1 SECUREEV_REQUIRE_VCAN=1
export RUST_BACKTRACE=1

: > "$out/results.tsv"
while IFS= read -r exe; do
    [ -n "$exe" ] || continue
    name="$(basename "$exe")"
    echo "guest: running $name"
    t0=$(date +%s.%N)
    timeout --kill-after=10 "${SECUREEV_TEST_TIMEOUT:-900}" "$exe" --test-threads=2 \
        </dev/null > "$out/logs/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >> "$out/results.tsv"
    grep -E '^test result:|FAILED|panicked' "$out/logs/$name.log" | head -20
    echo "guest: $name exit $rc in ${secs}s"
done < "$tests_list"

if [ -s "$bench_list" ]; then
    while IFS= read -r exe; do
        [ -n "$exe" ] || continue
        name="$(basename "$exe")"
        echo "guest: benchmark $name"
        timeout --kill-after=10 900 "$exe" --iface vcan0 --fd-iface vcan1 --mib "${SECUREEV_BENCH_MIB:-0.5}" --markdown "$out/bench-$name.md" \
            </dev/null > "$out/logs/$name.log" 2>&1
        rc=$?
        printf '%s\t%s\t-\n' "bench:$name" "$rc" >> "$out/results.tsv"
        cat "$out/logs/$name.log"
    done < "$bench_list"
fi

# The demo (real secureev-server, dbus-daemon, secureev-otad, secureevctl) with
# its secondary ECU on vcan0 instead of DoIP.
if [ "${SECUREEV_VM_DEMO:-0}" = 1 ] && [ -n "${SECUREEV_WORKSPACE:-}" ]; then
    echo "guest: demo with the secondary on vcan0"
    t0=$(date +%s.%N)
    SECUREEV_DEMO_BIN="$SECUREEV_BIN_DIR" SECUREEV_DEMO_SECONDARY=can SECUREEV_DEMO_CAN_IFACE=vcan0 \
        SECUREEV_DEMO_IMAGE_MIB=2 timeout --kill-after=10 900 bash "$SECUREEV_WORKSPACE/scripts/demo.sh" \
        </dev/null > "$out/logs/demo-can.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "demo:can" "$rc" "$secs" >> "$out/results.tsv"
    grep -E 'demo complete|^demo: |assignment ' "$out/logs/demo-can.log" | head -10
    echo "guest: demo exit $rc in ${secs}s"
fi

echo "guest: done, uptime $(cut -d' ' -f1 /proc/uptime) s"
touch "$out/guest-done"

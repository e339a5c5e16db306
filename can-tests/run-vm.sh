#!/usr/bin/env bash
# Runs the vcan rig tests of the CAN transport on a real kernel CAN stack.
#
#   bash can-tests/run-vm.sh            # from anywhere in the workspace
#
# On a host whose kernel has vcan (modprobe vcan works) the tests run directly.
# Otherwise (the dev/CI kernel has no CONFIG_CAN) it boots Debian's
# linux-image-amd64 under QEMU software emulation with virtme-ng, the host root
# shared read-only, and runs the same host-built test binaries inside with
# SECUREEV_REQUIRE_VCAN=1, so a missing vcan is a failure, never a skip.
#
# Installs what it needs when missing (apt: qemu-system-x86, linux-image-amd64,
# busybox-static, can-utils, python3-venv, iproute2, kmod; pip in a venv:
# virtme-ng, udsoncan, can-isotp). Exits non-zero if anything failed or did
# not run, and ends with the line "N passed, M failed".
#
# Environment:
#   SECUREEV_CAN_MODE=auto|vm|host   force the VM or the direct run (default auto)
#   SECUREEV_VM_KERNEL=/boot/vmlinuz-…  kernel to boot (default: newest in /boot)
#   SECUREEV_VM_TIMEOUT=2400         seconds for the whole VM run
#   SECUREEV_CAN_VENV=DIR            venv for virtme-ng (default target/can-vm-venv)
#   SECUREEV_CAN_OUT=DIR             where results go (default: a new temp dir)
#   SECUREEV_CAN_PACKAGES="secureev-can …"  packages whose tests run in the VM
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
here="$root/can-tests"

# Versions the runner was written against.
VIRTME_NG_VERSION=1.42
UDSONCAN_VERSION=1.26.1
CAN_ISOTP_VERSION=2.0.7

mode="${SECUREEV_CAN_MODE:-auto}"
vm_timeout="${SECUREEV_VM_TIMEOUT:-2400}"
venv="${SECUREEV_CAN_VENV:-$root/target/can-vm-venv}"
packages="${SECUREEV_CAN_PACKAGES:-secureev-can}"
out="${SECUREEV_CAN_OUT:-$(mktemp -d /tmp/secureev-can-vm.XXXXXX)}"
mkdir -p "$out"
rm -f "$out"/guest-* "$out"/results.tsv "$out"/bench.md

step() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'run-vm.sh: ERROR: %s\n' "$*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -q </dev/null >/dev/null || die "apt-get update failed"
        apt_updated=1
    fi
    echo "installing: $*"
    apt-get install -y -q "$@" </dev/null >/dev/null || die "apt-get install $* failed"
}
need_cmd() { # need_cmd COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

host_has_vcan() {
    [ "$(id -u)" = 0 ] || return 1
    command -v modprobe >/dev/null 2>&1 || return 1
    modprobe vcan 2>/dev/null && modprobe can-isotp 2>/dev/null && modprobe can-raw 2>/dev/null
}

# ---- 1. decide where to run ----
step "mode"
if [ "$mode" = auto ]; then
    if host_has_vcan; then mode=host; else mode=vm; fi
fi
echo "mode: $mode (host kernel $(uname -r))"

# ---- 2. tools ----
step "tools"
need_cmd ip iproute2
need_cmd modprobe kmod
need_cmd isotpsend can-utils
need_cmd python3 python3
if [ "$mode" = vm ]; then
    need_cmd qemu-system-x86_64 qemu-system-x86
    need_cmd busybox busybox-static
    ls /boot/vmlinuz-* >/dev/null 2>&1 || apt_install linux-image-amd64
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    if [ ! -x "$venv/bin/vng" ] || ! "$venv/bin/vng" --version 2>/dev/null | grep -q "$VIRTME_NG_VERSION"; then
        echo "creating $venv"
        python3 -m venv "$venv" || die "python3 -m venv failed"
        "$venv/bin/pip" install -q --disable-pip-version-check \
            "virtme-ng==$VIRTME_NG_VERSION" "udsoncan==$UDSONCAN_VERSION" \
            "can-isotp==$CAN_ISOTP_VERSION" </dev/null || die "pip install virtme-ng failed"
    fi
    "$venv/bin/vng" --version
fi

# ---- 3. build the test binaries once, on the host ----
step "build test binaries ($packages)"
pkg_args=()
for p in $packages; do pkg_args+=(-p "$p"); done
collect() { # JSON lines of cargo on stdin -> executables of test targets
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] == (sys.argv[1] == "test"):
        print(m["executable"])
' "$1"
}
cargo test --locked --no-run "${pkg_args[@]}" --message-format=json-render-diagnostics </dev/null \
    | collect test > "$out/tests.list" || die "cargo test --no-run failed"
cargo build --locked -p secureev-can --example isotp-bench --message-format=json-render-diagnostics </dev/null \
    | collect bin > "$out/bench.list" || die "building the benchmark failed"
expected=$(grep -c . "$out/tests.list" || true)
[ "$expected" -gt 0 ] || die "no test executables were built"
sed 's/^/  test: /' "$out/tests.list"
sed 's/^/  bench: /' "$out/bench.list"

# ---- 4. run ----
step "run ($mode)"
t0=$(date +%s.%N)
if [ "$mode" = host ]; then
    bash "$here/guest.sh" "$out" </dev/null || true
else
    kernel="${SECUREEV_VM_KERNEL:-$(ls -1 /boot/vmlinuz-* | sort -V | tail -1)}"
    [ -r "$kernel" ] || die "kernel $kernel not readable"
    echo "booting $kernel under QEMU TCG (no KVM), timeout ${vm_timeout}s"
    # Boot time: until the guest script writes its first file.
    (
        while [ ! -e "$out/guest-start" ]; do
            sleep 0.2
            [ -e "$out/vm-exited" ] && exit 0
        done
        t1=$(date +%s.%N)
        awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }' > "$out/boot-seconds"
        echo "VM booted in $(cat "$out/boot-seconds") s"
    ) &
    watcher=$!
    set +e
    PATH="$venv/bin:$PATH" timeout --kill-after=30 "$vm_timeout" \
        vng --disable-kvm --run "$kernel" --cpus 2 --memory 2G \
        --rwdir "$out" --exec "bash $here/guest.sh $out" \
        </dev/null > "$out/vm-console.log" 2>&1
    vm_rc=$?
    set -e
    touch "$out/vm-exited"
    wait "$watcher" 2>/dev/null || true
    echo "vng exited with $vm_rc"
    if [ "$vm_rc" = 124 ] || [ "$vm_rc" = 137 ]; then
        tail -40 "$out/vm-console.log" >&2
        die "VM run timed out after ${vm_timeout}s"
    fi
fi
t_end=$(date +%s.%N)
total=$(awk -v a="$t0" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')

# ---- 5. check that the tests ran and passed ----
step "results"
if [ ! -e "$out/guest-done" ]; then
    [ -e "$out/vm-console.log" ] && tail -60 "$out/vm-console.log" >&2
    [ -e "$out/guest-fatal" ] && cat "$out/guest-fatal" >&2
    die "the guest did not finish (no $out/guest-done marker)"
fi
passed=0 failed=0 problems=0 ok_lines=0
while IFS=$'\t' read -r name rc secs; do
    log="$out/logs/${name#bench:}.log"
    case "$name" in bench:*) log="$out/logs/bench.log" ;; esac
    if [[ "$name" != bench:* ]]; then
        n_ok=$(grep -c '^test result: ok' "$log" || true)
        ok_lines=$((ok_lines + n_ok))
        p=$(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
        f=$(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\2/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
        passed=$((passed + p))
        failed=$((failed + f))
        if grep -q 'SKIPPED' "$log"; then
            echo "  $name: a test skipped inside the rig" >&2
            problems=$((problems + 1))
        fi
    fi
    if [ "$rc" != 0 ]; then
        echo "  $name: exit code $rc" >&2
        grep -E 'panicked|FAILED|^---- ' "$log" | head -30 >&2 || true
        problems=$((problems + 1))
        [[ "$name" == bench:* ]] && failed=$((failed + 1))
    fi
    printf '  %-40s exit %s  %ss\n' "$name" "$rc" "$secs"
done < "$out/results.tsv"
ran=$(grep -vc '^bench:' "$out/results.tsv" || true)
if [ "$ran" -ne "$expected" ]; then
    echo "  only $ran of $expected test executables ran" >&2
    problems=$((problems + 1))
fi
if [ "$ok_lines" -lt "$expected" ]; then
    echo "  $ok_lines 'test result: ok' lines for $expected executables" >&2
    problems=$((problems + 1))
fi
[ "$passed" -gt 0 ] || { echo "  no test passed" >&2; problems=$((problems + 1)); }

[ -e "$out/bench.md" ] && { echo; cat "$out/bench.md"; }
echo
[ -e "$out/boot-seconds" ] && echo "VM boot time: $(cat "$out/boot-seconds") s"
echo "total run time: ${total} s (mode $mode); logs in $out"
if [ "$problems" -gt 0 ] && [ "$failed" -eq 0 ]; then
    failed=$problems
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$problems" -eq 0 ]

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
#   SECUREEV_CAN_TESTS="secureev-can secureev-can-tests:rig …"
#                                    test targets to run: PACKAGE (all its tests)
#                                    or PACKAGE:TEST (one tests/TEST.rs)
#   SECUREEV_CAN_BENCHES="secureev-can:isotp-bench …"  benchmark examples
#   SECUREEV_BENCH_MIB=0.5           MiB per benchmark run
#   SECUREEV_CAN_KEEP_EXE=1          keep the executable copies in the output dir
#   SECUREEV_VM_DEMO=1               also run scripts/demo.sh with its secondary
#                                    on vcan0 (0: skip)
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
# The vcan test targets: everything that needs a CAN bus, nothing else (the
# rest of the workspace runs on the host; here it would only be slower).
tests_spec="${SECUREEV_CAN_TESTS:-secureev-can secureev-secondary:vcan secureev-daemon:secondary_doip secureev-can-tests}"
benches_spec="${SECUREEV_CAN_BENCHES-secureev-can:isotp-bench secureev-can-tests:uds-flash-bench}"
out="${SECUREEV_CAN_OUT:-$(mktemp -d /tmp/secureev-can-vm.XXXXXX)}"
mkdir -p "$out"
rm -rf "$out"/guest-* "$out"/results.tsv "$out"/bench*.md "$out"/exe "$out"/bin "$out"/cores

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
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
if [ "$mode" = vm ]; then
    need_cmd qemu-system-x86_64 qemu-system-x86
    need_cmd busybox busybox-static
    ls /boot/vmlinuz-* >/dev/null 2>&1 || apt_install linux-image-amd64
fi
# One venv: virtme-ng (the VM runner) and the interop peers udsoncan and
# can-isotp (run inside the VM, or directly on a host with vcan).
if [ ! -x "$venv/bin/vng" ] || ! "$venv/bin/vng" --version 2>/dev/null | grep -q "$VIRTME_NG_VERSION" \
    || ! "$venv/bin/python" -c 'import udsoncan, isotp' 2>/dev/null; then
    echo "creating $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "virtme-ng==$VIRTME_NG_VERSION" "udsoncan==$UDSONCAN_VERSION" \
        "can-isotp==$CAN_ISOTP_VERSION" </dev/null || die "pip install virtme-ng udsoncan can-isotp failed"
fi
"$venv/bin/vng" --version
"$venv/bin/python" -c 'import udsoncan, isotp; print("udsoncan", udsoncan.__version__ if hasattr(udsoncan, "__version__") else "?", "can-isotp", isotp.__version__ if hasattr(isotp, "__version__") else "?")'

# ---- 3. build the test binaries once, on the host ----
# `cargo test --workspace --no-run` reuses the build of the host test run (same
# profile, same features) and lists every test executable and binary as JSON;
# the spec picks the vcan ones. The benchmarks are examples of their packages.
step "build test binaries ($tests_spec)"
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics </dev/null \
    > "$out/cargo-test.json" || die "cargo test --workspace --no-run failed"
bench_args=()
for b in $benches_spec; do bench_args+=(-p "${b%%:*}" --example "${b##*:}"); done
: > "$out/cargo-bench.json"
if [ "${#bench_args[@]}" -gt 0 ]; then
    cargo build --locked "${bench_args[@]}" --message-format=json-render-diagnostics </dev/null \
        > "$out/cargo-bench.json" || die "building the benchmarks failed"
fi
python3 "$here/select-artifacts.py" "$out/cargo-test.json" "$tests_spec" test > "$out/tests.list" \
    || die "selecting test executables failed"
python3 "$here/select-artifacts.py" "$out/cargo-bench.json" "$benches_spec" example > "$out/bench.list" \
    || die "selecting benchmarks failed"
python3 "$here/select-artifacts.py" "$out/cargo-test.json" "secureev-daemon:secureev-otad secureev-secondary:secureev-ecu secureev-server:secureev-server secureev-cli:secureevctl" bin \
    > "$out/bins.list" || die "the secureev-otad, secureev-ecu, secureev-server and secureevctl binaries were not built"
# Run copies: a build on the host while the VM runs (another cargo command)
# must not swap an executable under a running test. Without debug info (a
# fifth of the size: the guest reads every page over 9p under emulation);
# symbols stay, so backtraces still name functions. SECUREEV_CAN_KEEP_DEBUG=1
# keeps it.
copy_exe() { # copy_exe SRC DST
    if [ "${SECUREEV_CAN_KEEP_DEBUG:-0}" = 1 ] || ! command -v objcopy >/dev/null 2>&1; then
        cp "$1" "$2"
    else
        objcopy --strip-debug "$1" "$2" || cp "$1" "$2"
    fi
}
mkdir -p "$out/exe" "$out/bin"
for list in tests bench; do
    while IFS= read -r exe; do
        [ -n "$exe" ] || continue
        copy_exe "$exe" "$out/exe/$(basename "$exe")"
        echo "$out/exe/$(basename "$exe")"
    done < "$out/$list.list" > "$out/$list.copy"
    mv "$out/$list.copy" "$out/$list.list"
done
while IFS= read -r exe; do copy_exe "$exe" "$out/bin/$(basename "$exe")"; done < "$out/bins.list"
expected=$(grep -c . "$out/tests.list" || true)
[ "$expected" -gt 0 ] || die "no test executables were built"
sed 's/^/  test: /' "$out/tests.list"
sed 's/^/  bench: /' "$out/bench.list"
sed 's/^/  bin: /' "$out/bins.list"
# What the guest needs besides the lists (the VM gets no environment).
{
    printf 'export SECUREEV_BIN_DIR=%q\n' "$out/bin"
    printf 'export SECUREEV_CAN_PYTHON=%q\n' "$venv/bin/python"
    printf 'export SECUREEV_BENCH_MIB=%q\n' "${SECUREEV_BENCH_MIB:-0.5}"
    printf 'export SECUREEV_WORKSPACE=%q\n' "$root"
    printf 'export SECUREEV_VM_DEMO=%q\n' "${SECUREEV_VM_DEMO:-1}"
    if [ "$mode" = vm ]; then echo 'export SECUREEV_IN_VM=1'; else echo 'export SECUREEV_IN_VM=0'; fi
} > "$out/guest-env.sh"

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
        vng --disable-kvm --run "$kernel" --cpus 2 --memory 3G \
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
    case "$name" in demo:*) log="$out/logs/demo-${name#demo:}.log" ;; esac
    if [[ "$name" == demo:* ]]; then
        if [ "$rc" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    elif [[ "$name" != bench:* ]]; then
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
        grep -E 'panicked|FAILED|^---- |^demo: ' "$log" | head -30 >&2 || true
        problems=$((problems + 1))
        [[ "$name" == bench:* ]] && failed=$((failed + 1))
    fi
    printf '  %-40s exit %s  %ss\n' "$name" "$rc" "$secs"
done < "$out/results.tsv"
ran=$(grep -Evc '^(bench|demo):' "$out/results.tsv" || true)
if [ "$ran" -ne "$expected" ]; then
    echo "  only $ran of $expected test executables ran" >&2
    problems=$((problems + 1))
fi
if [ "$ok_lines" -lt "$expected" ]; then
    echo "  $ok_lines 'test result: ok' lines for $expected executables" >&2
    problems=$((problems + 1))
fi
[ "$passed" -gt 0 ] || { echo "  no test passed" >&2; problems=$((problems + 1)); }

for core in "$out"/cores/core.*; do
    [ -e "$core" ] || continue
    echo "  crash: core dump $core (gdb <executable> $core)" >&2
    problems=$((problems + 1))
done
for md in "$out"/bench-*.md; do [ -e "$md" ] && { echo; cat "$md"; }; done
echo
[ -e "$out/boot-seconds" ] && echo "VM boot time: $(cat "$out/boot-seconds") s"
echo "total run time: ${total} s (mode $mode); logs in $out"
if [ "$problems" -gt 0 ] && [ "$failed" -eq 0 ]; then
    failed=$problems
fi
# The executable copies (about 150 MiB) go unless something crashed (gdb
# needs them) or SECUREEV_CAN_KEEP_EXE=1; the logs stay.
if [ "${SECUREEV_CAN_KEEP_EXE:-0}" != 1 ] && ! ls "$out"/cores/core.* >/dev/null 2>&1; then
    rm -rf "$out/exe" "$out/bin"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$problems" -eq 0 ]

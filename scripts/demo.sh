#!/usr/bin/env bash
# SecureEV-OTA demo: one complete, verified over-the-air update on loopback.
#
#   backend (secureev-server, TLS 1.3, fresh dev CA and keys)
#     -> Image repository publishes a head-unit image (offline-signed targets)
#     -> Director assigns it to the vehicle
#   vehicle (secureev-otad on a private dbus-daemon)
#     -> check-in, Uptane full verification, download, consent, install, report
#   UI (secureevctl over D-Bus): watch progress, consent, show ECUs
#   backend's view of the vehicle at the end.
#
# Everything runs in a temporary directory; nothing is installed system-wide
# except, when missing and running as root, the Debian packages dbus and curl.
# Environment:
#   SECUREEV_DEMO_KEEP=1            keep the temporary directory
#   SECUREEV_DEMO_PROFILE=debug     use the debug build (default release)
#   SECUREEV_DEMO_BIN=DIR           use the binaries in DIR, build nothing
#   SECUREEV_DEMO_IMAGE_MIB=16      size of the head-unit image
#   SECUREEV_DEMO_SECONDARY=auto|can|doip
#                                   how the secondary ECU is reached: UDS over
#                                   kernel ISO-TP on SECUREEV_DEMO_CAN_IFACE
#                                   (default vcan0), or DoIP on loopback; auto
#                                   (the default) takes CAN when that interface
#                                   is up and the kernel has CAN_ISOTP.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# wait_state STATE SECONDS: poll the daemon's State property over D-Bus.
wait_state() {
    local want="$1" state=""
    for _ in $(seq $(($2 * 5))); do
        state="$("${CTL[@]}" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
        [ "$state" = "$want" ] && return 0
        [ "$state" = error ] && [ "$want" != error ] && { "${CTL[@]}" status; die "daemon reports an error: $(tail -5 "$W/otad.log")"; }
        sleep 0.2
    done
    die "daemon still in state '$state' after $2 s (wanted '$want')"
}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

need_pkgs=()
command -v dbus-daemon >/dev/null || need_pkgs+=(dbus)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing ${need_pkgs[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    else
        die "missing: ${need_pkgs[*]} (install the Debian packages, or run as root)"
    fi
fi

# SECUREEV_DEMO_PROFILE=debug reuses the test build (CI runs the demo as its
# end-to-end test after `cargo test` built everything).
PROFILE="${SECUREEV_DEMO_PROFILE:-release}"
if [ -n "${SECUREEV_DEMO_BIN:-}" ]; then
    BIN="$SECUREEV_DEMO_BIN"
    say "using the binaries in $BIN"
else
    say "building secureev-server, secureev-otad, secureevctl, secureev-ecu ($PROFILE)"
    if [ "$PROFILE" = release ]; then
        cargo build --release --locked -q -p secureev-server -p secureev-daemon -p secureev-cli -p secureev-secondary
    else
        cargo build --locked -q -p secureev-server -p secureev-daemon -p secureev-cli -p secureev-secondary
    fi
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
fi

# The secondary's transport: CAN where the host has it, DoIP otherwise.
CAN_IFACE="${SECUREEV_DEMO_CAN_IFACE:-vcan0}"
SECONDARY="${SECUREEV_DEMO_SECONDARY:-auto}"
have_can() {
    ip link show "$CAN_IFACE" 2>/dev/null | grep -q ',UP' &&
        python3 -c 'import socket; socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_ISOTP).close()' 2>/dev/null
}
if [ "$SECONDARY" = auto ]; then
    if have_can; then SECONDARY=can; else SECONDARY=doip; fi
fi
case "$SECONDARY" in
    can) have_can || die "SECUREEV_DEMO_SECONDARY=can but $CAN_IFACE is not up or the kernel has no CAN_ISOTP" ;;
    doip) ;;
    *) die "SECUREEV_DEMO_SECONDARY must be auto, can or doip, not '$SECONDARY'" ;;
esac

W="$(mktemp -d /tmp/secureev-demo.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${SECUREEV_DEMO_KEEP:-0}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
APORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
URL="https://127.0.0.1:$PORT"    # vehicles
AURL="https://127.0.0.1:$APORT"  # operators (admin API, loopback only)
VIN=WSEV0DEM000000001
HU=HU-0001
HW=secureev-hu-demo

say "backend: init (dev CA, repository keys; Image root/targets and CA keys kept offline); vehicles on $URL, admin API on $AURL"
"$BIN/secureev-server" init --data-dir "$W/server" --offline-dir "$W/offline" \
    --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$APORT" >/dev/null
"$BIN/secureev-server" serve --data-dir "$W/server" >"$W/server.log" 2>&1 &
PIDS+=($!)
CA="$W/server/tls/ca.pem"
# The bootstrap operator's token (every role): operator side only, never
# given to a vehicle.
TOKEN="$(cat "$W/server/admin-token")"
for _ in $(seq 100); do
    curl -fsS --cacert "$CA" "$AURL/admin/openapi.json" -o /dev/null 2>/dev/null && break
    sleep 0.1
done
curl -fsS --cacert "$CA" "$AURL/admin/openapi.json" -o /dev/null || die "backend did not start: $(tail -5 "$W/server.log")"
S=("--server" "$AURL" "--data-dir" "$W/server")

say "vehicle: trusted initial roots of both repositories, configuration, keys"
mkdir -p "$W/vehicle/trust" "$W/vehicle/installed"
for repo in director image; do
    curl -fsS --cacert "$CA" -H "Authorization: Bearer $TOKEN" "$AURL/admin/$repo/root" \
        -o "$W/vehicle/trust/$repo-root.json"
done
cat >"$W/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$W/bus.sock</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
EOF
dbus-daemon --config-file="$W/bus.conf" --nofork --nopidfile >"$W/bus.log" 2>&1 &
PIDS+=($!)
BUS="unix:path=$W/bus.sock"
for _ in $(seq 50); do [ -S "$W/bus.sock" ] && break; sleep 0.1; done
if [ "$SECONDARY" = can ]; then
    VIA="kernel ISO-TP on $CAN_IFACE (0x7E0/0x7E8)"
else
    VIA="DoIP on loopback"
fi
say "secondary ECU: secureev-ecu (battery management) serving UDS over $VIA"
ECU=BMS-0042
ECUHW=secureev-bms-demo
ECUPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$W/ecu" "$W/vehicle/keys/secondaries"
chmod 700 "$W/vehicle/keys" "$W/ecu"
# The SecurityAccess secret is provisioned on both sides (never generated by
# the ECU agent).
python3 -c 'import secrets; print(secrets.token_hex(32))' >"$W/ecu/security-secret"
cp "$W/ecu/security-secret" "$W/vehicle/keys/secondaries/$ECU.secret"
chmod 600 "$W/ecu/security-secret" "$W/vehicle/keys/secondaries/$ECU.secret"
cat >"$W/ecu/ecu.toml" <<EOF
serial = "$ECU"
hardware_id = "$ECUHW"
verification = "partial"
state_dir = "$W/ecu"
security_secret_file = "$W/ecu/security-secret"
director_root = "$W/vehicle/trust/director-root.json"

[doip]
logical_address = 0x0E80

[can]
tx_id = 0x7E8
rx_id = 0x7E0
EOF
if [ "$SECONDARY" = can ]; then
    "$BIN/secureev-ecu" --config "$W/ecu/ecu.toml" --can-interface "$CAN_IFACE" >"$W/ecu.log" 2>&1 &
else
    "$BIN/secureev-ecu" --config "$W/ecu/ecu.toml" --doip "127.0.0.1:$ECUPORT" >"$W/ecu.log" 2>&1 &
fi
PIDS+=($!)
for _ in $(seq 100); do grep -q "serving" "$W/ecu.log" && break; sleep 0.1; done
grep -q "serving" "$W/ecu.log" || die "secureev-ecu did not start: $(tail -5 "$W/ecu.log")"
"$BIN/secureev-ecu" --config "$W/ecu/ecu.toml" --print-identity |
    python3 -c 'import json,sys; i=json.load(sys.stdin); print("  ECU", i["serial"], "key", i["did"])'

cat >"$W/vehicle/otad.toml" <<EOF
[backend]
url = "$URL"
ca_file = "$CA"

[vehicle]
vin = "$VIN"
primary_serial = "$HU"
hardware_id = "$HW"

[keys]
dir = "$W/vehicle/keys"

[trust]
director_root = "$W/vehicle/trust/director-root.json"
image_root = "$W/vehicle/trust/image-root.json"

[state]
dir = "$W/vehicle/state"
cache_dir = "$W/vehicle/cache"

[checkin]
interval_secs = 3600

[install]
policy = "consent"
installer = "file"
inhibit_dir = "$W/vehicle/inhibit"

[install.file]
path = "$W/vehicle/installed/head-unit.img"

[dbus]
bus = "$BUS"

[[secondary]]
serial = "$ECU"
hardware_id = "$ECUHW"
verification = "partial"
EOF
if [ "$SECONDARY" = can ]; then
    cat >>"$W/vehicle/otad.toml" <<EOF
transport = "can"

[secondary.can]
interface = "$CAN_IFACE"
tx_id = 0x7E0
rx_id = 0x7E8
EOF
else
    cat >>"$W/vehicle/otad.toml" <<EOF
transport = "doip"

[secondary.doip]
address = "127.0.0.1:$ECUPORT"
logical_address = 0x0E80
EOF
fi
"$BIN/secureev-otad" --config "$W/vehicle/otad.toml" --print-identity >"$W/identity.json"
python3 -c 'import json,sys; i=json.load(open(sys.argv[1])); print("  primary", i["primary_serial"], "key", i["did"])' "$W/identity.json"

say "vehicle: start secureev-otad (Type=notify daemon) on the private bus"
"$BIN/secureev-otad" --config "$W/vehicle/otad.toml" >"$W/otad.log" 2>&1 &
OTAD=$!
PIDS+=($OTAD)
CTL=("$BIN/secureevctl" --bus "$BUS")
for _ in $(seq 100); do "${CTL[@]}" status >/dev/null 2>&1 && break; sleep 0.1; done
"${CTL[@]}" status >/dev/null || die "daemon did not start: $(tail -5 "$W/otad.log")"
echo "  (its first check-in is refused: the backend does not know the vehicle yet)"
# One operation at a time: Provision during that check-in would be refused
# with Busy (3), so let it end first.
wait_state error 30

say "backend: a single-use enrollment credential for $VIN (expires in an hour, stored hashed)"
ENROLL="$("$BIN/secureev-server" enroll create --vin "$VIN" --quiet "${S[@]}")"
echo "  ${ENROLL:0:14}… (the vehicle gets this, never the operator token)"

say "UI: secureevctl provision enrolls the vehicle, its Primary and (read over $SECONDARY) its secondary"
"${CTL[@]}" provision "$URL" --token "$ENROLL" --wait
# Provisioning triggers a check-in; let it finish (nothing is assigned yet).
wait_state idle 30

say "backend: publish a ${SECUREEV_DEMO_IMAGE_MIB:-16} MiB head-unit image (targets signed offline) and assign it"
MIB="${SECUREEV_DEMO_IMAGE_MIB:-16}"
head -c $((MIB * 1024 * 1024)) /dev/urandom >"$W/hu-rootfs-2.0.img"
"$BIN/secureev-server" image add "$W/hu-rootfs-2.0.img" --name hu/rootfs-2.0.img --hardware-id "$HW" \
    --version 2.0 --release-counter 2 --release-notes "Faster boot; charging timer fixed." \
    --offline-dir "$W/offline" "${S[@]}" >/dev/null
"$BIN/secureev-server" assign --vin "$VIN" --ecu "$HU" --image hu/rootfs-2.0.img "${S[@]}" >/dev/null
echo "  hu/rootfs-2.0.img -> $HU (release counter 2)"
head -c $((512 * 1024)) /dev/urandom >"$W/bms-fw-1.1.bin"
"$BIN/secureev-server" image add "$W/bms-fw-1.1.bin" --name bms/fw-1.1.bin --hardware-id "$ECUHW" \
    --version 1.1 --release-counter 5 --encrypt --offline-dir "$W/offline" "${S[@]}" >/dev/null
"$BIN/secureev-server" assign --vin "$VIN" --ecu "$ECU" --image bms/fw-1.1.bin "${S[@]}" >/dev/null
echo "  bms/fw-1.1.bin -> $ECU (encrypted; the Director wraps its key for the ECU's X25519 key)"

say "UI: secureevctl check, with secureevctl watch showing live progress"
"${CTL[@]}" watch >"$W/watch.log" 2>&1 &
WATCH=$!
"${CTL[@]}" check --wait
wait_state awaiting-consent 60
"${CTL[@]}" status

say "UI: the driver consents to exactly the update shown (Install binds to its id)"
"${CTL[@]}" install --yes --wait
wait "$WATCH" 2>/dev/null || true
tail -n 3 "$W/watch.log" | sed 's/^/  watch: /'

say "result on the vehicle"
"${CTL[@]}" ecus
want="$(sha256sum "$W/hu-rootfs-2.0.img" | cut -d' ' -f1)"
got="$(sha256sum "$W/vehicle/installed/head-unit.img" | cut -d' ' -f1)"
[ "$want" = "$got" ] || die "installed image differs from the published one"
echo "  installed image sha256 $got matches the published image"
want="$(sha256sum "$W/bms-fw-1.1.bin" | cut -d' ' -f1)"
ok=no
for slot in "$W/ecu/slot-a.bin" "$W/ecu/slot-b.bin"; do
    [ -f "$slot" ] && [ "$(sha256sum "$slot" | cut -d' ' -f1)" = "$want" ] && ok="$(basename "$slot")"
done
[ "$ok" != no ] || die "the secondary's slots do not hold the published firmware: $(tail -5 "$W/ecu.log")"
echo "  $ECU decrypted and activated bms/fw-1.1.bin in $ok (sha256 matches the published plaintext)"
echo "  secureev-otad memory: $(grep -E 'VmHWM|VmRSS' /proc/$OTAD/status | tr -s ' \t' ' ' | paste -sd, -) (peak and now, for a ${MIB} MiB image)"

say "the backend's view of the vehicle (manifest received, assignment completed)"
"$BIN/secureev-server" vehicle show "$VIN" "${S[@]}"

say "check: the backend completed both assignments on the ECUs' own signed reports"
"$BIN/secureev-server" vehicle show "$VIN" "${S[@]}" >"$W/vehicle.json"
"$BIN/secureev-server" image list "${S[@]}" >"$W/images.json"
# The secondary reports the hash the Director signed for its target (for an
# encrypted image, that of the served ciphertext); the published record ties
# it to the firmware file through the signed plaintext hash.
python3 - "$W/vehicle.json" "$W/images.json" "$HU" hu/rootfs-2.0.img "$ECU" bms/fw-1.1.bin \
    "$(sha256sum "$W/bms-fw-1.1.bin" | cut -d' ' -f1)" <<'EOF' || die "the backend's view of the vehicle is not what was installed (see above)"
import json, sys
vehicle, images = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))["images"]
hu, hu_image, ecu, fw, fw_sha = sys.argv[3:8]
ok = True
def fail(msg):
    global ok
    ok = False
    print("  FAILED: " + msg, file=sys.stderr)
for serial, image in ((hu, hu_image), (ecu, fw)):
    status = [a["status"] for a in vehicle["assignments"] if a["ecu_serial"] == serial and a["image"] == image]
    print(f"  assignment {image} -> {serial}: {', '.join(status) or 'missing'}")
    if status != ["completed"]:
        fail(f"assignment {image} -> {serial} is {status or 'missing'}, not completed")
published = next((i for i in images if i["name"] == fw), None)
ecu_row = next((e for e in vehicle["ecus"] if e["serial"] == ecu), {})
installed = ecu_row.get("installed_sha256")
if published is None:
    fail(f"{fw} is not published")
else:
    plain = (published.get("encryption") or {}).get("plaintextHashes", {}).get("sha256")
    if (plain or published["sha256"]) != fw_sha:
        fail(f"the published {fw} is not the firmware file {fw_sha}")
    if installed not in {published["sha256"], plain} - {None}:
        fail(f"{ecu} reports sha256 {installed}, not the published {fw} ({published['sha256']})")
    else:
        what = "encrypted image, plaintext " + plain[:16] + "… = the firmware file" if plain else "the firmware file"
        print(f"  {ecu} reports {ecu_row.get('installed_name')} installed, sha256 {installed[:16]}… (the published {what})")
sys.exit(0 if ok else 1)
EOF
say "check: the enrollment credential was single-use; the audit trail verifies"
"${CTL[@]}" provision "$URL" --token "$ENROLL" --wait >/dev/null 2>&1 && die "the enrollment credential was accepted twice"
echo "  a second provisioning with the same credential is refused"
"$BIN/secureev-server" audit verify --data-dir "$W/server" | sed 's/^/  /'

echo
echo "demo complete: verified updates installed on the head unit and forwarded to a secondary ECU over $VIA, reported."

#!/usr/bin/env bash
# Tests of the systemd units, sysusers/tmpfiles entries, D-Bus activation file
# and D-Bus policy in systemd/. CI runs it as root (it creates test users and
# switches uid); it is self-contained and offline apart from apt-get when a tool
# is missing.
#
#   bash systemd/tests/run.sh
#
# What it checks:
#   1. systemd-analyze verify of both units, against a temporary root that holds
#      stub binaries at the ExecStart paths (verify insists they exist) and a copy
#      of the host's unit directory (for dbus.socket, multi-user.target, ...).
#   2. systemd-analyze security --offline=true exposure <= MAX_EXPOSURE for
#      secureev-otad.service and secureev-ecu@vcan0.service.
#   3. sysusers.d and tmpfiles.d entries applied to the temporary root.
#   4. Consistency of unit, activation file and policy (name, user, unit).
#   5. dbus/io.secureev.Ota1.xml: well-formed (xmllint), gdbus-codegen
#      generates C from it and that C compiles against GIO.
#   6. The policy under a real dbus-daemon with a system-bus configuration
#      (deny by default, like system.conf) that includes our policy file:
#      who may own io.secureev.Ota1 and who may call, read properties and
#      introspect it.
# sd_notify/watchdog behaviour of the daemon is tested with the daemon (daemon/).
#
# Exit status is non-zero if any check fails; the last line is "N passed, M failed".

set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TREE="$(cd "$HERE/.." && pwd)"          # systemd/ (mirrors install paths)
UNITDIR="$TREE/usr/lib/systemd/system"
POLICY="$TREE/usr/share/dbus-1/system.d/io.secureev.Ota1.conf"
ACTIVATION="$TREE/usr/share/dbus-1/system-services/io.secureev.Ota1.service"
MAX_EXPOSURE="${MAX_EXPOSURE:-2.0}"

BUS_NAME="io.secureev.Ota1"
DAEMON_USER="secureev"
UI_GROUP="secureev-ui"
TEST_UI_USER="secureev-test-ui"        # member of $UI_GROUP
TEST_OTHER_USER="secureev-test-other"  # member of nothing of ours

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok      %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAILED  %s\n' "$*"; }
note() { printf '\n== %s\n' "$*"; }
# check "description" command...: pass if the command succeeds.
check() { local d="$1"; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }

WORK="$(mktemp -d /tmp/secureev-systemd-test.XXXXXX)"
chmod 0755 "$WORK"   # test users must reach the bus socket and the probe
CREATED_USERS=()
CREATED_GROUPS=()
BUS_PID=""
OWNER_PID=""

cleanup() {
    [ -n "$OWNER_PID" ] && kill "$OWNER_PID" 2>/dev/null && wait "$OWNER_PID" 2>/dev/null
    [ -n "$BUS_PID" ] && kill "$BUS_PID" 2>/dev/null && wait "$BUS_PID" 2>/dev/null
    local u g
    for u in "${CREATED_USERS[@]}"; do userdel "$u" 2>/dev/null; done
    for g in "${CREATED_GROUPS[@]}"; do groupdel "$g" 2>/dev/null; done
    [ -n "${KEEP_WORK:-}" ] && { echo "kept $WORK"; return; }
    rm -rf "$WORK"
}
trap cleanup EXIT

# --------------------------------------------------------------------------
note "prerequisites"

IS_ROOT=0; [ "$(id -u)" = 0 ] && IS_ROOT=1

# A python3 with PyGObject: the system one (/usr/bin/python3), not a pyenv or
# venv interpreter, since python3-gi is a Debian package.
find_python_gi() {
    local py
    for py in /usr/bin/python3 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
           "$py" -c 'import gi; gi.require_version("Gio", "2.0"); from gi.repository import Gio' 2>/dev/null; then
            command -v "$py"; return 0
        fi
    done
    return 1
}

need_pkgs=()
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v dbus-daemon >/dev/null || need_pkgs+=(dbus-daemon)
command -v setpriv >/dev/null || need_pkgs+=(util-linux)
command -v useradd >/dev/null || need_pkgs+=(passwd)
find_python_gi >/dev/null || need_pkgs+=(python3 python3-gi gir1.2-glib-2.0)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$IS_ROOT" = 1 ] && command -v apt-get >/dev/null; then
        echo "installing: ${need_pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    fi
fi
check "systemd-analyze available" command -v systemd-analyze
check "dbus-daemon available" command -v dbus-daemon
PY="$(find_python_gi || true)"
check "python3 with PyGObject available" test -n "$PY"
systemd-analyze --version | head -1
dbus-daemon --version | head -1

# --------------------------------------------------------------------------
note "systemd-analyze verify (temporary root with stub binaries)"

ROOT="$WORK/root"
mkdir -p "$ROOT/usr/lib/systemd/system" "$ROOT/usr/bin" "$ROOT/etc"
# Host units first, so dependencies such as dbus.socket and sysinit.target
# resolve; then ours on top.
cp -a /usr/lib/systemd/system/. "$ROOT/usr/lib/systemd/system/" 2>/dev/null || true
if [ ! -e "$ROOT/usr/lib/systemd/system/dbus.socket" ]; then
    printf '[Unit]\nDescription=D-Bus socket (stub for verify)\n[Socket]\nListenStream=/run/dbus/system_bus_socket\n' \
        > "$ROOT/usr/lib/systemd/system/dbus.socket"
fi
cp "$UNITDIR"/*.service "$ROOT/usr/lib/systemd/system/"
# verify checks that each ExecStart= binary exists and is executable. The real
# binaries come from the Rust workspace; a stub keeps this test independent of
# a build. The path is taken from the unit, so a typo in ExecStart= still fails.
for unit in "$UNITDIR"/*.service; do
    sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | while read -r bin; do
        mkdir -p "$ROOT$(dirname "$bin")"
        printf '#!/bin/sh\nexit 0\n' > "$ROOT$bin"
        chmod 0755 "$ROOT$bin"
    done
done

verify_unit() {
    local unit="$1" out rc
    # --recursive-errors=no: only warnings about our unit fail the test, not
    # quirks of the host's units it depends on.
    out="$(systemd-analyze verify --man=no --generators=no --recursive-errors=no \
              --root="$ROOT" "$unit" 2>&1)"; rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /'
    # Any diagnostic that names our unit is a failure, even if the exit
    # status is 0 (systemd-analyze only warns about unknown keys).
    [ "$rc" = 0 ] && ! printf '%s\n' "$out" | grep -q "${unit%%@*}"
}
check "verify secureev-otad.service" verify_unit secureev-otad.service
check "verify secureev-ecu@vcan0.service" verify_unit secureev-ecu@vcan0.service

# A broken copy must fail, otherwise the checks above prove nothing.
sed 's/^ExecStart=.*/ExecStart=\/usr\/bin\/secureev-does-not-exist/' \
    "$UNITDIR/secureev-otad.service" > "$ROOT/usr/lib/systemd/system/secureev-otad-broken.service"
check "verify rejects a unit whose ExecStart binary is missing" \
    bash -c "! systemd-analyze verify --man=no --generators=no --recursive-errors=no --root='$ROOT' secureev-otad-broken.service >/dev/null 2>&1"
rm -f "$ROOT/usr/lib/systemd/system/secureev-otad-broken.service"

# --------------------------------------------------------------------------
note "exposure (systemd-analyze security --offline=true, limit $MAX_EXPOSURE)"

exposure_of() {
    # Prints the overall exposure level, e.g. 1.3
    systemd-analyze security --offline=true --root="$ROOT" "$1" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
for unit in secureev-otad.service secureev-ecu@vcan0.service; do
    score="$(exposure_of "$unit")"
    if [ -z "$score" ]; then
        fail "exposure of $unit could not be measured"
    elif awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
        pass "exposure of $unit is $score (<= $MAX_EXPOSURE)"
    else
        fail "exposure of $unit is $score (> $MAX_EXPOSURE)"
        systemd-analyze security --offline=true --root="$ROOT" "$unit" 2>&1 | grep '✗' | sed 's/^/    /'
    fi
done

# --------------------------------------------------------------------------
note "sysusers.d and tmpfiles.d in the temporary root"

: > "$ROOT/etc/passwd"; : > "$ROOT/etc/group"; : > "$ROOT/etc/shadow"; : > "$ROOT/etc/gshadow"
check "systemd-sysusers accepts our entries" \
    systemd-sysusers --root="$ROOT" "$TREE"/usr/lib/sysusers.d/*.conf
for u in secureev secureev-ecu; do
    check "sysusers creates system user $u" grep -q "^$u:" "$ROOT/etc/passwd"
done
check "sysusers creates group $UI_GROUP" grep -q "^$UI_GROUP:" "$ROOT/etc/group"
check "systemd-tmpfiles accepts our entries" \
    systemd-tmpfiles --root="$ROOT" --create "$TREE"/usr/lib/tmpfiles.d/*.conf
secureev_gid="$(awk -F: '$1=="secureev"{print $3}' "$ROOT/etc/group")"
check "/etc/secureev is 0750 root:secureev" \
    test "$(stat -c '%a %u %g' "$ROOT/etc/secureev" 2>/dev/null)" = "750 0 $secureev_gid"

# --------------------------------------------------------------------------
note "consistency of unit, activation file and policy"

ini_value() { sed -n "s/^$2=//p" "$1" | tail -1; }
OTAD="$UNITDIR/secureev-otad.service"
check "unit BusName= is $BUS_NAME" test "$(ini_value "$OTAD" BusName)" = "$BUS_NAME"
check "activation Name= matches the unit's BusName=" \
    test "$(ini_value "$ACTIVATION" Name)" = "$(ini_value "$OTAD" BusName)"
check "activation SystemdService= is secureev-otad.service" \
    test "$(ini_value "$ACTIVATION" SystemdService)" = "secureev-otad.service"
check "activation User= matches the unit's User=" \
    test "$(ini_value "$ACTIVATION" User)" = "$(ini_value "$OTAD" User)"
check "activation Exec=/bin/false (dbus never starts the binary itself)" \
    test "$(ini_value "$ACTIVATION" Exec)" = "/bin/false"
check "policy is well-formed XML" "${PY:-python3}" -c \
    'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' "$POLICY"
check "policy lets exactly one user own the name, the unit's User=" \
    test "$("${PY:-python3}" - "$POLICY" <<'EOF'
import sys, xml.etree.ElementTree as ET
owners = [p.get("user") for p in ET.parse(sys.argv[1]).getroot().iter("policy")
          if any(a.get("own") for a in p.iter("allow"))]
print(",".join(str(o) for o in owners))
EOF
)" = "$(ini_value "$OTAD" User)"

# The daemon's built-in defaults (daemon/src/config.rs) must lie where the
# unit lets it write and where the packaging puts the trust anchors.
CONFIG_RS="$TREE/../daemon/src/config.rs"
const_of() { sed -n "s/^pub const $1: &str = \"\(.*\)\";/\1/p" "$CONFIG_RS"; }
if [ -f "$CONFIG_RS" ]; then
    for c in DEFAULT_KEYS_DIR DEFAULT_STATE_DIR DEFAULT_INSTALL_FILE_PATH; do
        v="$(const_of "$c")"
        check "daemon $c ($v) is inside StateDirectory=/var/lib/$(ini_value "$OTAD" StateDirectory)" \
            bash -c "[[ '$v' == /var/lib/$(ini_value "$OTAD" StateDirectory)/* ]]"
    done
    v="$(const_of DEFAULT_CACHE_DIR)"
    check "daemon DEFAULT_CACHE_DIR ($v) is CacheDirectory=" \
        test "$v" = "/var/cache/$(ini_value "$OTAD" CacheDirectory)"
    v="$(const_of DEFAULT_CONFIG_PATH)"
    check "daemon DEFAULT_CONFIG_PATH ($v) is inside ConfigurationDirectory=" \
        test "$v" = "/etc/$(ini_value "$OTAD" ConfigurationDirectory)/otad.toml"
    for c in DEFAULT_DIRECTOR_ROOT DEFAULT_IMAGE_ROOT; do
        v="$(const_of "$c")"
        check "daemon $c ($v) is below /etc/secureev/trust (tmpfiles.d, secureev-ota-conf)" \
            bash -c "[[ '$v' == /etc/secureev/trust/*.json ]]"
    done
elif [ ! -d "$TREE/../daemon" ]; then
    # The daemon crate has not landed yet: nothing to compare against.
    echo "note    no daemon/ crate yet: defaults check not applicable"
else
    fail "daemon/src/config.rs not found: update the defaults check in systemd/tests/run.sh"
fi

# --------------------------------------------------------------------------
note "interface XML for UI teams (dbus/io.secureev.Ota1.xml): xmllint, gdbus-codegen, compiled"

IFACE_XML="$TREE/../dbus/io.secureev.Ota1.xml"
xml_pkgs=()
command -v xmllint >/dev/null || xml_pkgs+=(libxml2-utils)
command -v gdbus-codegen >/dev/null || xml_pkgs+=(libglib2.0-dev-bin)
command -v cc >/dev/null || xml_pkgs+=(gcc libc6-dev)
command -v pkg-config >/dev/null || xml_pkgs+=(pkg-config)
pkg-config --exists gio-2.0 2>/dev/null || xml_pkgs+=(libglib2.0-dev)
if [ "${#xml_pkgs[@]}" -gt 0 ] && [ "$IS_ROOT" = 1 ] && command -v apt-get >/dev/null; then
    echo "installing: ${xml_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends "${xml_pkgs[@]}" ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${xml_pkgs[@]}"; }; } >/dev/null
fi
if [ ! -f "$IFACE_XML" ]; then
    fail "dbus/io.secureev.Ota1.xml not found"
else
    check "interface XML is well-formed (xmllint --noout)" xmllint --noout "$IFACE_XML"
    GEN="$WORK/codegen"; mkdir -p "$GEN"
    check "gdbus-codegen generates C from the interface XML" \
        gdbus-codegen --interface-prefix io.secureev. --c-namespace SecureEv \
            --generate-c-code "$GEN/ota1" "$IFACE_XML"
    check "the generated C compiles (-Wall -Werror) against GIO" bash -c \
        "cc -c -Wall -Werror \$(pkg-config --cflags gio-2.0) '$GEN/ota1.c' -o '$GEN/ota1.o'"
    # A broken copy must fail, so the checks above can fail.
    sed 's/<node>/<node><!-- a -- b -->/' "$IFACE_XML" > "$GEN/broken.xml"
    check "xmllint rejects '--' inside a comment (the old bug)" \
        bash -c "! xmllint --noout '$GEN/broken.xml' 2>/dev/null"
fi

# --------------------------------------------------------------------------
note "D-Bus policy under a real dbus-daemon (system-bus configuration)"

if [ "$IS_ROOT" != 1 ]; then
    fail "D-Bus policy tests need root (test users, uid switching); run as root as CI does"
elif [ -z "$PY" ]; then
    fail "D-Bus policy tests need python3-gi"
else
    ensure_group() {
        getent group "$1" >/dev/null && return 0
        groupadd --system "$1" && CREATED_GROUPS+=("$1")
    }
    ensure_user() { # name [supplementary group]
        if ! getent passwd "$1" >/dev/null; then
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$1" && CREATED_USERS+=("$1")
            # --user-group created a group of the same name; userdel removes it.
        fi
        [ -n "${2:-}" ] && usermod -a -G "$2" "$1"
        return 0
    }
    ensure_group "$UI_GROUP"
    ensure_user "$DAEMON_USER"
    ensure_user "$TEST_UI_USER" "$UI_GROUP"
    ensure_user "$TEST_OTHER_USER"
    check "test user $TEST_UI_USER is in $UI_GROUP" \
        bash -c "id -nG '$TEST_UI_USER' | tr ' ' '\n' | grep -qx '$UI_GROUP'"
    check "test user $TEST_OTHER_USER is not in $UI_GROUP" \
        bash -c "! id -nG '$TEST_OTHER_USER' | tr ' ' '\n' | grep -qx '$UI_GROUP'"

    # The system bus configuration: the default policy of dbus's system.conf
    # (deny own and method calls; allow signals, requested replies and the
    # bus driver), a socket in $WORK, our activation file in a service
    # directory, and our policy file included as system.d would include it.
    mkdir -p "$WORK/services"
    cp "$ACTIVATION" "$WORK/services/"
    cp "$HERE/dbus_probe.py" "$WORK/probe.py"; chmod 0755 "$WORK/probe.py"
    SOCK="$WORK/system_bus_socket"
    ADDR="unix:path=$SOCK"
    cat > "$WORK/system.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>$ADDR</listen>
  <servicedir>$WORK/services</servicedir>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <include>$POLICY</include>
</busconfig>
EOF
    dbus-daemon --config-file="$WORK/system.conf" --nofork --nopidfile --nosyslog \
        >"$WORK/bus.log" 2>&1 &
    BUS_PID=$!
    for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
    if ! check "dbus-daemon starts with our policy included" test -S "$SOCK"; then
        sed 's/^/    /' "$WORK/bus.log"
    fi

    # as USER cmd...: run the probe as USER with that user's groups.
    as() {
        local user="$1"; shift
        if [ "$user" = root ]; then
            "$PY" "$WORK/probe.py" "$@"
        else
            setpriv --reuid="$user" --regid="$user" --init-groups \
                --inh-caps=-all --bounding-set=-all "$PY" "$WORK/probe.py" "$@"
        fi
    }
    expect() { # expect allowed|denied description user probe-args...
        local want="$1" desc="$2" user="$3"; shift 3
        local rc; as "$user" "$@" >"$WORK/probe.out" 2>&1; rc=$?
        case "$want:$rc" in
            allowed:0|denied:3) pass "$desc" ;;
            *) fail "$desc (probe exit $rc, wanted $want)"; sed 's/^/    /' "$WORK/probe.out" ;;
        esac
    }

    check "activation file is accepted (name listed as activatable)" bash -c \
        "dbus-send --bus='$ADDR' --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
         org.freedesktop.DBus.ListActivatableNames | grep -q '\"$BUS_NAME\"'"

    # Ownership, before the legitimate owner holds the name (so a refusal is
    # the policy, not "already owned").
    expect denied "$TEST_OTHER_USER cannot own $BUS_NAME" "$TEST_OTHER_USER" own "$ADDR"
    expect denied "$UI_GROUP member cannot own $BUS_NAME" "$TEST_UI_USER" own "$ADDR"
    expect denied "root cannot own $BUS_NAME" root own "$ADDR"

    # The legitimate owner.
    # Started directly, not through as(): $! must be the probe itself so that
    # cleanup's kill reaches it (a backgrounded function is a subshell).
    setpriv --reuid="$DAEMON_USER" --regid="$DAEMON_USER" --init-groups \
        --inh-caps=-all --bounding-set=-all \
        "$PY" "$WORK/probe.py" serve "$ADDR" >"$WORK/owner.log" 2>&1 &
    OWNER_PID=$!
    for _ in $(seq 50); do grep -qx 'owned\|denied' "$WORK/owner.log" && break; sleep 0.1; done
    if ! check "$DAEMON_USER can own $BUS_NAME and export its object" \
            grep -qx owned "$WORK/owner.log"; then
        sed 's/^/    /' "$WORK/owner.log"
    fi

    # The UI group.
    expect allowed "$UI_GROUP member can call io.secureev.Ota1.Ping" "$TEST_UI_USER" call "$ADDR"
    expect allowed "$UI_GROUP member can read a property (Properties.Get)" "$TEST_UI_USER" get "$ADDR"
    expect allowed "$UI_GROUP member can read all properties (Properties.GetAll)" "$TEST_UI_USER" getall "$ADDR"
    expect allowed "$UI_GROUP member can introspect" "$TEST_UI_USER" introspect "$ADDR"
    expect denied "$UI_GROUP member cannot use other interfaces (org.freedesktop.DBus.Peer)" \
        "$TEST_UI_USER" call "$ADDR" org.freedesktop.DBus.Peer Ping

    # Everyone else.
    expect denied "$TEST_OTHER_USER cannot call io.secureev.Ota1.Ping" "$TEST_OTHER_USER" call "$ADDR"
    expect denied "$TEST_OTHER_USER cannot read properties" "$TEST_OTHER_USER" get "$ADDR"
    expect denied "$TEST_OTHER_USER cannot introspect" "$TEST_OTHER_USER" introspect "$ADDR"

    # Signals: only the reader groups (and root) receive them. The listener
    # subscribes, says "ready", then the stand-in broadcasts one signal.
    expect_signal() { # expect_signal received|denied description user
        local want="$1" desc="$2" user="$3" rc=1
        if [ "$user" = root ]; then
            "$PY" "$WORK/probe.py" listen "$ADDR" >"$WORK/listen.out" 2>&1 &
        else
            setpriv --reuid="$user" --regid="$user" --init-groups \
                --inh-caps=-all --bounding-set=-all \
                "$PY" "$WORK/probe.py" listen "$ADDR" >"$WORK/listen.out" 2>&1 &
        fi
        local lpid=$!
        for _ in $(seq 50); do grep -q ready "$WORK/listen.out" && break; sleep 0.1; done
        "$PY" "$WORK/probe.py" call "$ADDR" io.secureev.Ota1 Emit >/dev/null 2>&1
        wait "$lpid"; rc=$?
        case "$want:$rc" in
            received:0|denied:3) pass "$desc" ;;
            *) fail "$desc (listener exit $rc, wanted $want)"; sed 's/^/    /' "$WORK/listen.out" ;;
        esac
    }
    expect_signal received "$UI_GROUP member receives the daemon's signals" "$TEST_UI_USER"
    expect_signal denied "$TEST_OTHER_USER cannot monitor the daemon's signals (receive_sender denied)" "$TEST_OTHER_USER"
    expect_signal received "root receives the daemon's signals" root

    # root: explicitly allowed to call (technician's secureevctl), see policy.
    expect allowed "root can call io.secureev.Ota1.Ping" root call "$ADDR"
    expect allowed "root can read a property" root get "$ADDR"
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

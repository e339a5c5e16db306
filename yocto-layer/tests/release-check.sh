#!/usr/bin/env bash
# Parse and check meta-secureev against a real OpenEmbedded release.
#
#   yocto-layer/tests/release-check.sh --bitbake DIR --oe-core DIR [options]
#   yocto-layer/tests/release-check.sh --poky DIR [options]
#
# Run by developers for every change to yocto-layer/ (and the results of each
# release the layer declares go into meta-secureev/README.md, "Tested with").
# CI does NOT run it: CI has no network and cannot fetch bitbake and
# openembedded-core checkouts, so this script takes existing checkouts by path
# and never fetches anything itself (BB_NO_NETWORK = "1"). CI runs
# yocto-layer/tests/run.sh (oelint-adv, crates include, static checks) instead.
#
# Options:
#   --bitbake DIR       bitbake checkout (the branch matching the release:
#                       2.16 for whinlatter, 2.18 for wrynose)
#   --oe-core DIR       openembedded-core checkout (release branch)
#   --poky DIR          instead of the two above: a poky checkout
#   --meta-oe DIR       meta-openembedded/meta-oe (optional): parses the vcan
#                       rig packagegroup (BBFILES_DYNAMIC) as well
#   --meta-rauc DIR     meta-rauc (optional): parses PACKAGECONFIG "rauc"
#   --layer DIR         any further layer to add (repeatable; e.g. a Rust layer)
#   --build DIR         build directory (default: a new one under /tmp, removed
#                       afterwards unless --keep)
#   --keep              keep the build directory
#   --no-check-layer    skip yocto-check-layer (it takes the longest)
#   --check-layer-only  run only yocto-check-layer (steps 1-3 skipped; each
#                       step parses from scratch, so this saves ~15 minutes)
#
# What it does, with the layer's recipes parsed by the real bitbake:
#   1. bitbake -p                      (with DISTRO_FEATURES "systemd secureev")
#   2. bitbake -e of every recipe of the layer, and from that output the
#      packaging tests (tests/check-bitbake-env.py): the expanded do_install
#      is run into a scratch image (SECUREEV_UI_GROUP reaching D-Bus policy,
#      sysusers.d and tmpfiles.d; the vcan rig shipping its ECU config and
#      first-boot provisioning; every installed file in some package; every
#      SYSTEMD_SERVICE installed), REQUIRED_DISTRO_FEATURES, EXCLUDE_FROM_WORLD,
#      with meta-rauc, PACKAGECONFIG "rauc" (D-Bus policy for RAUC, the boot
#      confirmation unit after boot-complete.target, rauc-mark-good
#      conflict), and the expanded do_update_crates task (run with the host's python3
#      instead of python3-native, which would have to be built first) must
#      write exactly the checked-in secureev-ota-crates.inc.
#   3. Refusals, each with bitbake -b <recipe> -c listtasks under a changed
#      configuration: a Rust older than SECUREEV_RUST_MIN skips the recipes
#      with the Rust message; INIT_MANAGER = "sysvinit" skips them for the
#      missing systemd feature; without the "secureev" feature the sanity
#      class warns and linux-yocto's SRC_URI is untouched.
#   4. yocto-check-layer --with-software-layer-signature-check (test_parse,
#      test_show_environment, test_world, test_signatures, ...).
# On a release the layer does not declare in LAYERSERIES_COMPAT it checks
# instead that bitbake refuses the layer, and that forcing the layer
# compatible still refuses the recipes with the Rust message.
#
# Host prerequisites (bitbake's own): python3 >= 3.9 (3.11 for the update_crates
# check: tomllib), git, cpio, chrpath, diffstat, gawk, the locale en_US.UTF-8
# (bitbake insists on that one), and a non-root user: bitbake refuses to run as
# root. On Debian:
#   apt-get install cpio chrpath diffstat gawk locales
#   sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen
#   runuser -u <user> -- yocto-layer/tests/release-check.sh ...
#
# Output: one "ok"/"FAILED" line per check, timings, and a last line
# "RESULT <release> <passed> passed, <failed> failed".
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
YOCTO="$(cd "$HERE/.." && pwd)"
REPO="$(cd "$YOCTO/.." && pwd)"
LAYER="$YOCTO/meta-secureev"

BITBAKE="" OECORE="" METAOE="" METARAUC="" BUILD="" KEEP=0 CHECK_LAYER=1 ONLY_CHECK_LAYER=0
EXTRA_LAYERS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bitbake) BITBAKE="$2"; shift 2 ;;
        --oe-core) OECORE="$2"; shift 2 ;;
        --poky) BITBAKE="$2/bitbake"; OECORE="$2"; shift 2 ;;
        --meta-oe) METAOE="$2"; shift 2 ;;
        --meta-rauc) METARAUC="$2"; shift 2 ;;
        --layer) EXTRA_LAYERS+=("$2"); shift 2 ;;
        --build) BUILD="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-check-layer) CHECK_LAYER=0; shift ;;
        --check-layer-only) ONLY_CHECK_LAYER=1; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$BITBAKE" ] && [ -n "$OECORE" ] || { echo "need --bitbake and --oe-core, or --poky (see --help)" >&2; exit 2; }
BITBAKE="$(readlink -f "$BITBAKE")"; OECORE="$(readlink -f "$OECORE")"
[ -n "$METAOE" ] && METAOE="$(readlink -f "$METAOE")"
[ -n "$METARAUC" ] && METARAUC="$(readlink -f "$METARAUC")"
for i in "${!EXTRA_LAYERS[@]}"; do EXTRA_LAYERS[i]="$(readlink -f "${EXTRA_LAYERS[i]}")"; done
[ -n "$BUILD" ] && { mkdir -p "$BUILD"; BUILD="$(readlink -f "$BUILD")"; }
[ -x "$BITBAKE/bin/bitbake" ] || { echo "no bitbake in $BITBAKE" >&2; exit 2; }
[ -f "$OECORE/oe-init-build-env" ] || { echo "no oe-init-build-env in $OECORE" >&2; exit 2; }

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok      %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAILED  %s\n' "$*"; }
note() { printf '\n== %s\n' "$*"; }
check() { local d="$1"; shift; if "$@"; then pass "$d"; else fail "$d"; fi; }
elapsed() { echo $(( $(date +%s) - $1 )); }

# ---------------------------------------------------------------- host
note "host prerequisites"
if [ "$(id -u)" = 0 ]; then
    echo "bitbake refuses to run as root; run as an unprivileged user, e.g."
    echo "  runuser -u <user> -- $0 $*"
    exit 2
fi
for tool in cpio chrpath diffstat gawk git python3; do
    command -v "$tool" >/dev/null || { echo "missing host tool: $tool (apt-get install $tool)"; exit 2; }
done
# bitbake (lib/bb/utils.py) switches LC_CTYPE to en_US.UTF-8 and exits
# without it, whatever the current locale is.
if ! locale -a 2>/dev/null | grep -qix 'en_US.utf-\?8'; then
    echo "bitbake needs the locale en_US.UTF-8: apt-get install locales, enable en_US.UTF-8 in /etc/locale.gen, run locale-gen"
    exit 2
fi
export LANG=en_US.UTF-8 LC_ALL=en_US.UTF-8
PY="$(command -v python3)"

RELEASE="$(sed -n 's/^LAYERSERIES_CORENAMES = "\(.*\)"$/\1/p' "$OECORE/meta/conf/layer.conf" | awk '{print $NF}')"
# (safe.directory: checkouts often belong to another user than the one running.)
gitq() { git -c safe.directory='*' "$@"; }
OE_REV="$(gitq -C "$OECORE" rev-parse --short HEAD 2>/dev/null)"
OE_DATE="$(gitq -C "$OECORE" log -1 --format=%cs 2>/dev/null)"
BB_VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$BITBAKE/lib/bb/__init__.py")"
BB_REV="$(gitq -C "$BITBAKE" rev-parse --short HEAD 2>/dev/null)"
RUST_OE="$(sed -n 's/^RUSTVERSION ?= "\(.*\)%\?"$/\1/p' "$OECORE/meta/conf/distro/include/tcmode-default.inc" | tr -d '%')"
COMPAT="$(sed -n 's/^LAYERSERIES_COMPAT_secureev = "\(.*\)"$/\1/p' "$LAYER/conf/layer.conf")"
claimed=0
for r in $COMPAT; do [ "$r" = "$RELEASE" ] && claimed=1; done
echo "release $RELEASE: openembedded-core $OE_REV ($OE_DATE), bitbake $BB_VERSION ($BB_REV), Rust $RUST_OE"
echo "layer declares: $COMPAT -> $([ $claimed = 1 ] && echo claimed || echo not claimed)"

# ---------------------------------------------------------------- build dir
if [ -z "$BUILD" ]; then
    BUILD="$(mktemp -d /tmp/secureev-release-check.XXXXXX)"
    [ "$KEEP" = 1 ] || trap 'rm -rf "$BUILD"' EXIT
fi
mkdir -p "$BUILD"
BUILD="$(readlink -f "$BUILD")"
SCRATCH="$BUILD/secureev-check"
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"

# oe-init-build-env changes directory and PATH; it takes the bitbake dir.
# (It is not written for "set -u".)
set +u
# shellcheck disable=SC1091
. "$OECORE/oe-init-build-env" "$BUILD" "$BITBAKE" >/dev/null || { echo "oe-init-build-env failed"; exit 2; }
set -u

# Base configuration (also what yocto-check-layer uses): offline, systemd, no
# "secureev" feature; downloads and sstate inside the build directory.
cat >> conf/local.conf <<'EOF'

# --- yocto-layer/tests/release-check.sh
BB_NO_NETWORK = "1"
CONNECTIVITY_CHECK_URIS = ""
INIT_MANAGER = "systemd"
BB_NUMBER_THREADS = "2"
BB_NUMBER_PARSE_THREADS = "2"
EOF

layers=("$OECORE/meta")
[ -n "$METAOE" ] && layers+=("$METAOE")
[ -n "$METARAUC" ] && layers+=("$METARAUC")
layers+=("${EXTRA_LAYERS[@]}")
# yocto-check-layer's base: OE-core and the layers our recipes need in world
# (meta-oe, --layer ones), not meta-rauc (optional, PACKAGECONFIG only), whose
# own world (casync) needs meta-filesystems.
base_layers=("$OECORE/meta")
[ -n "$METAOE" ] && base_layers+=("$METAOE")
base_layers+=("${EXTRA_LAYERS[@]}")
{
    echo 'BBPATH = "${TOPDIR}"'
    echo 'BBFILES ?= ""'
    echo 'BBLAYERS ?= " \'
    for l in "${base_layers[@]}"; do echo "  $l \\"; done
    echo '"'
} > conf/bblayers.conf.base
{
    echo 'BBPATH = "${TOPDIR}"'
    echo 'BBFILES ?= ""'
    echo 'BBLAYERS ?= " \'
    for l in "${layers[@]}" "$LAYER"; do echo "  $l \\"; done
    echo '"'
} > conf/bblayers.conf

# The configuration the packaging tests use: the distro feature on, a UI group
# of another name, the rig's ECU identity.
cat > "$SCRATCH/feature.conf" <<'EOF'
DISTRO_FEATURES:append = " secureev"
SECUREEV_UI_GROUP = "rig-hmi"
SECUREEV_RIG_ECU_SERIAL = "rig-ecu-7"
EOF
if [ -n "$METARAUC" ]; then
    echo 'PACKAGECONFIG:append:pn-secureev-ota = " rauc"' >> "$SCRATCH/feature.conf"
fi
# PACKAGECONFIG rauc as if meta-rauc were not in bblayers.conf.
cat > "$SCRATCH/rauc-nolayer.conf" <<'EOF'
PACKAGECONFIG:append:pn-secureev-ota = " rauc"
BBFILE_COLLECTIONS:remove = "rauc"
EOF
cat > "$SCRATCH/old-rust.conf" <<'EOF'
DISTRO_FEATURES:append = " secureev"
RUSTVERSION = "1.88.0%"
PREFERRED_VERSION_rust = "1.88.0%"
EOF
cat > "$SCRATCH/sysvinit.conf" <<'EOF'
INIT_MANAGER:forcevariable = "sysvinit"
EOF
# A prefile (-r): the compatibility check runs before postfiles are read, and
# an :append survives layer.conf's plain assignment.
cat > "$SCRATCH/force-compat.conf" <<EOF
LAYERSERIES_COMPAT_secureev:append = " $RELEASE"
EOF

mapfile -t recipes < <(cd "$LAYER" && find . -name '*.bb' | sed 's|^\./||' | sort)
recipe_files=()
for r in "${recipes[@]}"; do
    case "$r" in
        dynamic-layers/openembedded-layer/*) [ -n "$METAOE" ] || continue ;;
        dynamic-layers/rauc/*) [ -n "$METARAUC" ] || continue ;;
    esac
    recipe_files+=("$LAYER/$r")
done

# ---------------------------------------------------------------- not claimed
if [ "$claimed" = 0 ]; then
    note "release $RELEASE is not declared: bitbake must refuse the layer"
    t0=$(date +%s)
    bitbake -p > "$SCRATCH/parse.log" 2>&1; rc=$?
    tail -5 "$SCRATCH/parse.log" | sed 's/^/    /'
    check "bitbake -p refuses the layer (LAYERSERIES_COMPAT)" \
        bash -c "[ $rc != 0 ] && grep -q 'secureev.*not compatible\|is not compatible with the core layer' '$SCRATCH/parse.log'"
    echo "    time: $(elapsed "$t0") s"
    note "forced compatible: the recipes refuse this release's Rust $RUST_OE"
    for f in "$LAYER/recipes-ota/secureev-ota/secureev-ota_git.bb" \
             "$LAYER/recipes-ota/secureev-ota/secureev-ota-tools-native_git.bb"; do
        # -b with a task: bitbake stops with "<file> was skipped: <reason>"
        # (bitbake -b -e would print the environment of a skipped recipe).
        bitbake -r "$SCRATCH/force-compat.conf" -b "$f" -c listtasks > "$SCRATCH/rust.log" 2>&1
        selected="$(grep -o 'but this build selects Rust [0-9.]*' "$SCRATCH/rust.log" | head -1 | awk '{print $NF}')"
        check "$(basename "$f"): skipped, 'SecureEV-OTA needs Rust >= 1.89 ... selects Rust ${selected:-?}'" \
            grep -q "was skipped: SecureEV-OTA needs Rust >= 1.89 (workspace rust-version), but this build selects Rust" "$SCRATCH/rust.log"
    done
    echo
    echo "RESULT $RELEASE (not declared) $passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit
fi

PARSE_S="-"
if [ "$ONLY_CHECK_LAYER" = 0 ]; then
# ---------------------------------------------------------------- parse
note "bitbake -p ($RELEASE, DISTRO_FEATURES systemd secureev)"
t0=$(date +%s)
bitbake -R "$SCRATCH/feature.conf" -p > "$SCRATCH/parse.log" 2>&1; rc=$?
PARSE_S=$(elapsed "$t0")
grep -E '^(ERROR|WARNING)' "$SCRATCH/parse.log" | sed 's/^/    /'
check "bitbake -p parses (${PARSE_S} s)" test "$rc" = 0
check "bitbake -p: no warning or error from meta-secureev" \
    bash -c "! grep -E '^(ERROR|WARNING)' '$SCRATCH/parse.log' | grep -qi secureev"

# ---------------------------------------------------------------- bitbake -e
note "bitbake -e of each recipe, and the packaging tests on its output"
t0=$(date +%s)
env_of() { # $1 target, $2 output, [$3 postfile]
    local post="${3:-$SCRATCH/feature.conf}"
    bitbake -R "$post" -e "$1" > "$2" 2> "$2.err"
}
for f in "${recipe_files[@]}"; do
    pn="$(basename "$f" .bb)"; pn="${pn%%_*}"
    out="$SCRATCH/env-$pn.txt"
    case "$pn" in
        *-native) target="$pn" ;;
        *) target="$pn" ;;
    esac
    env_of "$target" "$out"; rc=$?
    check "bitbake -e $target" test "$rc" = 0
done
env_of linux-yocto "$SCRATCH/env-linux-yocto.txt"
check "bitbake -e linux-yocto" test $? = 0
# The git recipe is not the preferred version: its own environment.
bitbake -R "$SCRATCH/feature.conf" -b "$LAYER/recipes-ota/secureev-ota/secureev-ota_git.bb" -e \
    > "$SCRATCH/env-secureev-ota-git.txt" 2>"$SCRATCH/env-secureev-ota-git.txt.err"
check "bitbake -b secureev-ota_git.bb -e" test $? = 0

"$PY" "$HERE/check-bitbake-env.py" --repo "$REPO" --layer "$LAYER" --scratch "$SCRATCH" \
    --ui-group rig-hmi --rig-serial rig-ecu-7 \
    --ota "$SCRATCH/env-secureev-ota.txt" --ota-git "$SCRATCH/env-secureev-ota-git.txt" \
    --conf "$SCRATCH/env-secureev-ota-conf.txt" --tools "$SCRATCH/env-secureev-ota-tools-native.txt" \
    --kernel "$SCRATCH/env-linux-yocto.txt" \
    ${METAOE:+--packagegroup "$SCRATCH/env-packagegroup-secureev-vcan-rig.txt"} \
    ${METARAUC:+--rauc} \
    > "$SCRATCH/env-checks.log" 2>&1
while IFS= read -r line; do
    case "$line" in
        "ok      "*) passed=$((passed + 1)); echo "$line" ;;
        "FAILED  "*) failed=$((failed + 1)); echo "$line" ;;
        *) echo "    $line" ;;
    esac
done < "$SCRATCH/env-checks.log"
echo "    time: $(elapsed "$t0") s"

# ---------------------------------------------------------------- refusals
note "refusals with a clear message"
t0=$(date +%s)
OTA_BB="$LAYER/recipes-ota/secureev-ota/secureev-ota_0.1.0.bb"
# -b with a task: bitbake stops with "<file> was skipped: <reason>".
bitbake -R "$SCRATCH/old-rust.conf" -b "$OTA_BB" -c listtasks > "$SCRATCH/old-rust.log" 2>&1
grep -m1 'SecureEV-OTA needs Rust' "$SCRATCH/old-rust.log" | cut -c1-160 | sed 's/^/    /'
check "RUSTVERSION 1.88: secureev-ota skipped with the Rust message" \
    grep -q 'SecureEV-OTA needs Rust >= 1.89 (workspace rust-version), but this build selects Rust 1.88.0' "$SCRATCH/old-rust.log"
# A prefile (-r): INIT_MANAGER picks an include while bitbake.conf is read,
# before postfiles; :forcevariable wins over local.conf's "systemd".
bitbake -r "$SCRATCH/sysvinit.conf" -R "$SCRATCH/feature.conf" -b "$OTA_BB" -c listtasks > "$SCRATCH/sysvinit.log" 2>&1
grep -m1 -i "was skipped" "$SCRATCH/sysvinit.log" | cut -c1-160 | sed 's/^/    /'
check "INIT_MANAGER sysvinit: secureev-ota skipped for the missing 'systemd' feature" \
    grep -q "was skipped: .*missing required DISTRO_FEATURES.*systemd" "$SCRATCH/sysvinit.log"
bitbake -R "$SCRATCH/rauc-nolayer.conf" -b "$OTA_BB" -c listtasks > "$SCRATCH/rauc-nolayer.log" 2>&1
grep -m1 "was skipped" "$SCRATCH/rauc-nolayer.log" | cut -c1-160 | sed 's/^/    /'
check "PACKAGECONFIG rauc without meta-rauc: secureev-ota skipped, naming the layer" \
    grep -q "was skipped: PACKAGECONFIG 'rauc' of secureev-ota needs the meta-rauc layer" "$SCRATCH/rauc-nolayer.log"
# Base configuration (no "secureev" feature).
bitbake -e linux-yocto > "$SCRATCH/env-linux-yocto-base.txt" 2> "$SCRATCH/base.err"
check "without the 'secureev' feature the sanity class warns" \
    grep -q "meta-secureev is in your layers, but DISTRO_FEATURES has no 'secureev'" "$SCRATCH/base.err" "$SCRATCH/env-linux-yocto-base.txt"
check "without the 'secureev' feature linux-yocto's SRC_URI has no secureev-can.cfg" \
    bash -c "grep '^SRC_URI=' '$SCRATCH/env-linux-yocto-base.txt' | grep -vq secureev"
echo "    time: $(elapsed "$t0") s"
fi # ONLY_CHECK_LAYER

# ---------------------------------------------------------------- yocto-check-layer
CHECK_S="-"
if [ "$CHECK_LAYER" = 1 ]; then
    note "yocto-check-layer --with-software-layer-signature-check"
    cp conf/bblayers.conf.base conf/bblayers.conf
    t0=$(date +%s)
    # Dependencies: what the layer's recipes need to parse in world, i.e.
    # meta-oe (the rig packagegroup) and --layer ones; not meta-rauc, which is
    # optional here (PACKAGECONFIG) and whose own world (casync) needs
    # meta-filesystems.
    deps=()
    [ -n "$METAOE" ] && deps+=("$METAOE")
    deps+=("${EXTRA_LAYERS[@]}")
    yocto-check-layer --with-software-layer-signature-check --no-auto \
        ${deps[0]:+--dependency "${deps[@]}"} -- "$LAYER" > "$SCRATCH/check-layer.log" 2>&1; rc=$?
    CHECK_S=$(elapsed "$t0")
    sed -n '/SUMMARY/,$p' "$SCRATCH/check-layer.log" | sed 's/^/    /'
    grep -E '^(FAIL|ERROR):|\.\.\. (FAIL|ERROR)' "$SCRATCH/check-layer.log" | sed 's/^/    /'
    check "yocto-check-layer passes (${CHECK_S} s)" \
        bash -c "[ $rc = 0 ] && grep -q 'meta-secureev.*PASS' '$SCRATCH/check-layer.log'"
fi

echo
echo "TIMES $RELEASE parse=${PARSE_S}s check-layer=${CHECK_S}s (openembedded-core $OE_REV $OE_DATE, bitbake $BB_VERSION $BB_REV, Rust $RUST_OE)"
echo "RESULT $RELEASE $passed passed, $failed failed"
[ "$failed" = 0 ]

# nooelint: oelint.var.bbclassextend - vehicle-side daemon and agents; a native or nativesdk variant has no use
SUMMARY = "SecureEV-OTA: Uptane 2.1 over-the-air updates for vehicles"
DESCRIPTION = "The Uptane primary daemon secureev-otad with its D-Bus API \
               io.secureev.Ota1, the secureevctl command line client, the \
               secondary ECU agent secureev-ecu and, optionally, the \
               secureev-server backend, built from the SecureEV-OTA Rust \
               workspace with the units and D-Bus files of its systemd/ tree."
HOMEPAGE = "https://example.invalid/secureev-ota"
BUGTRACKER = "https://example.invalid/secureev-ota/issues"
SECTION = "admin"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

PV = "0.1.0+git"

# Placeholder repository and revision: point them at your mirror of the
# SecureEV-OTA repository (README.md, "Source revision"), e.g. in a bbappend
# or local.conf:
#   SRC_URI:pn-secureev-ota = "git://git.example.com/ota/secureev-ota.git;protocol=https;branch=main;destsuffix=${BP}"
#   SRCREV:pn-secureev-ota = "<40-hex commit>"
# After changing SRCREV, regenerate secureev-ota-crates.inc from that commit's
# Cargo.lock (yocto-layer/scripts/update-crates-inc.py, or
# bitbake -c update_crates secureev-ota).
# destsuffix=${BP}: the checkout lands where S points by default on both
# scarthgap (${WORKDIR}/${BP}) and wrynose (${UNPACKDIR}/${BP}).
SRC_URI = "git://git.example.invalid/secureev/secureev-ota.git;protocol=https;branch=main;destsuffix=${BP}"
SRCREV = "0000000000000000000000000000000000000000"

require ${BPN}-crates.inc

# No CPE is registered for SecureEV-OTA; this keeps cve-check from matching
# unrelated products called "secureev".
CVE_PRODUCT = "secureev-ota"

inherit cargo cargo-update-recipe-crates systemd useradd

# Group whose members may drive the updater over D-Bus. Changing it rewrites
# the D-Bus policy and the sysusers.d entry; add the HMI's user to it in the
# HMI's recipe (GROUPMEMS_PARAM or "m <user> <group>" in sysusers.d).
SECUREEV_UI_GROUP ?= "secureev-ui"

# server: also build and package the backend (secureev-server). Off for
# vehicles; useful for a self-contained demo image.
PACKAGECONFIG ??= ""
PACKAGECONFIG[server] = ""

# Build only the vehicle-side binaries of the workspace (package names of
# daemon/, cli/ and secondary/; conformance/ and benches are never built).
CARGO_BUILD_FLAGS += "-p secureev-daemon -p secureev-cli -p secureev-secondary"
CARGO_BUILD_FLAGS += "${@bb.utils.contains('PACKAGECONFIG', 'server', '-p secureev-server', '', d)}"

SECUREEV_TREE = "${S}/systemd"

do_install:append() {
    # systemd units
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${SECUREEV_TREE}/usr/lib/systemd/system/secureev-otad.service \
        ${D}${systemd_system_unitdir}/
    install -m 0644 ${SECUREEV_TREE}/usr/lib/systemd/system/secureev-ecu@.service \
        ${D}${systemd_system_unitdir}/

    # D-Bus policy (UI group substituted) and system bus activation
    install -d ${D}${datadir}/dbus-1/system.d ${D}${datadir}/dbus-1/system-services
    sed -e 's/group="secureev-ui"/group="${SECUREEV_UI_GROUP}"/' \
        ${SECUREEV_TREE}/usr/share/dbus-1/system.d/io.secureev.Ota1.conf \
        > ${D}${datadir}/dbus-1/system.d/io.secureev.Ota1.conf
    chmod 0644 ${D}${datadir}/dbus-1/system.d/io.secureev.Ota1.conf
    install -m 0644 ${SECUREEV_TREE}/usr/share/dbus-1/system-services/io.secureev.Ota1.service \
        ${D}${datadir}/dbus-1/system-services/

    # sysusers.d (UI group substituted) and tmpfiles.d
    install -d ${D}${nonarch_libdir}/sysusers.d ${D}${nonarch_libdir}/tmpfiles.d
    sed -e 's/^g\([[:space:]]\+\)secureev-ui\b/g\1${SECUREEV_UI_GROUP}/' \
        ${SECUREEV_TREE}/usr/lib/sysusers.d/secureev-ota.conf \
        > ${D}${nonarch_libdir}/sysusers.d/secureev-ota.conf
    chmod 0644 ${D}${nonarch_libdir}/sysusers.d/secureev-ota.conf
    install -m 0644 ${SECUREEV_TREE}/usr/lib/sysusers.d/secureev-ecu.conf \
        ${D}${nonarch_libdir}/sysusers.d/
    install -m 0644 ${SECUREEV_TREE}/usr/lib/tmpfiles.d/secureev-ota.conf \
        ${D}${nonarch_libdir}/tmpfiles.d/

    # vcan test rig: netdev/network for vcan0, CAN modules at boot, and the
    # agent on vcan0 enabled the way "systemctl enable" would do it.
    install -d ${D}${systemd_unitdir}/network ${D}${nonarch_libdir}/modules-load.d
    install -m 0644 ${SECUREEV_TREE}/usr/lib/systemd/network/80-secureev-vcan0.netdev \
        ${SECUREEV_TREE}/usr/lib/systemd/network/80-secureev-vcan0.network \
        ${D}${systemd_unitdir}/network/
    install -m 0644 ${SECUREEV_TREE}/usr/lib/modules-load.d/secureev-vcan-rig.conf \
        ${D}${nonarch_libdir}/modules-load.d/
    install -d ${D}${sysconfdir}/systemd/system/multi-user.target.wants
    ln -sf ${systemd_system_unitdir}/secureev-ecu@.service \
        ${D}${sysconfdir}/systemd/system/multi-user.target.wants/secureev-ecu@vcan0.service

    # Documentation and the can0 examples (classic CAN and CAN FD)
    install -d ${D}${docdir}/${BPN}/examples
    install -m 0644 ${SECUREEV_TREE}/README.md ${D}${docdir}/${BPN}/README.md
    install -m 0644 ${SECUREEV_TREE}/examples/network/*.network ${D}${docdir}/${BPN}/examples/
}

# ${PN} itself is a meta package: the daemon and the CLI.
PACKAGES =+ "${PN}-daemon ${PN}-cli ${PN}-ecu ${PN}-vcan-rig-config ${PN}-server"
ALLOW_EMPTY:${PN} = "1"

FILES:${PN}-daemon += "${bindir}/secureev-otad \
                       ${systemd_system_unitdir}/secureev-otad.service \
                       ${datadir}/dbus-1/system.d/io.secureev.Ota1.conf \
                       ${datadir}/dbus-1/system-services/io.secureev.Ota1.service \
                       ${nonarch_libdir}/sysusers.d/secureev-ota.conf \
                       ${nonarch_libdir}/tmpfiles.d/secureev-ota.conf \
                       "
FILES:${PN}-cli += "${bindir}/secureevctl"
FILES:${PN}-ecu += "${bindir}/secureev-ecu \
                    ${systemd_system_unitdir}/secureev-ecu@.service \
                    ${nonarch_libdir}/sysusers.d/secureev-ecu.conf \
                    "
FILES:${PN}-vcan-rig-config += "${systemd_unitdir}/network/80-secureev-vcan0.netdev \
                                ${systemd_unitdir}/network/80-secureev-vcan0.network \
                                ${nonarch_libdir}/modules-load.d/secureev-vcan-rig.conf \
                                ${sysconfdir}/systemd/system/multi-user.target.wants/secureev-ecu@vcan0.service \
                                "
FILES:${PN}-server += "${bindir}/secureev-server"

# VIRTUAL-RUNTIME_dbus (dbus or dbus-broker) exists since Yocto 5.1; the weak
# default keeps scarthgap parsing.
VIRTUAL-RUNTIME_dbus ??= "dbus"

RDEPENDS:${PN} = "${PN}-cli ${PN}-daemon"
# Roots, backend CA and otad.toml come from the configuration package that
# provides virtual-secureev-ota-conf (secureev-ota-conf or the integrator's).
RDEPENDS:${PN}-daemon = "${VIRTUAL-RUNTIME_dbus} virtual-secureev-ota-conf"
RDEPENDS:${PN}-vcan-rig-config = "${PN}-ecu"

SYSTEMD_PACKAGES = "${PN}-daemon ${PN}-ecu"
SYSTEMD_SERVICE:${PN}-daemon = "secureev-otad.service"
SYSTEMD_AUTO_ENABLE:${PN}-daemon = "enable"
# A template: instances are enabled per interface, e.g. by
# ${PN}-vcan-rig-config for vcan0 or by the integrator for a real bus.
SYSTEMD_SERVICE:${PN}-ecu = "secureev-ecu@.service"
SYSTEMD_AUTO_ENABLE:${PN}-ecu = "disable"

# Static system users; pin their IDs with useradd-staticids on A/B images so
# that /var/lib/secureev keeps its owner across rootfs updates (README.md).
USERADD_PACKAGES = "${PN}-daemon ${PN}-ecu"
GROUPADD_PARAM:${PN}-daemon = "--system secureev; --system ${SECUREEV_UI_GROUP}"
USERADD_PARAM:${PN}-daemon = "--system --gid secureev --home-dir ${localstatedir}/lib/secureev --no-create-home --shell /sbin/nologin secureev"
USERADD_PARAM:${PN}-ecu = "--system --user-group --home-dir ${localstatedir}/lib/secureev-ecu --no-create-home --shell /sbin/nologin secureev-ecu"

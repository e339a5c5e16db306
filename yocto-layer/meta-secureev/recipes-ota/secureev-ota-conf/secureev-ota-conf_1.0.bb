# nooelint: oelint.var.bbclassextend - target configuration data, nothing to build for native or nativesdk
SUMMARY = "SecureEV-OTA vehicle configuration: trusted roots, backend CA, otad.toml"
DESCRIPTION = "Default provider of virtual/secureev-ota-conf. It installs \
               /etc/secureev/otad.toml, the trusted initial Uptane root \
               metadata of the Director and Image repositories and the CA \
               that signs the backend's TLS certificate. The layer ships no \
               roots or CA: the integrator supplies them with a bbappend or \
               replaces this recipe (README.md, Provisioning)."
HOMEPAGE = "https://example.invalid/secureev-ota"
BUGTRACKER = "https://example.invalid/secureev-ota/issues"
SECTION = "admin"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - the files are this layer's own (no upstream source), under the layer's MIT license
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# Same pattern as meta-rauc's virtual/rauc-conf: select another provider with
#   PREFERRED_PROVIDER_virtual/secureev-ota-conf = "my-secureev-ota-conf"
#   PREFERRED_RPROVIDER_virtual-secureev-ota-conf = "my-secureev-ota-conf"
PROVIDES += "virtual/secureev-ota-conf"

# trust/ and tls/ are directories: a bbappend with
#   FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
# and its own files/trust/*.json and files/tls/*.pem takes precedence.
SRC_URI = "file://otad.toml \
           file://trust/ \
           file://tls/ \
           "

# Root metadata files that must be provided, installed to /etc/secureev/trust/
# (the defaults of secureev-otad's [trust] director_root and image_root).
SECUREEV_TRUST_FILES ?= "director-root.json image-root.json"

# Local files unpack to UNPACKDIR (${WORKDIR}/sources, set by OE-core on every
# release this layer declares). Never give UNPACKDIR a default here: a later
# "??=" replaces OE-core's own weak default, S would become ${WORKDIR}, and
# whinlatter/wrynose stop parsing ("Using S = ${WORKDIR} is no longer supported").
S = "${UNPACKDIR}"

# Configuration data has no CPE; named so that cve-check matches nothing else.
CVE_PRODUCT = "secureev-ota-conf"

inherit allarch useradd

# The tree is root:secureev 0750, so the group must exist when installing.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system secureev"

# Without both roots do_install stops (below), so a world build, which builds
# every recipe nobody asked for, must not pick this one: it is excluded from
# world until the roots are found in FILESPATH (a bbappend provides them).
# nooelint: oelint.task.noanonpython - whether the roots exist is known only after FILESPATH is final, at parse time
python __anonymous() {
    filespath = d.getVar('FILESPATH')
    missing = [f for f in (d.getVar('SECUREEV_TRUST_FILES') or '').split()
               if not bb.utils.which(filespath, 'trust/' + f)]
    if missing:
        d.setVar('EXCLUDE_FROM_WORLD', '1')
}

do_install() {
    # No roots, no updates: refuse to build an image that could never verify
    # anything, rather than one that trusts roots nobody chose.
    for f in ${SECUREEV_TRUST_FILES}; do
        if [ ! -s ${UNPACKDIR}/trust/$f ]; then
            bbfatal "secureev-ota-conf: trusted root metadata trust/$f is missing. Provide the Director and Image repository roots as files/trust/*.json in a bbappend, or set PREFERRED_PROVIDER_virtual/secureev-ota-conf; see meta-secureev/README.md, Provisioning."
        fi
    done
    install -d -m 0750 -o root -g secureev ${D}${sysconfdir}/secureev
    install -d -m 0750 -o root -g secureev ${D}${sysconfdir}/secureev/trust
    install -d -m 0750 -o root -g secureev ${D}${sysconfdir}/secureev/otad.toml.d
    install -m 0640 -o root -g secureev ${UNPACKDIR}/otad.toml ${D}${sysconfdir}/secureev/otad.toml
    for f in ${SECUREEV_TRUST_FILES}; do
        install -m 0640 -o root -g secureev ${UNPACKDIR}/trust/$f ${D}${sysconfdir}/secureev/trust/$f
    done
    # Backend CA(s), e.g. backend-ca.pem -> /etc/secureev/backend-ca.pem
    for f in ${UNPACKDIR}/tls/*.pem; do
        [ -e "$f" ] || continue
        install -m 0640 -o root -g secureev "$f" ${D}${sysconfdir}/secureev/
    done
}

FILES:${PN} += "${sysconfdir}/secureev"
CONFFILES:${PN} += "${sysconfdir}/secureev/otad.toml"

RPROVIDES:${PN} += "virtual-secureev-ota-conf"

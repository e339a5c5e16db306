# nooelint: oelint.var.bbclassextend - vehicle-side daemon and agents; the host-side signing tools are secureev-ota-tools-native
# SecureEV-OTA from a branch (development). The release-pinned recipe
# secureev-ota_<version>.bb is preferred; select this one with
#   PREFERRED_VERSION_secureev-ota = "0.1.0+git%"
# or SECUREEV_USE_DEVEL_VERSION = "1" (the meta-rauc pattern).

PV = "0.1.0+git"

# Placeholder repository and revision: point them at your mirror of the
# SecureEV-OTA repository (README.md, "Source revision"), e.g. in a bbappend
# or local.conf:
#   SRC_URI:pn-secureev-ota = "git://git.example.com/ota/secureev-ota.git;protocol=https;branch=main;destsuffix=${BP}"
#   SRCREV:pn-secureev-ota = "<40-hex commit>"
# After changing SRCREV, regenerate secureev-ota-crates.inc from that commit's
# Cargo.lock (yocto-layer/scripts/update-crates-inc.py, or
# bitbake -c update_crates secureev-ota).
# destsuffix=${BP}: the checkout lands where S points by default
# (${UNPACKDIR}/${BP}).
SRC_URI = "git://git.example.invalid/secureev/secureev-ota.git;protocol=https;branch=main;destsuffix=${BP}"
SRCREV = "0000000000000000000000000000000000000000"

SECUREEV_USE_DEVEL_VERSION ??= "-1"
DEFAULT_PREFERENCE = "${SECUREEV_USE_DEVEL_VERSION}"

require secureev-ota.inc

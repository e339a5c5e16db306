SUMMARY = "SecureEV-OTA host tools: sign and publish images from the build"
DESCRIPTION = "secureev-server for the build host: 'secureev-server image add' \
               signs an image as an Uptane Image repository target with the \
               offline targets key and uploads it, 'secureev-server image \
               rotate' rotates offline keys. A build can publish the image or \
               RAUC bundle it just made (README.md, Signing images from the build)."
HOMEPAGE = "https://example.invalid/secureev-ota"
BUGTRACKER = "https://example.invalid/secureev-ota/issues"
SECTION = "devel"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

PV = "0.1.0+git"

# Same source and revision as secureev-ota_git.bb: set both together
# (README.md, "Source revision").
SRC_URI = "git://git.example.invalid/secureev/secureev-ota.git;protocol=https;branch=main;destsuffix=${BP}"
SRCREV = "0000000000000000000000000000000000000000"

# The crates of the same Cargo.lock (a superset of what the server needs).
require secureev-ota-crates.inc

CVE_PRODUCT = "secureev-ota"

inherit cargo secureev_rust

# Only the backend binary; rusqlite compiles its bundled SQLite with the
# host compiler, rustls uses ring: no further native dependencies.
CARGO_BUILD_FLAGS += "-p secureev-server"

# While SRC_URI/SRCREV are the placeholders (README.md, "Source revision") the
# recipe cannot fetch: keep it out of "bitbake world".
EXCLUDE_FROM_WORLD = "${@'1' if d.getVar('SRCREV') == '0' * 40 else '0'}"

inherit_defer native

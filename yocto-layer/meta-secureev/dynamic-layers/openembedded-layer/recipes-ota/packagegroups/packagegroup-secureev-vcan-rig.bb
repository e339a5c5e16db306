SUMMARY = "SecureEV-OTA test rig on a virtual CAN bus"
DESCRIPTION = "Everything a head-unit image needs to exercise SecureEV-OTA \
               against a simulated secondary ECU without vehicle hardware: \
               vcan0 set up by systemd-networkd, the secondary ECU agent on \
               vcan0, can-utils for inspecting traffic, and the kernel's vcan, \
               CAN_RAW and ISO-TP modules. Not for production vehicles."
HOMEPAGE = "https://example.invalid/secureev-ota"
BUGTRACKER = "https://example.invalid/secureev-ota/issues"
SECTION = "admin"
LICENSE = "MIT"

inherit features_check packagegroup

# Its packages come from secureev-ota, which needs systemd (skipped otherwise).
REQUIRED_DISTRO_FEATURES = "systemd"

# A test rig, and secureev-ota stays out of world while its source is a
# placeholder; world would otherwise build secureev-ota through this group.
EXCLUDE_FROM_WORLD = "1"

RDEPENDS:${PN} = "can-utils \
                  can-utils-isotp \
                  secureev-ota-ecu \
                  secureev-ota-vcan-rig-config \
                  "
# Recommended, not required: a kernel with these built in (=y) produces no
# module packages, and the rig still works. With DISTRO_FEATURES "secureev"
# linux-yocto builds them as modules (recipes-kernel/linux).
RRECOMMENDS:${PN} = "kernel-module-can-isotp \
                     kernel-module-can-raw \
                     kernel-module-vcan \
                     "

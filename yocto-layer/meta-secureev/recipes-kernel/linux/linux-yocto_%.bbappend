# CAN stack for SecureEV-OTA (secondary ECUs over CAN_RAW and ISO-TP, and the
# vcan test rig). Both lines are no-ops unless the distro opts in with
# DISTRO_FEATURES:append = " secureev" (the meta-rauc pattern), so adding the
# layer changes no other recipe (yocto-check-layer test_signatures).
# Other kernels: see README.md, "Kernel".
# nooelint: oelint.vars.noncoreoverride - gated on DISTRO_FEATURES 'secureev' instead of a machine/distro override
FILESEXTRAPATHS:prepend := "${@bb.utils.contains('DISTRO_FEATURES', 'secureev', '${THISDIR}/files:', '', d)}"

# nooelint: oelint.vars.noncoreoverride - gated on DISTRO_FEATURES 'secureev' instead of a machine/distro override
SRC_URI:append = " ${@bb.utils.contains('DISTRO_FEATURES', 'secureev', 'file://secureev-can.cfg', '', d)}"

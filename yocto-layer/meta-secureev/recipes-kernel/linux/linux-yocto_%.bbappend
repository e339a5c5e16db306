# CAN stack for SecureEV-OTA (secondary ECUs over CAN_RAW and ISO-TP, and the
# vcan test rig), only when the distro opts in with
# DISTRO_FEATURES:append = " secureev". Other kernels: see README.md, "Kernel".
#
# Anonymous Python, not SRC_URI:append = " ${@bb.utils.contains(...)}": BitBake
# hashes a variable's unexpanded value, so an inline expression changes the
# kernel's task signatures even when it expands to nothing (yocto-check-layer
# test_signatures counted 133 changed tasks). Here, without the feature, the
# variables are not touched at all and adding the layer changes nothing;
# DISTRO_FEATURES is part of every signature anyway, so turning the feature
# on rebuilds the kernel as it must.
# nooelint: oelint.task.noanonpython, oelint.vars.noncoreoverride - gated on DISTRO_FEATURES secureev, not on a machine or distro override; runs at parse time so nothing changes without the feature
python __anonymous() {
    if bb.utils.contains('DISTRO_FEATURES', 'secureev', True, False, d):
        d.prependVar('FILESEXTRAPATHS', d.getVar('SECUREEV_KERNEL_FILES') + ':')
        d.appendVar('SRC_URI', ' file://secureev-can.cfg')
}
# Expanded now (":="), while THISDIR is this bbappend's directory.
# nooelint: oelint.vars.noncoreoverride - a variable of this layer, read only by the function above
SECUREEV_KERNEL_FILES := "${THISDIR}/files"

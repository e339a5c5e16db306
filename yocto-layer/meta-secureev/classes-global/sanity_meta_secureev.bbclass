# Sanity check of meta-secureev, inherited globally by the layer's layer.conf
# (the pattern of meta-rauc's sanity-meta-rauc.bbclass). An event handler
# only: it changes no variable, so no task signature depends on it.
#
# It warns when the layer is in bblayers.conf but the distro does not enable
#  - "secureev": the layer's changes to other layers' recipes (the CAN kernel
#    configuration fragment for linux-yocto) stay off;
#  - "systemd": the SecureEV-OTA recipes are skipped (REQUIRED_DISTRO_FEATURES).
# Set SKIP_META_SECUREEV_FEATURE_CHECK = "1" to silence it, e.g. in a build
# that only wants the -native signing tools.

addhandler secureev_distrocheck
secureev_distrocheck[doc] = "Warns when DISTRO_FEATURES lacks secureev or systemd."
secureev_distrocheck[eventmask] = "bb.event.SanityCheck"
python secureev_distrocheck() {
    if e.data.getVar('SKIP_META_SECUREEV_FEATURE_CHECK') == "1":
        return
    features = (e.data.getVar('DISTRO_FEATURES') or "").split()
    for feature, what in (("secureev", "the CAN kernel configuration for linux-yocto is not added"),
                          ("systemd", "the SecureEV-OTA recipes are skipped: they need systemd as init manager")):
        if feature not in features:
            bb.warn("meta-secureev is in your layers, but DISTRO_FEATURES has no '%s': %s. "
                    "Add DISTRO_FEATURES:append = \" %s\" to your distro configuration, or set "
                    "SKIP_META_SECUREEV_FEATURE_CHECK = \"1\"; see meta-secureev/README.md." % (feature, what, feature))
}

# Rust route of meta-secureev, checked when a recipe is parsed.
#
# The SecureEV-OTA workspace declares rust-version = "1.89" (Cargo.toml,
# [workspace.package]); with the current Cargo.lock that is also the exact
# minimum of the locked crates (uuid via zbus; yocto-layer/scripts/rust-minimum.py).
# OE-core's cargo class builds with the release's own Rust, selected by
# RUSTVERSION / PREFERRED_VERSION_rust:
#
#   5.0 scarthgap   Rust 1.75.0  too old. The only Rust layer reachable for it,
#                                meta-lts-mixins scarthgap/rust, stops at 1.81;
#                                no verified route, so the layer does not
#                                declare scarthgap.
#   5.3 whinlatter  Rust 1.90.0  builds the workspace.
#   6.0 wrynose     Rust 1.94.1  builds the workspace.
#
# Without this check an older Rust would parse fine and fail only in
# do_compile, after the whole toolchain was built. Instead the recipe is
# skipped with the reason below: "bitbake secureev-ota" then stops at once with
# "ERROR: Nothing PROVIDES 'secureev-ota' ... was skipped: ...", while world
# builds and other recipes are not affected.

SECUREEV_RUST_MIN ?= "1.89"
SECUREEV_RUST_MIN[doc] = "Lowest Rust version that builds the SecureEV-OTA workspace (its rust-version)."

def secureev_rust_version(d):
    """The Rust version the build selects, without the '%' wildcard."""
    version = d.getVar('PREFERRED_VERSION_rust') or d.getVar('RUSTVERSION') or ''
    return version.rstrip('%').strip()

# nooelint: oelint.task.noanonpython - the check must run while the recipe is parsed, to skip it before any task
python __anonymous() {
    need = d.getVar('SECUREEV_RUST_MIN')
    have = secureev_rust_version(d)
    if not have:
        raise bb.parse.SkipRecipe("SecureEV-OTA needs Rust >= %s, and this build names no Rust version "
                                  "(RUSTVERSION / PREFERRED_VERSION_rust are unset); see meta-secureev/README.md, "
                                  "Rust toolchain." % need)
    # '1.9' would sort above '1.89' as a string; vercmp_string compares numerically.
    if bb.utils.vercmp_string(have, need) < 0:
        raise bb.parse.SkipRecipe("SecureEV-OTA needs Rust >= %s (workspace rust-version), but this build selects "
                                  "Rust %s (RUSTVERSION / PREFERRED_VERSION_rust). Use whinlatter (Rust 1.90) or "
                                  "wrynose (Rust 1.94), or a Rust layer providing >= %s; scarthgap with "
                                  "meta-lts-mixins scarthgap/rust gets only 1.81. See meta-secureev/README.md, "
                                  "Rust toolchain." % (need, have, need))
}

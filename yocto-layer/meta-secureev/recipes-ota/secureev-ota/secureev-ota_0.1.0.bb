# nooelint: oelint.var.bbclassextend - vehicle-side daemon and agents; the host-side signing tools are secureev-ota-tools-native
# SecureEV-OTA pinned to the release tag v${PV} (the default provider; the
# git recipe beside it follows a branch). The fetcher checks that SRCREV is
# the commit the tag names.
#
# Placeholder repository and revision until the project publishes releases:
# set both to your mirror and the tag's commit (README.md, "Source revision").
# The crates include is shared with the git recipe while both build the same
# Cargo.lock; give this recipe its own when they diverge.
SRC_URI = "git://git.example.invalid/secureev/secureev-ota.git;protocol=https;branch=main;tag=v${PV};destsuffix=${BP}"
SRCREV = "0000000000000000000000000000000000000000"

require secureev-ota.inc

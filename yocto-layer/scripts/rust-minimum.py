#!/usr/bin/env python3
"""Print the minimum Rust version the image's binaries need with the current Cargo.lock.

The workspace declares a rust-version, but what a Yocto release's Rust must
reach is the highest rust-version among all crates the vehicle binaries
actually compile: normal and build dependencies, for a Linux target, as locked.
This script asks `cargo tree` for exactly that set (offline, from the local
cargo registry cache; run `cargo fetch --locked` first on a fresh machine)
and reads each crate's declared rust-version from its Cargo.toml.

Usage:
    rust-minimum.py [--max VERSION] [--target TRIPLE] [PACKAGE ...]

PACKAGEs default to the vehicle-side packages the recipe builds; those not
(yet) in the workspace are skipped. With --max, exit 1 if the minimum exceeds
VERSION (CI: the Rust of the newest supported Yocto release).
Output: "<version> <crate> <crate-version>" of the most demanding crate.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    sys.exit("rust-minimum.py needs Python >= 3.11 (tomllib)")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# Keep in sync with CARGO_BUILD_FLAGS in secureev-ota_git.bb.
DEFAULT_PACKAGES = ["secureev-daemon", "secureev-cli", "secureev-secondary"]


def version_tuple(text):
    return tuple(int(part) for part in text.split("."))


def workspace_members(repo):
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline", "--locked"],
        cwd=repo, check=True, capture_output=True, text=True).stdout
    return {p["name"] for p in json.loads(out)["packages"]}


def compiled_crates(repo, packages, target):
    cmd = ["cargo", "tree", "--locked", "--offline", "-e", "normal,build",
           "--target", target, "--prefix", "none", "--format", "{p}"]
    for p in packages:
        cmd += ["-p", p]
    out = subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout
    crates = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("v"):
            # "name vX.Y.Z (/path)" is a workspace or path crate; registry
            # crates carry at most "(proc-macro)" and "(*)" markers.
            crates.add((parts[0], parts[1][1:], "(/" in line))
    return crates


def registry_manifest(name, version):
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    hits = glob.glob(os.path.join(cargo_home, "registry", "src", "*", f"{name}-{version}", "Cargo.toml"))
    return hits[0] if hits else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs="*", default=DEFAULT_PACKAGES)
    ap.add_argument("--target", default="x86_64-unknown-linux-gnu")
    ap.add_argument("--max", help="fail (exit 1) if the minimum is above this version")
    ap.add_argument("--repo", default=REPO)
    args = ap.parse_args(argv)

    members = workspace_members(args.repo)
    packages = [p for p in args.packages if p in members]
    skipped = [p for p in args.packages if p not in members]
    if skipped:
        print(f"not in the workspace (yet), skipped: {' '.join(skipped)}", file=sys.stderr)
    if not packages:
        print("none of the packages is in the workspace", file=sys.stderr)
        return 2

    best, unknown = None, []
    for name, version, local in sorted(compiled_crates(args.repo, packages, args.target)):
        if local:
            continue  # workspace members: their rust-version is the declared one
        manifest = registry_manifest(name, version)
        if manifest is None:
            unknown.append(f"{name} {version}")
            continue
        with open(manifest, "rb") as f:
            rv = tomllib.load(f).get("package", {}).get("rust-version")
        if isinstance(rv, str) and (best is None or version_tuple(rv) > best[0]):
            best = (version_tuple(rv), rv, name, version)
    if unknown:
        print("not in the cargo registry cache (run cargo fetch --locked): " + ", ".join(unknown),
              file=sys.stderr)
        return 2
    if best is None:
        print("no crate declares a rust-version", file=sys.stderr)
        return 2
    print(f"{best[1]} {best[2]} {best[3]}  (packages: {' '.join(packages)}; target {args.target})")
    if args.max and best[0] > version_tuple(args.max):
        print(f"needs Rust {best[1]}, above {args.max}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Runs every check and test of the workspace: formatting, clippy, unit,
# integration, doc and interop tests (python-tuf), and compiles fuzz targets
# and benchmarks. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "python-tuf venv for interop tests"
SECUREEV_PYTHON="$(bash scripts/python-venv.sh)"
export SECUREEV_PYTHON
echo "SECUREEV_PYTHON=$SECUREEV_PYTHON"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

step "end-to-end: backend over TLS + dbus-daemon + secureev-otad + secureevctl (the demo)"
SECUREEV_DEMO_PROFILE=debug bash scripts/demo.sh

step "fuzz targets compile"
(cd fuzz && cargo check --bins --quiet)

step "systemd units, D-Bus policy (real dbus-daemon), exposure scores"
bash systemd/tests/run.sh

step "Yocto layer: crates include up to date, oelint-adv"
bash yocto-layer/tests/run.sh

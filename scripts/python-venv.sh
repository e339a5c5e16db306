#!/usr/bin/env bash
# Create (or reuse) the Python virtual environment for the python-tuf interop
# tests and the schemathesis run against the server's OpenAPI document
# (server/tests/schemathesis.rs), and print the path of its python, for
# SECUREEV_PYTHON:
#
#   export SECUREEV_PYTHON="$(scripts/python-venv.sh)"
#   cargo test -p secureev-tuf-conformance
#
# The venv goes to $SECUREEV_VENV, or .venv at the root of the workspace.
# Idempotent: a venv that already has the pinned versions is left alone.
# Progress goes to stderr; stdout carries only the python path.
set -euo pipefail

# The versions the interop tests were written and run against.
TUF_VERSION=7.0.1
SECURESYSTEMSLIB_VERSION=1.6.0
CRYPTOGRAPHY_VERSION=50.0.2
SCHEMATHESIS_VERSION=4.32.5

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SECUREEV_VENV:-$root/.venv}"
python="$venv/bin/python"

wanted() {
    "$python" - "$TUF_VERSION" "$SECURESYSTEMSLIB_VERSION" "$CRYPTOGRAPHY_VERSION" "$SCHEMATHESIS_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(["tuf", "securesystemslib", "cryptography", "schemathesis"], sys.argv[1:]))
sys.exit(0 if all(version(p) == v for p, v in want.items()) else 1)
EOF
}

if [ ! -x "$python" ]; then
    echo "creating $venv" >&2
    python3 -m venv "$venv" >&2
fi
if ! wanted; then
    echo "installing tuf==$TUF_VERSION securesystemslib[crypto]==$SECURESYSTEMSLIB_VERSION schemathesis==$SCHEMATHESIS_VERSION into $venv" >&2
    "$python" -m pip install --quiet --disable-pip-version-check \
        "tuf==$TUF_VERSION" \
        "securesystemslib[crypto]==$SECURESYSTEMSLIB_VERSION" \
        "cryptography==$CRYPTOGRAPHY_VERSION" \
        "schemathesis==$SCHEMATHESIS_VERSION" >&2
    wanted || { echo "venv $venv does not have the pinned versions" >&2; exit 1; }
fi
echo "$python"

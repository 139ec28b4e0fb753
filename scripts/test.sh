#!/usr/bin/env bash
# The whole test suite: host packages (idempotent), formatting, lints, then every unit,
# component and end-to-end test of the workspace with the real components.
# Run as root: the end-to-end tests build images with mmdebstrap and run runc and QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${VFARM_TEST_THREADS:-4}"
echo "== web UI (Chromium)"
node tests/web/deploy.test.mjs
echo "== python client"
.venv/bin/pytest -q clients/python/tests
echo "== schemathesis"
bash scripts/schemathesis.sh

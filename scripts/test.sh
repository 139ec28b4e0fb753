#!/usr/bin/env bash
# The whole test suite: host packages (idempotent), formatting, lints, every unit, component
# and end-to-end test of the workspace with the real components, the web UI in headless
# Chromium, the Python client against a real service, and schemathesis on the OpenAPI
# document. Every step runs even when an earlier one failed; the summary names the failures
# and the exit status is 1 if there were any.
# Run as root: the end-to-end tests build images with mmdebstrap and run runc and QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps
failed=()
step() {
  local name=$1
  shift
  echo "== $name"
  "$@" || failed+=("$name")
}
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo test" cargo test --workspace --locked --no-fail-fast -- --test-threads="${VFARM_TEST_THREADS:-4}"
# The steps below drive the debug binary that `cargo test` built.
step "web UI (Chromium)" node tests/web/deploy.test.mjs
step "python client" .venv/bin/pytest -q clients/python/tests
step "schemathesis" bash scripts/schemathesis.sh
if ((${#failed[@]})); then
  printf '== FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "== all steps passed"

#!/usr/bin/env bash
# The whole test suite: host packages (idempotent), formatting, lints, every unit, component
# and end-to-end test of the workspace with the real components, the web UI in headless
# Chromium, the Python client against a real service, and schemathesis on the OpenAPI
# document; the end-to-end tests, the web UI and the Python client also run a second time
# with the state in PostgreSQL. Every step runs even when an earlier one failed; the summary names the failures
# and the exit status is 1 if there were any.
# Run as root: the end-to-end tests build images with mmdebstrap and run runc and QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps
failed=()
# Each step prints its time and the disk left after it: CI's limits are 30 minutes and a
# disk smaller than a developer's.
step() {
  local name=$1 t0=$SECONDS
  shift
  echo "== $name"
  "$@" || failed+=("$name")
  echo "== $name: $((SECONDS - t0)) s; $(df -h --output=avail . | tail -n 1 | tr -d ' ') free"
}
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
# The checked-in OpenAPI document (a unit test keeps it equal to what the service serves).
step "openapi-spec-validator" .venv/bin/openapi-spec-validator docs/openapi.json
# The state store's tests run on SQLite and on the PostgreSQL that setup.sh started.
export VFARM_TEST_POSTGRES="${VFARM_TEST_POSTGRES:-postgres://vfarm:vfarm@127.0.0.1/vfarm_test}"
step "cargo test" cargo test --workspace --locked --no-fail-fast -- --test-threads="${VFARM_TEST_THREADS:-4}"
# The end-to-end suite again with the binary's state in PostgreSQL (one schema per data dir;
# the previous run's schemas are dropped first). Nodes in the several-hosts tests keep their
# own records in SQLite: a namespace does not reach the database on loopback. The test of two
# services sharing one PostgreSQL schema ran on PostgreSQL in the first pass already.
# The three VM-only binaries (their records take the same store calls as the oci tests; under
# TCG they cost 5 minutes) run in this pass only with VFARM_PG_FULL=1, to keep CI under 30
# minutes. Every other test binary of crates/vfarm, present or future, runs; the README tour
# (an image built from scratch, commands the other tests cover) runs in the first pass only.
pg_e2e() {
  PGPASSWORD=vfarm psql -qAt -h 127.0.0.1 -U vfarm vfarm_test -c \
    "SELECT format('DROP SCHEMA %I CASCADE;', nspname) FROM pg_namespace WHERE nspname ~ '^(d|t)_'" |
    PGPASSWORD=vfarm psql -q -h 127.0.0.1 -U vfarm vfarm_test >/dev/null
  local t tests=()
  for t in crates/vfarm/tests/*.rs; do
    t=$(basename "$t" .rs)
    case "$t" in
    qemu_cli | qemu_full | qemu_migrate) [[ ${VFARM_PG_FULL:-} == 1 ]] || continue ;;
    esac
    tests+=(--test "$t")
  done
  echo "PostgreSQL pass: ${tests[*]}"
  VFARM_DATABASE="$VFARM_TEST_POSTGRES" VFARM_DATABASE_SCHEMA=per-data-dir \
    cargo test -p vfarm "${tests[@]}" --locked --no-fail-fast -- --test-threads="${VFARM_TEST_THREADS:-4}" \
    --skip two_services_share_one_postgresql --skip the_readme_tour_runs
}
step "cargo test (end-to-end on PostgreSQL)" pg_e2e
# The steps below drive the debug binary that `cargo test` built.
step "web UI (Chromium)" node tests/web/deploy.test.mjs
step "python client" .venv/bin/pytest -q clients/python/tests
step "schemathesis" bash scripts/schemathesis.sh
on_pg() { VFARM_DATABASE="$VFARM_TEST_POSTGRES" VFARM_DATABASE_SCHEMA=per-data-dir "$@"; }
step "web UI (Chromium, PostgreSQL)" on_pg node tests/web/deploy.test.mjs
step "python client (PostgreSQL)" on_pg .venv/bin/pytest -q clients/python/tests
if ((${#failed[@]})); then
  printf '== FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "== all steps passed"

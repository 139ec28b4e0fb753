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
# The test binaries are built once, then run in two lanes at the same time: the binaries
# named in LANE2 (first pass: the VM-heavy ones) in one, everything else in the other, so
# that the lanes take about as long. Each binary runs from its package's directory, as
# `cargo test` runs it; each lane prints its binaries' times and its own log when it ends.
THREADS="${VFARM_TEST_THREADS:-4}"
BINS=target/test-binaries.txt
LANE2=" vfarm/qemu_full vfarm/qemu_cli vfarm/qemu_migrate vfarm-driver/split_migration vfarm-driver/qemu vfarm-qemu/e2e "
build_tests() {
  cargo test --workspace --locked --no-run --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test)
      | (.manifest_path | rtrimstr("/Cargo.toml")) as $dir
      | "\($dir | split("/") | last) \(.target.name) \($dir) \(.executable)"' \
      >"$BINS"
  echo "$(wc -l <"$BINS") test binaries"
}
# lane NAME 2|1 [ARGS…]: run the binaries of LANE2 (2) or all others (1), each with ARGS;
# fails if any failed.
lane() {
  local name=$1 which=$2 rc=0 pkg target dir exe t0 in2
  shift 2
  while read -r pkg target dir exe; do
    in2=1
    [[ $LANE2 == *" $pkg/$target "* ]] && in2=2
    [[ $which == "$in2" ]] || continue
    t0=$SECONDS
    (cd "$dir" && "$exe" "$@") || { rc=1; echo "== FAILED: $pkg/$target"; }
    echo "== $name: $pkg/$target: $((SECONDS - t0)) s"
  done <"$BINS"
  return $rc
}
# Both lanes at once; their logs in turn; fails if either failed.
two_lanes() {
  local rc=0
  lane "$1 (lane 2)" 2 "${@:2}" >target/lane-2.log 2>&1 &
  local second=$!
  lane "$1" 1 "${@:2}" >target/lane-1.log 2>&1 || rc=1
  wait "$second" || rc=1
  cat target/lane-1.log target/lane-2.log
  echo "== the five slowest:"
  grep -h "^== .*: [0-9]* s$" target/lane-1.log target/lane-2.log | sort -t: -k3 -rn | head -5
  return $rc
}
step "build the tests" build_tests
step "cargo test" two_lanes "cargo test" --test-threads="$THREADS"
step "doc tests" cargo test --workspace --locked --doc
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
  # The end-to-end binaries of crates/vfarm (integration tests), the VM-only ones as said.
  local pkg target dir exe
  : >"$BINS.pg"
  while read -r pkg target dir exe; do
    [[ $pkg == vfarm && $dir == */crates/vfarm && $exe == */deps/* ]] || continue
    [[ -f crates/vfarm/tests/$target.rs ]] || continue
    case "$target" in
    qemu_cli | qemu_full | qemu_migrate) [[ ${VFARM_PG_FULL:-} == 1 ]] || continue ;;
    esac
    echo "$pkg $target $dir $exe" >>"$BINS.pg"
  done <"$BINS"
  echo "PostgreSQL pass: $(cut -d' ' -f2 "$BINS.pg" | tr '\n' ' ')"
  (
    export VFARM_DATABASE="$VFARM_TEST_POSTGRES" VFARM_DATABASE_SCHEMA=per-data-dir
    BINS="$BINS.pg"
    # No VMs in this pass: the three longest binaries share the second lane.
    LANE2=" vfarm/image_farm vfarm/jobs vfarm/service_api "
    two_lanes "PostgreSQL" --test-threads="$THREADS" \
      --skip two_services_share_one_postgresql --skip the_readme_tour_runs
  )
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

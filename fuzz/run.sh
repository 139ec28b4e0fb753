#!/usr/bin/env bash
# Build and run every fuzz target for SECONDS each (default 600), one after the other, and
# print per target: executions, exec/s, coverage (edges), features and crashes.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]   (exits non-zero if any target crashed)
# Needs `cargo install --locked cargo-fuzz`; runs on stable Rust (no sanitizer, so no -Z flags).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(spec_toml imagelist api_bodies osfarm_query jsdl grid_toml)
fi
command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz is missing: cargo install --locked cargo-fuzz" >&2
    exit 2
}
# Debug assertions on: integer overflow is a finding too, as it would be in a debug build.
flags=(+stable fuzz)
opts=(--sanitizer none --debug-assertions)
cargo "${flags[@]}" build "${opts[@]}"
mkdir -p logs
failed=0
printf '%-14s %12s %8s %8s %8s %8s\n' target executions exec/s edges features crashes
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    # The first corpus directory receives what the fuzzer finds; seeds/ is only read.
    rc=0
    cargo "${flags[@]}" run "${opts[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
    after=$(find "artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?(exit $rc)"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
    edges=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
    line=$(printf '%-14s %12s %8s %8s %8s %8s' "$t" "${execs:-?}" "${rate:-?}" "${edges:-?}" "${ft:-?}" "$crashes")
    echo "$line"
    if [ "$rc" -ne 0 ] || [ "$crashes" != 0 ]; then
        failed=1
        echo "  $t crashed: see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
    fi
done
exit "$failed"

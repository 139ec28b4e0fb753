#!/usr/bin/env bash
# State store operation rates, PostgreSQL against SQLite in the same run (issue 8), as the
# Markdown table of BENCHMARKS.md's `store` section. Needs the PostgreSQL that
# scripts/setup.sh starts. Usage: crates/vfarm-store/benches/store.sh [OPERATIONS]
set -euo pipefail
cd "$(dirname "$0")/../../.."
export VFARM_TEST_POSTGRES="${VFARM_TEST_POSTGRES:-postgres://vfarm:vfarm@127.0.0.1/vfarm_test}"
cargo build -q --release --locked -p vfarm-store --features test-util --example backend_ops
target="${CARGO_TARGET_DIR:-target}"
"$target/release/examples/backend_ops" "${1:-2000}" 2>/dev/null

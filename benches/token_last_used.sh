#!/usr/bin/env bash
# Token authentication throughput (issue 24, acceptance 6): requests/s of
# `GET /api/v1/whoami` with a bearer token, with the `last_used` write on every request
# (before) and at most once a minute per token (after), in the same run, over one SQLite
# state file. Prints the Markdown section for BENCHMARKS.md ("Token authentication").
#
#   benches/token_last_used.sh [SECONDS] [CONNECTIONS]   (default 10 and 32; needs wrk)
#
# The server is crates/vfarm-api/examples/whoami_server.rs: the service's router on two
# ports; `before` adds a layer that runs the old per-request UPDATE. wrk (2 threads) runs
# each side three times, alternating; the medians are reported.
# VFARM_BENCH_PROFILE=debug uses a debug build (default release).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONNS=${2:-32}
PROFILE=${VFARM_BENCH_PROFILE:-release}
command -v wrk >/dev/null || { echo "token_last_used.sh: wrk is missing (scripts/setup.sh --deps)" >&2; exit 4; }
flag=(); [ "$PROFILE" = release ] && flag=(--release)
cargo build "${flag[@]}" --locked -q -p vfarm-api --example whoami_server
BIN=target/$PROFILE/examples/whoami_server
WORK=$(mktemp -d /var/tmp/vfarm-token-bench.XXXXXX)
chmod 755 "$WORK" # instances run as an unprivileged host id that must pass through it
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN" "$WORK/data" >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 100); do [ "$(wc -l <"$WORK/out")" -ge 3 ] && break; sleep 0.1; done
TOKEN=$(awk '/^token /{print $2}' "$WORK/out")
BEFORE=$(awk '/^before /{print $2}' "$WORK/out")
AFTER=$(awk '/^after /{print $2}' "$WORK/out")
[ -n "$TOKEN" ] && [ -n "$AFTER" ] || { cat "$WORK/err" >&2; exit 1; }
rps() {
  wrk -t2 -c"$CONNS" -d"${SECS}s" -H "Authorization: Bearer $TOKEN" "$1/api/v1/whoami" |
    awk '/^Requests\/sec:/{print $2} /Non-2xx/{print "non-2xx " $0 > "/dev/stderr"}'
}
b=(); a=()
for _ in 1 2 3; do b+=("$(rps "$BEFORE")"); a+=("$(rps "$AFTER")"); done
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
mb=$(median "${b[@]}"); ma=$(median "${a[@]}")
ratio=$(awk -v a="$ma" -v b="$mb" 'BEGIN{printf "%.2f", a/b}')
cores=$(nproc); mem=$(awk '/MemTotal/{printf "%d GiB", $2/1048576}' /proc/meminfo)
cat <<MD
Reproduce: \`benches/token_last_used.sh $SECS $CONNS\` (wrk; $PROFILE build of
\`crates/vfarm-api/examples/whoami_server.rs\`, SQLite state file in WAL mode).

Measured $(date -u +%Y-%m-%dT%H:%MZ) on $cores cores, $mem; wrk -t2 -c$CONNS, ${SECS} s per run, medians of 3 alternating runs.

| benchmark | vfarm | baseline (same run) | ratio |
|---|---|---|---|
| \`GET /api/v1/whoami\`, bearer token: requests/s | last_used at most once a minute: $ma | last_used written every request: $mb | $ratio |

Raw requests/s: before ${b[*]} · after ${a[*]}
MD

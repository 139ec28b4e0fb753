#!/usr/bin/env bash
# Batch-job benchmarks (issue 7). Every figure is measured beside its baseline in the same run,
# on this machine, and printed as a Markdown table for BENCHMARKS.md ("Batch jobs").
#
#   benches/jobs.sh [N] [LATENCY_SAMPLES]   (default 200 and 50; needs root, scripts/setup.sh done)
#
# 1. throughput: N `true` jobs (oci) through the queue (submitted first, then `vfarm serve`
#    dispatches them; 1 CPU each, and 0.25 CPU each) vs N sequential `vfarm run -- true`
# 2. dispatch latency on an idle host: submit → running (the runner started `vfarm run`) and
#    submit → claimed, p50/p99 over LATENCY_SAMPLES jobs submitted one at a time
#
# VFARM_BIN selects the binary (default target/release/vfarm); VFARM_BENCH_TAR a minbase
# rootfs tarball to import (default: built with `vfarm image build --suite bookworm`).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
SAMPLES=${2:-50}
BIN=${VFARM_BIN:-target/release/vfarm}
[ -x "$BIN" ] || cargo build --release --locked -p vfarm >/dev/null 2>&1
WORK=$(mktemp -d /var/tmp/vfarm-jobs-bench.XXXXXX)
chmod 755 "$WORK" # instances run as an unprivileged host id that must pass through it
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export VFARM_DATA_DIR=$WORK/data
unset VFARM_OUTPUT VFARM_JOBS_CONFIG

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }
rate() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }

if [ -n "${VFARM_BENCH_TAR:-}" ]; then
  "$BIN" image import "$VFARM_BENCH_TAR" --name minbase >/dev/null
else
  "$BIN" image build --suite bookworm --format tar --name minbase >/dev/null 2>&1
fi
# Warm: the first instance of an image unpacks its rootfs once.
"$BIN" run --image minbase -- true

serve() {
  "$BIN" serve --listen 127.0.0.1:0 >"$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  sleep 0.3
}
unserve() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=; }

# 1a. baseline: sequential vfarm run
t0=$(now)
for i in $(seq "$N"); do "$BIN" run --image minbase -- true; done
t1=$(now)
SEQ=$(secs "$t0" "$t1")

# 1b. through the queue
queue_run() {
  local cpus=$1 ids=()
  t0=$(now)
  for i in $(seq "$N"); do ids+=("$("$BIN" job submit --image minbase --cpus "$cpus" -- true 2>/dev/null)"); done
  t1=$(now)
  serve
  "$BIN" job wait "${ids[@]}" >/dev/null
  t2=$(now)
  unserve
  local failed
  failed=$("$BIN" job ls --output json | python3 -c "import json,sys; print(sum(1 for j in json.load(sys.stdin) if j['state']!='succeeded'))")
  [ "$failed" = 0 ] || { echo "$failed jobs did not succeed" >&2; exit 1; }
  echo "$(secs "$t0" "$t1") $(secs "$t1" "$t2")"
}
read -r SUB1 RUN1 < <(queue_run 1)
read -r SUB4 RUN4 < <(queue_run 0.25)

# 2. dispatch latency, one job at a time on an idle host
serve
lat=()
for i in $(seq "$SAMPLES"); do
  id=$("$BIN" job submit --image minbase -- true 2>/dev/null)
  "$BIN" job wait "$id" >/dev/null
  lat+=("$id")
done
unserve
read -r RUN50 RUN99 CLM50 CLM99 < <("$BIN" job ls --output json | python3 -c "
import json, sys, statistics
from datetime import datetime
ids = set(int(x) for x in sys.argv[1:])
t = lambda s: datetime.fromisoformat(s.replace('Z', '+00:00')).timestamp()
jobs = [j for j in json.load(sys.stdin) if j['id'] in ids]
run = sorted(t(j['started']) - t(j['submitted']) for j in jobs)
clm = sorted(t(j['claimed']) - t(j['submitted']) for j in jobs)
q = lambda v, p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))] * 1000
print(f'{q(run, .5):.0f} {q(run, .99):.0f} {q(clm, .5):.0f} {q(clm, .99):.0f}')
" "${lat[@]}")

cat <<TABLE
Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, oci driver (runc), $N jobs of \`true\`.

| benchmark | vfarm | baseline (same run) | ratio |
|---|---|---|---|
| $N jobs through the queue, 1 CPU each (2 at a time) | $(rate "$N" "$RUN1") jobs/s (${RUN1} s; submitting took ${SUB1} s) | $N sequential \`vfarm run -- true\`: $(rate "$N" "$SEQ") jobs/s (${SEQ} s) | $(python3 -c "print(f'{float(\"$SEQ\")/float(\"$RUN1\"):.2f}')") |
| $N jobs through the queue, 0.25 CPU each (8 at a time) | $(rate "$N" "$RUN4") jobs/s (${RUN4} s; submitting took ${SUB4} s) | the same sequential runs | $(python3 -c "print(f'{float(\"$SEQ\")/float(\"$RUN4\"):.2f}')") |
| dispatch latency submit → running, idle host | p50 ${RUN50} ms, p99 ${RUN99} ms | submit → claimed: p50 ${CLM50} ms, p99 ${CLM99} ms | — |
TABLE

#!/usr/bin/env bash
# The usage overview's cost (issue 22, acceptance 5): the CPU time `vfarm serve` spends per
# second with N running oci instances (its sampler reads each one's cgroup every 5 s),
# beside the same service with no instance in the same run; and the latency of
# `instance ls --stats` through the service (the sampler's history) and locally (one 2 s
# measurement of its own). Prints the Markdown section for BENCHMARKS.md ("Usage sampling").
#
#   benches/stats.sh [INSTANCES] [SECONDS]   (default 200 and 60)
#
# Real instances: minbase (VFARM_MINBASE_TAR, default target/tmp/minbase-bookworm.tar, which
# the test suite builds) running `sleep`, through runc. The service's CPU time is read from
# /proc/<pid>/stat over SECONDS. VFARM_BIN selects the binary (default target/release/vfarm,
# built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
SECS=${2:-60}
BIN=${VFARM_BIN:-target/release/vfarm}
TAR=${VFARM_MINBASE_TAR:-target/tmp/minbase-bookworm.tar}
[ -x "$BIN" ] || cargo build --release --locked -p vfarm >/dev/null 2>&1
[ -f "$TAR" ] || { echo "stats.sh: $TAR missing (cargo test -p vfarm --test instance_cli builds it)" >&2; exit 1; }
command -v runc >/dev/null || { echo "stats.sh: runc is missing: run scripts/setup.sh" >&2; exit 1; }
WORK=$(mktemp -d /var/tmp/vfarm-stats-bench.XXXXXX)
# Unprivileged instance roots must pass through it to the data dir.
chmod 755 "$WORK"
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  "$BIN" instance ls --output json 2>/dev/null | python3 -c 'import json,sys; print("\n".join(i["id"] for i in json.load(sys.stdin)))' \
    | xargs -r -P 4 -n 1 "$BIN" instance destroy >/dev/null 2>&1 || true
  # Never delete through a mount: a leftover instance keeps the dir, said loudly.
  if grep -q " $WORK/" /proc/self/mountinfo; then
    echo "stats.sh: instances left mounted under $WORK; not removed" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
export VFARM_DATA_DIR=$WORK/data
unset VFARM_OUTPUT VFARM_SERVER VFARM_TOKEN VFARM_DATABASE
mkdir -p "$VFARM_DATA_DIR"
"$BIN" image import "$TAR" --name minbase >/dev/null
TOKEN=$("$BIN" token create --user bench-admin)

start_serve() {
  "$BIN" serve --listen 127.0.0.1:0 --admin bench-admin >"$WORK/serve.out" 2>"$WORK/serve.err" &
  SERVE_PID=$!
  for _ in $(seq 100); do grep -q http "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
  BASE=$(grep -o 'http://[0-9.:]*' "$WORK/serve.out" | head -1)
  [ -n "$BASE" ] || { cat "$WORK/serve.err" >&2; exit 1; }
}
stop_serve() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=; }
# CPU seconds per second of the service and of its sampler thread (named `stats-sampler`)
# over SECS, after two sampling rounds have passed: "SERVICE SAMPLER".
serve_cpu() {
  sleep 11
  local task a b sa sb
  task=$(grep -l '^stats-sampler$' /proc/"$SERVE_PID"/task/*/comm | head -1)
  task=${task%/comm}
  a=$(awk '{print $14+$15}' "/proc/$SERVE_PID/stat")
  sa=$(sed 's/.*) //' "$task/stat" | awk '{print $12+$13}')
  sleep "$SECS"
  b=$(awk '{print $14+$15}' "/proc/$SERVE_PID/stat")
  sb=$(sed 's/.*) //' "$task/stat" | awk '{print $12+$13}')
  python3 -c "print(($b - $a) / 100 / $SECS, ($sb - $sa) / 100 / $SECS)"
}

start_serve
IDLE=$(serve_cpu)
stop_serve

T0=$(date +%s.%N)
seq "$N" | xargs -P 4 -I{} "$BIN" instance create --image minbase --name "s{}" -- sleep 7200 >/dev/null
CREATED=$(python3 -c "import time; print(round(time.time() - $T0, 1))")

start_serve
BUSY=$(serve_cpu)
# `instance ls --stats` through the service: 10 calls, the CLI's whole run each.
python3 - "$BIN" "$BASE" "$TOKEN" "$N" "$IDLE" "$BUSY" "$SECS" "$CREATED" <<'PY'
import json, os, statistics, subprocess, sys, time
BIN, BASE, TOKEN, N, IDLE, BUSY, SECS, CREATED = sys.argv[1:9]
N = int(N)
env = dict(os.environ, VFARM_TOKEN=TOKEN)
def timed(args, env):
    t = time.perf_counter()
    out = subprocess.run([BIN, *args], env=env, check=True, capture_output=True).stdout
    return (time.perf_counter() - t) * 1000, out
remote = []
for _ in range(10):
    ms, out = timed(["--server", BASE, "--output", "json", "instance", "ls", "--stats"], env)
    remote.append(ms)
rows = json.loads(out)
assert len(rows) == N, f"{len(rows)} rows, not {N}"
local = [timed(["--output", "json", "instance", "ls", "--stats"], os.environ)[0] for _ in range(3)]
(idle, idle_s), (busy, busy_s) = (map(float, x.split()) for x in (IDLE, BUSY))
print(f"Measured {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())} on {os.cpu_count()} cores "
      f"({os.path.basename(BIN)} {BIN}); {N} running oci instances (created in {CREATED} s, 4 at a time); "
      f"service CPU over {SECS} s after two sampling rounds.\n")
print("| benchmark | vfarm | baseline (same run) | ratio | goal |")
print("|---|---|---|---|---|")
print(f"| the sampler thread, {N} instances every 5 s | {busy_s * 100:.2f} % of one core | "
      f"no instances: {idle_s * 100:.2f} % | – | ≤ 2 % of one core |")
print(f"| `vfarm serve` in all (watcher, reaper, dispatcher too), {N} instances | {busy * 100:.2f} % of one core | "
      f"the same service, no instances: {idle * 100:.2f} % | {busy / max(idle, 1e-9):.1f} | – |")
print(f"| `instance ls --stats --server`, {N} rows (p50 of 10, CLI run included) | "
      f"{statistics.median(remote):.0f} ms | max {max(remote):.0f} ms | – | – |")
print(f"| local `instance ls --stats`, {N} rows (p50 of 3: two samples 2 s apart) | "
      f"{statistics.median(local):.0f} ms | the 2 s window | {statistics.median(local) / 2000:.2f} | – |")
PY

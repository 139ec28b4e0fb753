#!/usr/bin/env bash
# Service benchmarks (issue 5), each beside its baseline measured in the same run; prints the
# Markdown section for BENCHMARKS.md ("The service").
#
#   benches/service.sh [RECORDS] [CREATES]   (default 10000 and 100; root, scripts/setup.sh done)
#
# 1. creations/s through the API: CREATES `POST /api/v1/instances?wait=true` (oci, each a
#    running idle instance), 8 at a time, vs 20 sequential `vfarm instance create` on the CLI
# 2. list RECORDS instance records through the API (`GET /api/v1/instances` as an admin, who
#    sees all): p50/p99 of 100 sequential requests, request to last byte (the client does
#    not parse the 3.8 MB), vs `GET /api/v1/whoami` (the same
#    authentication and JSON, no records). The records are written into the state database
#    directly (stopped instances of the minbase image, 10 owners): the benchmark measures
#    listing, not creating.
# 3. memory of `vfarm serve` (VmRSS and peak VmHWM) with RECORDS records after the list runs,
#    vs right after start with none
#
# VFARM_BIN selects the binary (default target/release/vfarm); VFARM_BENCH_TAR a minbase
# rootfs tarball (default target/tmp/minbase-bookworm.tar, else built with mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-10000}
CREATES=${2:-100}
BIN=${VFARM_BIN:-target/release/vfarm}
[ -x "$BIN" ] || cargo build --release --locked -p vfarm >/dev/null 2>&1
TAR=${VFARM_BENCH_TAR:-target/tmp/minbase-bookworm.tar}
if [ ! -f "$TAR" ]; then
  mkdir -p "$(dirname "$TAR")"
  mmdebstrap --variant=minbase bookworm "$TAR" >/dev/null 2>&1
fi
WORK=$(mktemp -d /var/tmp/vfarm-service-bench.XXXXXX)
chmod 755 "$WORK" # instances run as an unprivileged host id that must pass through it
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  VFARM_DATA_DIR=$WORK/data "$BIN" instance ls --output json 2>/dev/null |
    python3 -c 'import json,sys; [print(i["id"]) for i in json.load(sys.stdin) if i["state"]!="stopped"]' |
    while read -r id; do VFARM_DATA_DIR=$WORK/data "$BIN" instance destroy "$id" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
export VFARM_DATA_DIR=$WORK/data
unset VFARM_OUTPUT VFARM_SERVER VFARM_TOKEN
"$BIN" image import "$TAR" --name minbase >/dev/null
# Warm: the first instance of an image unpacks its rootfs once.
"$BIN" run --image minbase -- true

"$BIN" serve --listen 127.0.0.1:0 --admin bench-admin >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
for _ in $(seq 50); do grep -q serving "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
BASE=$(grep -o 'http://[0-9.:]*' "$WORK/serve.out" | head -1)
ADMIN=$("$BIN" token create --user bench-admin)
USER=$("$BIN" token create --user bench-user)

python3 - "$BIN" "$BASE" "$ADMIN" "$USER" "$SERVE_PID" "$RECORDS" "$CREATES" "$WORK/data/state.db" <<'PY'
import json, os, platform, sqlite3, statistics, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

BIN, BASE, ADMIN, USER, PID, RECORDS, CREATES, DB = sys.argv[1:9]
RECORDS, CREATES = int(RECORDS), int(CREATES)

def req(token, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(BASE + path, data=data, method=method,
                               headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=600) as resp:
        return json.loads(resp.read() or b"null")

def mem():
    f = {}
    for line in open(f"/proc/{PID}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            f[k] = int(v.split()[0]) / 1024
    return f

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

mem0 = mem()

# 2-baseline before the records exist: whoami latency.
def lat(token, path, n=100):
    # Request to last byte of the answer; the client's JSON parsing is not the service's time.
    out = []
    for _ in range(n):
        r = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + token})
        t = time.perf_counter()
        with urllib.request.urlopen(r, timeout=600) as resp:
            resp.read()
        out.append((time.perf_counter() - t) * 1000)
    return out

# 1. creations/s through the API vs the CLI.
t = time.perf_counter()
cli_ids = []
for i in range(20):
    out = subprocess.run([BIN, "instance", "create", "--image", "minbase", "--output", "json"],
                         check=True, capture_output=True, text=True).stdout
    cli_ids.append(json.loads(out)["id"])
cli_rate = 20 / (time.perf_counter() - t)
for i in cli_ids:
    subprocess.run([BIN, "instance", "destroy", i], check=True, capture_output=True)

def create(_):
    return req(USER, "POST", "/api/v1/instances?wait=true", {"image": "minbase", "cpus": 0.1})["id"]
t = time.perf_counter()
with ThreadPoolExecutor(8) as ex:
    api_ids = list(ex.map(create, range(CREATES)))
api_rate = CREATES / (time.perf_counter() - t)
assert len(set(api_ids)) == CREATES
with ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda i: req(USER, "DELETE", f"/api/v1/instances/{i}"), api_ids))

# 2. seed RECORDS records, then list them.
img = json.loads(subprocess.run([BIN, "image", "ls", "--output", "json"], check=True,
                                capture_output=True, text=True).stdout)[0]["id"]
db = sqlite3.connect(DB, timeout=30)
now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
db.executemany(
    "INSERT INTO instances(id, name, image_id, driver, owner, state, exit_code, hostname, spec, created, started, expires, updated, error)"
    " VALUES (?, NULL, ?, 'oci', ?, 'stopped', 0, ?, '{}', ?, NULL, NULL, ?, NULL)",
    [(f"b{i:011x}", img, f"owner{i % 10}", f"vf-b{i:011x}", now, now) for i in range(RECORDS)])
db.commit(); db.close()
whoami = lat(ADMIN, "/api/v1/whoami")
n = len(req(ADMIN, "GET", "/api/v1/instances"))
assert n == RECORDS, n
listing = lat(ADMIN, "/api/v1/instances")
mem1 = mem()

date = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"""Measured {date} on {os.cpu_count()} cores ({cpu}), load {os.getloadavg()[0]:.1f}; `{' '.join(['benches/service.sh', str(RECORDS), str(CREATES)])}` with the release build.

| benchmark | result | baseline (same run) | ratio | goal |
|---|---|---|---|---|
| instance creations through the API (oci, running, 8 concurrent, {CREATES} creates) | {api_rate:.1f}/s | sequential `vfarm instance create` on the CLI: {cli_rate:.1f}/s | {api_rate/cli_rate:.2f} | ≥ 20/s: {'met' if api_rate >= 20 else '**not met**'} |
| list {RECORDS:,} instance records (`GET /api/v1/instances`, 100 requests) | p50 {pct(listing,50):.1f} ms, p99 {pct(listing,99):.1f} ms | `GET /api/v1/whoami`: p50 {pct(whoami,50):.2f} ms, p99 {pct(whoami,99):.2f} ms | {pct(listing,50)/pct(whoami,50):.0f}× (p50) | p50 ≤ 50 ms: {'met' if pct(listing,50) <= 50 else '**not met**'} |
| memory of `vfarm serve` with {RECORDS:,} records, after the lists | RSS {mem1['VmRSS']:.1f} MiB (peak {mem1['VmHWM']:.1f} MiB) | just started, no records: RSS {mem0['VmRSS']:.1f} MiB | {mem1['VmRSS']/mem0['VmRSS']:.2f} | ≤ 100 MB: {'met' if mem1['VmHWM'] * 1.048576 <= 100 else '**not met**'} |
""")
PY

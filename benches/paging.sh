#!/usr/bin/env bash
# Paged instance lists (issue 16, acceptance 7): p50/p90 of `GET /api/v1/instances?limit=50`
# over RECORDS instance records, beside the full list measured in the same run; prints the
# Markdown section for BENCHMARKS.md ("Paged lists").
#
#   benches/paging.sh [RECORDS] [REQUESTS]   (default 10000 and 300)
#
# A fresh data dir; the records are written into its SQLite state database directly (stopped
# oci instances of one image, 10 owners, created one second apart): the benchmark measures
# listing, not creating, and needs no container runtime. `vfarm serve` (release build) runs
# on loopback; the client is a sequential Python loop (urllib, one request at a time, kept
# out of the server's process), timing request to last byte without parsing the answer.
# Measured, as the admin (who sees all): the first page of 50; a page of 50 from the middle
# (the cursor of the `Link` after 5,000 rows); a page of one owner's instances (as that
# owner, a non-admin); and the whole list (no `limit`, 1/10 as many requests).
# VFARM_BIN selects the binary (default target/release/vfarm, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-10000}
REQUESTS=${2:-300}
BIN=${VFARM_BIN:-target/release/vfarm}
[ -x "$BIN" ] || cargo build --release --locked -p vfarm >/dev/null 2>&1
WORK=$(mktemp -d /var/tmp/vfarm-paging-bench.XXXXXX)
SERVE_PID=
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export VFARM_DATA_DIR=$WORK/data
unset VFARM_OUTPUT VFARM_SERVER VFARM_TOKEN VFARM_DATABASE
mkdir -p "$VFARM_DATA_DIR"
# Tokens first: this also makes the state database, which the records then go into.
ADMIN=$("$BIN" token create --user bench-admin)
OWNER=$("$BIN" token create --user owner3)

"$BIN" serve --listen 127.0.0.1:0 --admin bench-admin >"$WORK/serve.out" 2>"$WORK/serve.err" &
SERVE_PID=$!
for _ in $(seq 100); do grep -q serving "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
BASE=$(grep -o 'http://[0-9.:]*' "$WORK/serve.out" | head -1)
[ -n "$BASE" ] || { cat "$WORK/serve.err" >&2; exit 1; }

python3 - "$BASE" "$ADMIN" "$OWNER" "$RECORDS" "$REQUESTS" "$WORK/data/state.db" <<'PY'
import json, os, sqlite3, sys, time, urllib.request
from datetime import datetime, timedelta, timezone

BASE, ADMIN, OWNER, RECORDS, REQUESTS, DB = sys.argv[1:7]
RECORDS, REQUESTS = int(RECORDS), int(REQUESTS)

t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
def ts(i):
    return (t0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
db = sqlite3.connect(DB, timeout=30)
img = "0" * 64
db.execute("INSERT INTO images(id, name, spec, summary, origin, created) VALUES (?, 'bench', '{}', 'bench', 'import', ?)",
           (img, ts(0)))
db.executemany(
    "INSERT INTO instances(id, name, image_id, driver, owner, state, exit_code, hostname, spec, created, started, expires, updated, error)"
    " VALUES (?, NULL, ?, 'oci', ?, 'stopped', 0, ?, '{}', ?, NULL, NULL, ?, NULL)",
    [(f"b{i:011x}", img, f"owner{i % 10}", f"vf-b{i:011x}", ts(i), ts(i)) for i in range(RECORDS)])
db.commit(); db.close()

def get(token, path):
    r = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(r, timeout=600) as resp:
        return resp.read(), resp.headers.get("Link")

def lat(token, path, n):
    get(token, path)  # warm
    out = []
    for _ in range(n):
        r = urllib.request.Request(BASE + path, headers={"Authorization": "Bearer " + token})
        t = time.perf_counter()
        with urllib.request.urlopen(r, timeout=600) as resp:
            resp.read()
        out.append((time.perf_counter() - t) * 1000)
    return out

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

body, _ = get(ADMIN, "/api/v1/instances")
assert len(json.loads(body)) == RECORDS
body, link = get(ADMIN, "/api/v1/instances?limit=50")
assert len(json.loads(body)) == 50 and link, link
# The middle: follow the Link of pages of 1,000 until half the records are behind.
path, behind = "/api/v1/instances?limit=1000", 0
while behind < RECORDS // 2:
    body, link = get(ADMIN, path)
    behind += len(json.loads(body))
    path = link.split(">")[0].lstrip("<")
mid = path.replace("limit=1000", "limit=50")
body, _ = get(ADMIN, mid)
assert len(json.loads(body)) == 50

first = lat(ADMIN, "/api/v1/instances?limit=50", REQUESTS)
middle = lat(ADMIN, mid, REQUESTS)
owner = lat(OWNER, "/api/v1/instances?limit=50", REQUESTS)
full = lat(ADMIN, "/api/v1/instances", max(10, REQUESTS // 10))

date = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def row(what, xs, n):
    return f"| {what} ({n} requests) | p50 {pct(xs,50):.2f} ms, p90 {pct(xs,90):.2f} ms | p50 {pct(full,50):.1f} ms, p90 {pct(full,90):.1f} ms | {pct(full,50)/pct(xs,50):.0f}× faster (p50) |"
goal = pct(first, 50) <= 5 and pct(middle, 50) <= 5
print(f"""Measured {date} on {os.cpu_count()} cores ({cpu}), load {os.getloadavg()[0]:.1f}; `benches/paging.sh {RECORDS} {REQUESTS}` with the release build, SQLite. Client: a sequential Python urllib loop on the same machine, request to last byte.

| benchmark ({RECORDS:,} instance records) | result | baseline: the whole list, no `limit` (same run, {len(full)} requests) | ratio |
|---|---|---|---|
{row("`GET /api/v1/instances?limit=50`, admin, first page", first, REQUESTS)}
{row("the same, a page from the middle (`cursor` after 5,000)", middle, REQUESTS)}
{row("`?limit=50` as a non-admin owning 1/10 of them", owner, REQUESTS)}

Goal (issue 16): p50 ≤ 5 ms with `limit=50`: {'met' if goal else '**not met**'}.
""")
PY

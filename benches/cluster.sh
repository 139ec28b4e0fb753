#!/usr/bin/env bash
# Several-hosts benchmarks (issue 8), each beside its baseline measured in the same run;
# prints the Markdown section for BENCHMARKS.md ("Several hosts").
#
#   benches/cluster.sh [INSTANCES] [MIGRATIONS]   (default 1000 and 6; root, setup.sh done)
#
# 1. placement: INSTANCES oci instances (each a sleeping process) created through the
#    control's API (`POST /api/v1/instances?wait=true`, 8 at a time) and placed over 3 nodes,
#    each `vfarm node` in its own network namespace on a bridge; creations/s, vs the same
#    number created through the API of one `vfarm serve` without nodes (the single-host
#    shape), also 8 at a time.
# 2. migration downtime across namespaces: a 256 MiB idle VM (fast profile, TCG) moved
#    between node1 and node2 through the control (`POST /api/v1/instances/{id}/migrate`,
#    disk copied over NBD, RAM over the bridge) MIGRATIONS times (default 6, alternating);
#    QEMU's downtime, vs the same VM moved between two data dirs on one host in the same run
#    (`vfarm instance migrate --to DIR`, loopback).
#
# The nodes over-commit CPUs 200-fold (`[placement] cpu_ratio = 200`): an instance without
# --cpus counts one CPU, and 2-CPU nodes take 400 each.
# VFARM_BIN selects the binary (default target/release/vfarm); VFARM_BENCH_TAR a minbase
# rootfs tarball (default target/tmp/minbase-bookworm.tar, else built with mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
MIGRATIONS=${2:-6}
BIN=$(realpath "${VFARM_BIN:-target/release/vfarm}")
[ -x "$BIN" ] || { cargo build --release --locked -p vfarm >/dev/null 2>&1; BIN=$(realpath target/release/vfarm); }
TAR=${VFARM_BENCH_TAR:-target/tmp/minbase-bookworm.tar}
if [ ! -f "$TAR" ]; then
  mkdir -p "$(dirname "$TAR")"
  mmdebstrap --variant=minbase bookworm "$TAR" >/dev/null 2>&1
fi
WORK=$(mktemp -d /var/tmp/vfarm-cluster-bench.XXXXXX)
chmod 755 "$WORK" # instances run as an unprivileged host id that must pass through it
TAG=$(printf '%x' $(($$ & 0xfffff)))
BR=vfb$TAG
NET=10.199.$(($$ % 250))
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for d in "$WORK"/node* "$WORK"/single "$WORK"/control "$WORK"/local2; do
    [ -d "$d" ] || continue
    VFARM_DATA_DIR=$d "$BIN" instance ls --output json 2>/dev/null |
      python3 -c 'import json,sys; [print(i["id"]) for i in json.load(sys.stdin)]' |
      xargs -r -P 4 -n 20 env VFARM_DATA_DIR="$d" "$BIN" instance destroy >/dev/null 2>&1 || true
  done
  for i in 1 2 3; do ip netns del "vfn$TAG-$i" 2>/dev/null || true; done
  ip link del "$BR" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
unset VFARM_OUTPUT VFARM_SERVER VFARM_TOKEN VFARM_DATABASE

wait_line() { # FILE PATTERN
  for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "cluster.sh: no \`$2\` in $1:" >&2; cat "$1" "${1%.out}.err" >&2; exit 1
}

# The network: a bridge here, one namespace per node.
ip link add "$BR" type bridge
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up
for i in 1 2 3; do
  ip netns add "vfn$TAG-$i"
  ip link add "vfh$TAG$i" type veth peer name eth0 netns "vfn$TAG-$i"
  ip link set "vfh$TAG$i" master "$BR" up
  ip -n "vfn$TAG-$i" addr add "$NET.$((10 + i))/24" dev eth0
  ip -n "vfn$TAG-$i" link set eth0 up
  ip -n "vfn$TAG-$i" link set lo up
done

C=$WORK/control
mkdir -p "$C"
export VFARM_DATA_DIR=$C
"$BIN" image import "$TAR" --name minbase >/dev/null
"$BIN" ca init --subject "/C=XX/O=vfarm bench/CN=Site CA" >/dev/null
"$BIN" ca issue-host "$NET.1" --out "$C/srv" >/dev/null
printf '[placement]\npolicy = "spread"\ncpu_ratio = 200\n' >"$C/serve.toml"
"$BIN" serve --listen "$NET.1:0" --tls-cert "$C/srv/hostcert.pem" --tls-key "$C/srv/hostkey.pem" \
  --client-ca-dir "$C/ca/certificates" >"$WORK/control.out" 2>"$WORK/control.err" &
PIDS+=($!)
wait_line "$WORK/control.out" serving
URL=$(grep -o 'https://[0-9.:]*' "$WORK/control.out" | head -1)
TOKEN=$("$BIN" token create --user bench-user)
for i in 1 2 3; do
  T=$("$BIN" host add "node$i" --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  mkdir -p "$WORK/node$i"
  VFARM_DATA_DIR=$WORK/node$i nsenter --net="/var/run/netns/vfn$TAG-$i" "$BIN" node --control "$URL" \
    --name "node$i" --listen "$NET.$((10 + i)):8751" --ca "$C/ca/ca.pem" --token "$T" \
    >"$WORK/node$i.out" 2>"$WORK/node$i.err" &
  PIDS+=($!)
  wait_line "$WORK/node$i.out" serving
done
for _ in $(seq 100); do
  up=$("$BIN" host ls --output json | python3 -c 'import json,sys; print(sum(h["state"]=="up" for h in json.load(sys.stdin)))')
  [ "$up" = 3 ] && break
  sleep 0.2
done

# The single-host baseline: one service, no nodes, same API and concurrency.
S=$WORK/single
mkdir -p "$S"
VFARM_DATA_DIR=$S "$BIN" image import "$TAR" --name minbase >/dev/null
VFARM_DATA_DIR=$S "$BIN" serve --listen 127.0.0.1:0 >"$WORK/single.out" 2>"$WORK/single.err" &
PIDS+=($!)
wait_line "$WORK/single.out" serving
SURL=$(grep -o 'http://[0-9.:]*' "$WORK/single.out" | head -1)
STOKEN=$(VFARM_DATA_DIR=$S "$BIN" token create --user bench-user)

# The bootable image for the migrations (built once on the control; nodes fetch it).
"$BIN" image build --suite bookworm --boot vm --format qcow2 --name vm >/dev/null

python3 - "$URL" "$TOKEN" "$C/ca/ca.pem" "$SURL" "$STOKEN" "$N" "$BIN" "$C" "$MIGRATIONS" "$WORK" <<'PY'
import json, os, ssl, sys, time, urllib.request, subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

URL, TOKEN, CA, SURL, STOKEN, N, BIN, CDIR, MIGRATIONS, WORK = sys.argv[1:11]
N, MIGRATIONS = int(N), int(MIGRATIONS)
ctx = ssl.create_default_context(cafile=CA)

def req(base, token, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(base + path, data=data, method=method,
                               headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=600, context=ctx if base.startswith("https") else None) as resp:
        return json.loads(resp.read() or b"null")

def burst(base, token):
    body = {"image": "minbase", "command": ["sleep", "infinity"]}
    t = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(lambda _: req(base, token, "POST", "/api/v1/instances?wait=true", body), range(N)))
    return out, N / (time.perf_counter() - t)

placed, rate = burst(URL, TOKEN)
assert all(v["state"] == "running" for v in placed), Counter(v["state"] for v in placed)
spread = Counter(v["host"] for v in placed)
single, base_rate = burst(SURL, STOKEN)
assert all(v["state"] == "running" for v in single)

# Free the nodes before the VM moves: the sleeping instances go.
with ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda v: req(URL, TOKEN, "DELETE", f"/api/v1/instances/{v['id']}"), placed))
    list(ex.map(lambda v: req(SURL, STOKEN, "DELETE", f"/api/v1/instances/{v['id']}"), single))

def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

vm = req(URL, TOKEN, "POST", "/api/v1/instances?wait=true",
         {"image": "vm", "driver": "qemu", "profile": "fast", "memory": "256M", "cpus": 1, "host": "node1"})
cross = []
for k in range(MIGRATIONS):
    to = "node2" if k % 2 == 0 else "node1"
    m = req(URL, TOKEN, "POST", f"/api/v1/instances/{vm['id']}/migrate", {"to": to})
    assert m["state"] == "running", m
    cross.append(m["downtime_ms"])
req(URL, TOKEN, "DELETE", f"/api/v1/instances/{vm['id']}")

# Baseline: the same VM between two data dirs of one host (the local command).
env = dict(os.environ, VFARM_DATA_DIR=CDIR)
dirs = [CDIR, os.path.join(WORK, "local2")]
out = subprocess.run([BIN, "instance", "create", "--driver", "qemu", "--profile", "fast", "--image", "vm",
                      "--memory", "256M", "--name", "benchvm", "--output", "json"],
                     env=env, check=True, capture_output=True, text=True).stdout
local = []
for k in range(MIGRATIONS):
    src, dst = dirs[k % 2], dirs[(k + 1) % 2]
    out = subprocess.run([BIN, "instance", "migrate", "benchvm", "--to", dst, "--output", "json"],
                         env=dict(os.environ, VFARM_DATA_DIR=src), check=True, capture_output=True, text=True).stdout
    local.append(json.loads(out)["downtime_ms"])
subprocess.run([BIN, "instance", "destroy", "benchvm"], env=dict(os.environ, VFARM_DATA_DIR=dirs[MIGRATIONS % 2]),
               check=True, capture_output=True)

date = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"""Measured {date} on {os.cpu_count()} cores ({cpu}), load {os.getloadavg()[0]:.1f}; `benches/cluster.sh {N}` with the release build. The three nodes and the control share this one machine (network namespaces on a bridge), so the nodes' work competes for the same 2 cores.

| benchmark | result | baseline (same run) | ratio | goal |
|---|---|---|---|---|
| migration downtime across namespaces: a 256 MiB idle VM (fast profile, TCG, copied disk) between two nodes through the control, {MIGRATIONS} moves | median {median(cross):.0f} ms (min {min(cross)}, max {max(cross)}) | the same VM between two data dirs of one host (`vfarm instance migrate --to DIR`): median {median(local):.0f} ms (min {min(local)}, max {max(local)}) | {median(cross)/max(median(local),1):.2f} | ≤ 300 ms: {'met' if median(cross) <= 300 else '**not met**'} (max {max(cross)} ms) |
| placement of {N:,} oci instances (each a sleeping process) over 3 nodes through the control's API, 8 concurrent | {rate:.1f}/s (spread: {', '.join(f'{h} {n}' for h, n in sorted(spread.items()))}) | {N:,} through one `vfarm serve` without nodes: {base_rate:.1f}/s | {rate/base_rate:.2f} | none set |
""")
PY

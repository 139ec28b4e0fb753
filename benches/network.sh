#!/usr/bin/env bash
# Instance networks (issue 18). Every figure is measured beside its baseline in the same run,
# on this machine, and printed as a Markdown table for BENCHMARKS.md. Measures, never asserts.
#
#   benches/network.sh [REPEAT]      (default REPEAT=5; needs root, scripts/setup.sh done)
#
# 1. TCP throughput (iperf3, 3 s) and latency (ping, 200 echoes) between two oci instances on
#    one nat network, and from the host (where a desk on the LAN would be) to an instance,
#    against the host's loopback. iperf3 and ping run in the instances' network namespaces
#    (nsenter), so the path measured is the instances': veth, bridge, veth.
# 2. What joining a network adds to a create: `vfarm instance create` of an idle oci instance
#    with --net none vs on the nat network, and of a fast-profile VM likewise (median of
#    REPEAT, each destroyed before the next).
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${VFARM_BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked -p vfarm >/dev/null 2>&1
fi
BIN=${VFARM_BIN:-$CARGO_TARGET_DIR/release/vfarm}
for t in iperf3 ping nsenter runc jq; do
  command -v "$t" >/dev/null || { echo "benches/network.sh: $t is missing: run scripts/setup.sh" >&2; exit 1; }
done
WORK=$(mktemp -d /var/tmp/vfarm-net-bench.XXXXXX)
chmod 755 "$WORK"
export VFARM_DATA_DIR=$WORK/data CI=true
mkdir -p "$VFARM_DATA_DIR"
NET=bn$(printf '%x' $(($$ & 0xfff)))
cat >"$VFARM_DATA_DIR/serve.toml" <<EOF
# 198.18.0.0/15 is set aside for benchmarks.
[[networks]]
name = "$NET"
subnet = "198.18.254.0/24"
EOF
vf() { "$BIN" "$@"; }
cleanup() {
  for i in $(vf instance ls --output json 2>/dev/null | jq -r '.[].id' 2>/dev/null); do
    vf instance destroy "$i" >/dev/null 2>&1 || true
  done
  vf network down "$NET" >/dev/null 2>&1 || true
  pkill -f "iperf3 -s -p 52" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }
median() { python3 -c "import sys,statistics; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
log() { echo "$*" >&2; }

MINBASE=$CARGO_TARGET_DIR/tmp/minbase-bookworm.tar
if [ ! -f "$MINBASE" ]; then
  log "building the minbase rootfs (mmdebstrap)"
  mkdir -p "$(dirname "$MINBASE")"
  mmdebstrap --variant=minbase bookworm "$MINBASE.tmp.tar" >&2 && mv "$MINBASE.tmp.tar" "$MINBASE"
fi
vf image import "$MINBASE" --name minbase >/dev/null
log "building the bootable image"
vf image build --suite bookworm --boot vm --format qcow2 --name vm >/dev/null
vf network up >&2

pid_of() { runc --root "$VFARM_DATA_DIR/oci/state" state "$1" | jq -r .pid; }
in_ns() { local pid=$1; shift; nsenter -t "$pid" -n "$@"; }
# iperf3 -c … in Mbit/s received; the server is a one-off (-1) on port $2.
throughput() { # CLIENT_PREFIX… -- ADDRESS PORT
  local pre=() a p
  while [ "$1" != "--" ]; do pre+=("$1"); shift; done
  shift; a=$1; p=$2
  "${pre[@]}" iperf3 -c "$a" -p "$p" -t 3 -J | jq '.end.sum_received.bits_per_second / 1e6 | floor'
}
latency() { # CLIENT_PREFIX… -- ADDRESS: average round trip in ms
  local pre=()
  while [ "$1" != "--" ]; do pre+=("$1"); shift; done
  "${pre[@]}" ping -q -c 200 -i 0.005 "$2" | sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p'
}

log "1. throughput and latency"
A=$(vf instance create --image minbase --name a --net "$NET" --output json | jq -r .id)
B=$(vf instance create --image minbase --name b --net "$NET" --output json | jq -r .id)
AADDR=$(vf instance show a --output json | jq -r .address)
PA=$(pid_of "$A"); PB=$(pid_of "$B")
iperf3 -s -p 5201 -1 -D -B 127.0.0.1
sleep 0.3 # iperf3 -D returns before it listens; nothing to wait on
LO_TP=$(throughput -- 127.0.0.1 5201)
LO_LAT=$(latency -- 127.0.0.1)
in_ns "$PA" iperf3 -s -p 5202 -1 -D
sleep 0.3
II_TP=$(throughput in_ns "$PB" -- "$AADDR" 5202)
II_LAT=$(latency in_ns "$PB" -- "$AADDR")
in_ns "$PA" iperf3 -s -p 5203 -1 -D
sleep 0.3
HI_TP=$(throughput -- "$AADDR" 5203)
HI_LAT=$(latency -- "$AADDR")
vf instance destroy a >/dev/null
vf instance destroy b >/dev/null

log "2. create cost (oci, qemu fast profile)"
create_times() { # NET DRIVER-ARGS…: median seconds of REPEAT creates
  local net=$1; shift
  local ts=()
  for i in $(seq "$REPEAT"); do
    t0=$(now); vf instance create --image "$@" --name "c$i" --net "$net" >/dev/null; t1=$(now)
    ts+=("$(secs "$t0" "$t1")")
    vf instance destroy "c$i" >/dev/null
  done
  median "${ts[@]}"
}
vf instance create --image minbase --name warm --net "$NET" >/dev/null && vf instance destroy warm >/dev/null
OCI_NONE=$(create_times none minbase); OCI_NET=$(create_times "$NET" minbase)
vf run --driver qemu --image vm -- true >/dev/null 2>&1 # the KVM probe and the initramfs, once
Q_NONE=$(create_times none vm --driver qemu --profile fast)
Q_NET=$(create_times "$NET" vm --driver qemu --profile fast)

cat <<EOF
| measurement | vfarm network | baseline, same run | ratio |
|---|---|---|---|
| TCP throughput, instance → instance (nat network) | $II_TP Mbit/s | host loopback: $LO_TP Mbit/s | $(ratio "$II_TP" "$LO_TP") |
| TCP throughput, host (desk) → instance | $HI_TP Mbit/s | host loopback: $LO_TP Mbit/s | $(ratio "$HI_TP" "$LO_TP") |
| round trip, instance → instance | $II_LAT ms | host loopback: $LO_LAT ms | $(ratio "$II_LAT" "$LO_LAT") |
| round trip, host (desk) → instance | $HI_LAT ms | host loopback: $LO_LAT ms | $(ratio "$HI_LAT" "$LO_LAT") |
| \`instance create\` oci, idle (median of $REPEAT) | on the network: $OCI_NET s | --net none: $OCI_NONE s | $(ratio "$OCI_NET" "$OCI_NONE") |
| \`instance create\` qemu fast profile (median of $REPEAT) | on the network: $Q_NET s | --net none: $Q_NONE s | $(ratio "$Q_NET" "$Q_NONE") |
EOF

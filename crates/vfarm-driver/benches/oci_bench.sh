#!/bin/sh
# Benchmarks of the oci driver through the real CLI (issue 3). Measures, never asserts.
#
#   crates/vfarm-driver/benches/oci_bench.sh VFARM_BINARY ROOTFS_TAR [RUNS]
#
# 1. `vfarm run --image X -- true` against `runc run` of `true` on an equivalent prepared
#    bundle (same config.json: namespaces, cgroup limits; rootfs = an overlay on the same
#    unpacked image), median of RUNS.
# 2. Snapshot revert of a running instance with a 100 MB and a 2 GB change set (written,
#    then `sync`ed so the revert does not pay for flushing them), and without the sync.
# 3. 200 idle instances: per-instance memory (supervisor + runtime + init, RSS) and the
#    time and peak RSS of `vfarm instance ls` (the control process) over them.
set -eu
VFARM=${1:?vfarm binary}
TAR=${2:?minbase rootfs tarball}
RUNS=${3:-20}
IDLE=${IDLE:-200}
DATA=$(mktemp -d /var/tmp/vfarm-bench.XXXXXX)
export VFARM_DATA_DIR="$DATA"
B="$DATA/bench"
mkdir -p "$B"

cleanup() {
    "$VFARM" instance ls --output json 2>/dev/null | grep -o '"id": "[0-9a-f]*"' | cut -d'"' -f4 |
        while read -r i; do "$VFARM" instance destroy "$i" >/dev/null 2>&1 || true; done
    umount "$B/bundle/rootfs" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ms() { date +%s%N; }

"$VFARM" image import "$TAR" --name minbase >/dev/null
"$VFARM" run --image minbase -- true # unpacks the rootfs, caches the runtime probe

echo "== 1. run of true (median of $RUNS, ms)"
for _ in $(seq "$RUNS"); do
    t0=$(ms); "$VFARM" run --image minbase -- true; t1=$(ms)
    echo $(((t1 - t0) / 1000))
done | median | awk '{printf "vfarm run -- true: %.1f ms\n", $1/1000}' | tee "$B/vfarm.txt"

# The equivalent bundle: the config.json vfarm writes, on an overlay of the same image.
ID=$("$VFARM" instance create --image minbase --no-start --output json -- true | grep '"id"' | cut -d'"' -f4)
mkdir -p "$B/bundle/rootfs" "$B/upper" "$B/work" "$B/state"
cp "$DATA/instances/$ID/bundle/config.json" "$B/bundle/config.json"
sed -i "s#/vfarm/$ID#/vfarm/bench-runc#" "$B/bundle/config.json"
mount -t overlay overlay -o "lowerdir=$(ls -d "$DATA"/rootfs/*),upperdir=$B/upper,workdir=$B/work" "$B/bundle/rootfs"
runc --root "$B/state" run --bundle "$B/bundle" warm </dev/null
for n in $(seq "$RUNS"); do
    t0=$(ms); runc --root "$B/state" run --bundle "$B/bundle" "b$n" </dev/null; t1=$(ms)
    echo $(((t1 - t0) / 1000))
done | median | awk '{printf "runc run true: %.1f ms\n", $1/1000}' | tee "$B/runc.txt"
umount "$B/bundle/rootfs"
"$VFARM" instance destroy "$ID" >/dev/null
awk 'NR==FNR {v=$(NF-1); next} {r=$(NF-1)} END {printf "ratio vfarm/runc: %.2f\n", v/r}' "$B/vfarm.txt" "$B/runc.txt"

echo "== 2. snapshot revert of a running instance (ms)"
for MB in 100 2048; do
    for SYNC in yes no; do
        I=$("$VFARM" instance create --image minbase --output json | grep '"id"' | cut -d'"' -f4)
        "$VFARM" instance exec "$I" -- sh -c "head -c ${MB}M /dev/urandom > /base"
        "$VFARM" snapshot create "$I" base >/dev/null
        "$VFARM" instance exec "$I" -- sh -c "head -c ${MB}M /dev/urandom > /changes"
        [ "$SYNC" = yes ] && sync
        t0=$(ms); "$VFARM" snapshot revert "$I" base >/dev/null; t1=$(ms)
        echo "change set ${MB} MB, synced first: $SYNC: revert $(((t1 - t0) / 1000000)) ms"
        "$VFARM" instance destroy "$I" >/dev/null
    done
done

echo "== 3. $IDLE idle instances"
t0=$(ms)
for _ in $(seq "$IDLE"); do "$VFARM" instance create --image minbase >/dev/null; done
t1=$(ms)
echo "created $IDLE in $(((t1 - t0) / 1000000)) ms"
sleep 2
# RSS of every process belonging to the instances: supervisors, runtimes, container inits.
SUP=$(pgrep -f vfarm-supervisor | wc -l)
# PSS, not RSS: the runtime binary's pages are shared by all instances.
RSS=0; PSS=0
for p in $(pgrep -f 'vfarm-supervisor|run --bundle .*/instances/'); do
    r=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0); RSS=$((RSS + ${r:-0}))
    q=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0); PSS=$((PSS + ${q:-0}))
done
CG=0
for f in /sys/fs/cgroup/memory/vfarm/*/memory.usage_in_bytes; do CG=$((CG + $(cat "$f"))); done
echo "supervisors: $SUP; host side (supervisor sh + runtime) per instance: PSS $((PSS / IDLE)) KiB, RSS $((RSS / IDLE)) KiB"
echo "in-instance memory (cgroup usage, incl. page cache): $((CG / IDLE / 1024)) KiB per instance"
/usr/bin/time -f "vfarm instance ls over $IDLE instances: %e s, peak RSS %M KiB" "$VFARM" instance ls >/dev/null

#!/usr/bin/env bash
# Full-VM (qemu driver) benchmarks, issue 4. Every figure is measured beside its baseline in the
# same run, on this machine, and printed as a Markdown table for BENCHMARKS.md. Measures, never
# asserts.
#
#   benches/qemu.sh [REPEAT]      (default REPEAT=5; needs root, scripts/setup.sh done)
#
# 1. `vfarm run --driver qemu --image vm -- true` (boot → guest agent → exec → exit → destroy)
#    vs bare QEMU booting the same kernel with a busybox initramfs to poweroff: the KVM probe's
#    own test guest through `vfarm_qemu::probe::test_boot` (microvm, TCG, 128 MiB), run by the
#    bench helper crates/vfarm-qemu/examples/bare_boot.rs. Interleaved, median of REPEAT.
# 2. Snapshot revert with a 1 GB vs a 20 GB disk (crates/vfarm-driver/examples/
#    qemu_revert_bench.rs, since the CLI has no disk-size flag): disk-only revert of a stopped
#    VM and memory revert (loadvm) of a running one, 32 MiB written and synced since the
#    snapshot each time; boot excluded.
# 3. Checkpoint (--stop) and restore of a 256 MB guest, wall time of the CLI commands.
# 4. Live migration between two data dirs (copied and shared storage), 512 MB guest with a
#    counter running: QEMU's downtime, and the total time of the CLI command.
# 5. Memory overhead per idle VM (256 MB guest, 10 s after boot): PSS of the QEMU process
#    minus the PSS of its guest-RAM mapping, i.e. what QEMU itself costs beyond the guest
#    memory the guest has touched.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
REL=$CARGO_TARGET_DIR/release
# VFARM_BIN (with VFARM_BENCH_NO_BUILD=1, as benches/run-all.sh sets): a vfarm binary built
# elsewhere. VFARM_BENCH_EXAMPLES: a directory with the two bench helpers built elsewhere;
# otherwise they are built here (cheap when up to date).
if [ -z "${VFARM_BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked -p vfarm >/dev/null 2>&1
fi
BIN=${VFARM_BIN:-$REL/vfarm}
if [ -z "${VFARM_BENCH_EXAMPLES:-}" ]; then
  cargo build --release --locked -p vfarm-qemu --example bare_boot >&2
  cargo build --release --locked -p vfarm-driver --example qemu_revert_bench >&2
fi
EX=${VFARM_BENCH_EXAMPLES:-$REL/examples}
WORK=$(mktemp -d /var/tmp/vfarm-qemu-bench.XXXXXX)
chmod 755 "$WORK" # instances run as an unprivileged host id that must pass through it
N1=$WORK/node1
N2=$WORK/node2
mkdir -p "$N1" "$N2"
export CI=true
cleanup() {
  for d in "$N1" "$N2"; do
    for i in $(VFARM_DATA_DIR=$d "$BIN" instance ls --output json 2>/dev/null | python3 -c 'import json,sys; [print(i["id"]) for i in json.load(sys.stdin)]' 2>/dev/null); do
      VFARM_DATA_DIR=$d "$BIN" instance destroy "$i" >/dev/null 2>&1 || true
    done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
v1() { VFARM_DATA_DIR=$N1 "$BIN" "$@"; }
v2() { VFARM_DATA_DIR=$N2 "$BIN" "$@"; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }
median() { python3 -c "import sys,statistics; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
jget() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
log() { echo "$*" >&2; }

log "building the bootable image"
IMG_ID=$(v1 image build --suite bookworm --boot vm --format qcow2 --name vm --output json | jget '["id"]')
IMG=$N1/images/$IMG_ID
# Warm-up: the KVM probe's verdict and the fast initramfs are cached per data dir.
v1 run --driver qemu --image vm -- true >/dev/null 2>&1
ACCEL=$(v1 instance create --driver qemu --profile fast --image vm --name probe --output json >/dev/null && v1 instance show probe --output json | jget '["accel"]')
v1 instance destroy probe >/dev/null

log "1. vfarm run -- true vs bare QEMU"
run=(); bare=()
for _ in $(seq "$REPEAT"); do
  t0=$(now); v1 run --driver qemu --image vm -- true; t1=$(now)
  run+=("$(secs "$t0" "$t1")")
  bare+=("$("$EX/bare_boot" "$IMG/vmlinuz" 1 | awk '{print $2}')")
done
RUN=$(median "${run[@]}"); BARE=$(median "${bare[@]}")

log "2. snapshot revert, 1 GB vs 20 GB disk"
"$EX/qemu_revert_bench" "$IMG" "$N1" "$REPEAT" >"$WORK/revert.txt"
rv() { median $(awk -v s="$1" -v k="$2" '$2==s && $3==k {print $4}' "$WORK/revert.txt"); }
D1=$(rv 1G disk); D20=$(rv 20G disk); M1=$(rv 1G memory); M20=$(rv 20G memory)

log "3. checkpoint and restore, 256 MB guest"
v1 instance create --driver qemu --profile fast --image vm --name ck --memory 256M >/dev/null
ckw=(); ckp=(); ckb=(); rsw=()
for r in $(seq "$REPEAT"); do
  f=$WORK/ck$r.vmstate
  t0=$(now); out=$(v1 instance checkpoint ck --to "$f" --stop --output json); t1=$(now)
  ckw+=("$(secs "$t0" "$t1")"); ckp+=("$(echo "$out" | jget '["paused_secs"]')"); ckb+=("$(echo "$out" | jget '["size"]')")
  t0=$(now); v1 instance restore ck --from "$f" >/dev/null; t1=$(now)
  rsw+=("$(secs "$t0" "$t1")")
done
v1 instance destroy ck >/dev/null
CKW=$(median "${ckw[@]}"); CKP=$(median "${ckp[@]}"); RSW=$(median "${rsw[@]}")
CKMB=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(int, sys.argv[1:]))/1e6:.0f}')" "${ckb[@]}")

log "4. live migration, 512 MB guest with a counter running"
v1 instance create --driver qemu --profile fast --image vm --name mig >/dev/null
v1 instance exec mig -- sh -c 'i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.1; done </dev/null >/dev/null 2>&1 &'
sleep 2
declare -A dt tt rb db
from=v1; to=$N2; back=$N1
for mode in copied shared; do
  flag=(); [ "$mode" = shared ] && flag=(--shared-storage)
  dt[$mode]=""; tt[$mode]=""; rb[$mode]=""; db[$mode]=""
  for _ in $(seq "$REPEAT"); do
    out=$($from instance migrate mig --to "$to" "${flag[@]}" --output json)
    dt[$mode]+=" $(echo "$out" | jget '["downtime_ms"]')"
    tt[$mode]+=" $(echo "$out" | jget '["total_ms"]')"
    rb[$mode]+=" $(echo "$out" | jget '["ram_bytes"]')"
    db[$mode]+=" $(echo "$out" | jget '["disk_bytes"]')"
    if [ "$from" = v1 ]; then from=v2; to=$N1; else from=v1; to=$N2; fi
  done
done
COUNT=$($from instance exec mig -- cat /root/counter)
$from instance destroy mig >/dev/null
MDC=$(median ${dt[copied]}); MTC=$(median ${tt[copied]}); MDS=$(median ${dt[shared]}); MTS=$(median ${tt[shared]})
RBC=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(int, sys.argv[1:]))/1e6:.0f}')" ${rb[copied]})
DBC=$(python3 -c "import statistics,sys; print(f'{statistics.median(map(int, sys.argv[1:]))/1e6:.1f}')" ${db[copied]})

log "5. memory overhead per idle VM, 256 MB guest"
pss() {
  python3 - "$1" "$2" <<'PY'
import sys
pid, ram_kb = sys.argv[1], int(sys.argv[2]) * 1024
total = 0; ram = None; cur = None
for line in open(f"/proc/{pid}/smaps"):
    f = line.split()
    if not f[0].endswith(":"):
        cur = {"range": f[0]}; continue
    if f[0] == "Size:": cur["size"] = int(f[1])
    if f[0] == "Pss:":
        total += int(f[1]); cur["pss"] = int(f[1])
        # The guest RAM is one anonymous mapping of exactly the guest's memory size.
        if cur.get("size") == ram_kb and (ram is None or cur["pss"] > ram): ram = cur["pss"]
print(total, ram or 0)
PY
}
ovh=(); touched=()
for _ in $(seq "$REPEAT"); do
  v1 instance create --driver qemu --profile fast --image vm --name idle --memory 256M >/dev/null
  sleep 10
  pid=$(v1 instance show idle --output json | jget '["stats"]["pid"]')
  read -r total ram < <(pss "$pid" 256)
  ovh+=("$(python3 -c "print(f'{($total-$ram)/1024:.1f}')")"); touched+=("$(python3 -c "print(f'{$ram/1024:.1f}')")")
  v1 instance destroy idle >/dev/null
done
OVH=$(median "${ovh[@]}"); TOUCH=$(median "${touched[@]}")

# goal VALUE OP LIMIT → met / not met; "≈ 1" is read as within ±25 %.
goal() { python3 -c "import sys; print('met' if float(sys.argv[1]) $2 float(sys.argv[2]) else 'not met')" "$1" "$3"; }
near1() { python3 -c "import sys; print('met' if abs(float(sys.argv[1]) - 1) <= 0.25 else 'not met')" "$1"; }
ms() { python3 -c "import sys; print(f'{float(sys.argv[1]):.0f}')" "$1"; }
cat <<TABLE
Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB, accelerator ${ACCEL}; QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'); medians of $REPEAT.
Command: \`benches/qemu.sh $REPEAT\`.

| benchmark | vfarm | baseline (same run) | ratio | goal | goal met? |
|---|---|---|---|---|---|
| \`vfarm run --driver qemu -- true\` (boot, agent, exec, exit, destroy) | ${RUN} s | bare QEMU, same kernel, busybox initramfs to poweroff: ${BARE} s | $(ratio "$RUN" "$BARE") | ≤ 1.3 | $(goal "$(ratio "$RUN" "$BARE")" '<=' 1.3) |
| disk snapshot revert, stopped VM (qemu-img snapshot -a) | 1 GB: ${D1} ms · 20 GB: ${D20} ms | — | 20 GB / 1 GB: $(ratio "$D20" "$D1") | ≈ 1, ≤ 100 ms | absolute $(goal "$(python3 -c "print(max($D1, $D20))")" '<=' 100), ratio $(near1 "$(ratio "$D20" "$D1")") |
| snapshot revert with memory, running VM (loadvm, no reboot) | 1 GB: ${M1} ms · 20 GB: ${M20} ms | — | 20 GB / 1 GB: $(ratio "$M20" "$M1") | ≈ 1 | ratio $(near1 "$(ratio "$M20" "$M1")") |
| checkpoint --stop, 256 MB guest | ${CKW} s (guest paused ${CKP} s, state file ${CKMB} MB) | — | — | — | |
| restore, 256 MB guest | ${RSW} s | — | — | — | |
| live migration, copied disk (NBD + drive-mirror), 512 MB guest | downtime $(ms "$MDC") ms, total $(ms "$MTC") ms (${RBC} MB RAM stream, ${DBC} MB disk) | — | — | downtime ≤ 300 ms | $(goal "$MDC" '<=' 300) |
| live migration, shared disk | downtime $(ms "$MDS") ms, total $(ms "$MTS") ms | — | — | downtime ≤ 300 ms | $(goal "$MDS" '<=' 300) |
| memory overhead per idle VM (PSS of QEMU − PSS of guest RAM), 256 MB guest | ${OVH} MiB (guest RAM touched: ${TOUCH} MiB) | — | — | — | |

Raw: run ${run[*]} · bare ${bare[*]} · revert $(tr '\n' ';' <"$WORK/revert.txt") · checkpoint ${ckw[*]} · restore ${rsw[*]} · downtime copied${dt[copied]} shared${dt[shared]} · total copied${tt[copied]} shared${tt[shared]} · overhead MiB ${ovh[*]} · guest counter after $((2*REPEAT)) migrations: ${COUNT}
TABLE

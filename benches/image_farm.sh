#!/usr/bin/env bash
# Image-farm benchmarks (issue: image farm). Every figure is measured beside its baseline
# in the same run, on this machine, and printed as a Markdown table for BENCHMARKS.md.
#
#   benches/image_farm.sh [REPEAT]      (default REPEAT=2; needs root, scripts/setup.sh done)
#
# 1. cold build of bookworm/minbase+curl (tar) vs plain `mmdebstrap --include=curl` to a tar
# 2. cache hit of the identical spec (median of 20) vs the cold build
# 3. adding one package (wget) to the cached base vs a cold build of that same spec
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-2}
BIN=${VFARM_BIN:-target/release/vfarm}
[ -x "$BIN" ] || cargo build --release --locked -p vfarm >/dev/null 2>&1
WORK=$(mktemp -d /var/tmp/vfarm-bench.XXXXXX)
chmod 755 "$WORK" # instances run as an unprivileged host id that must pass through it
trap 'rm -rf "$WORK"' EXIT
export CI=true

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }
median() { python3 -c "import sys,statistics; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

plain=(); cold=(); hit=(); layer=(); cold2=()
for r in $(seq "$REPEAT"); do
  t0=$(now); mmdebstrap --quiet --variant=minbase --include=curl bookworm "$WORK/plain.tar" 2>/dev/null; t1=$(now)
  plain+=("$(secs "$t0" "$t1")"); rm -f "$WORK/plain.tar"

  D="$WORK/d$r"
  t0=$(now); VFARM_DATA_DIR=$D "$BIN" image build --suite bookworm --package curl --format tar >/dev/null 2>&1; t1=$(now)
  cold+=("$(secs "$t0" "$t1")")

  for i in $(seq 20); do
    t0=$(now); VFARM_DATA_DIR=$D "$BIN" image build --suite bookworm --package curl --format tar >/dev/null 2>&1; t1=$(now)
    hit+=("$(secs "$t0" "$t1")")
  done

  t0=$(now); VFARM_DATA_DIR=$D "$BIN" image build --suite bookworm --package curl --package wget --format tar >/dev/null 2>&1; t1=$(now)
  layer+=("$(secs "$t0" "$t1")")

  D2="$WORK/e$r"
  t0=$(now); VFARM_DATA_DIR=$D2 "$BIN" image build --suite bookworm --package curl --package wget --format tar >/dev/null 2>&1; t1=$(now)
  cold2+=("$(secs "$t0" "$t1")")
  rm -rf "$D" "$D2"
done

P=$(median "${plain[@]}"); C=$(median "${cold[@]}"); H=$(median "${hit[@]}"); L=$(median "${layer[@]}"); C2=$(median "${cold2[@]}")
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.3f}')" "$1" "$2"; }
cat <<TABLE
Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; medians of $REPEAT run(s) (cache hit: of $((20*REPEAT))).

| benchmark | vfarm | baseline (same run) | ratio | goal |
|---|---|---|---|---|
| cold build bookworm/minbase+curl → tar | ${C} s | plain mmdebstrap --include=curl: ${P} s | $(ratio "$C" "$P") | ≤ 1.15 |
| cache hit of the identical spec | $(python3 -c "print(f'{float(\"$H\")*1000:.1f}')") ms | the cold build: ${C} s | $(ratio "$H" "$C") | ≤ 20 ms |
| +1 package (wget) on the cached base | ${L} s | cold build of the same spec: ${C2} s | $(ratio "$L" "$C2") | ≤ 0.5 |

Raw seconds: plain ${plain[*]} · cold ${cold[*]} · layered ${layer[*]} · cold(+wget) ${cold2[*]}
TABLE

#!/usr/bin/env bash
# Virtual grids (issue 19, acceptance 7): how long `vfarm grid up` of the 3-member mini Slurm
# site (examples/grids/slurm-site.toml, oci) takes against the sum of three sequential
# `vfarm instance create` of the same image and shapes, in the same run. Medians of REPEAT;
# every grid and instance is removed before the next round. Measures, never asserts.
#
#   benches/grid.sh [REPEAT]      (default REPEAT=5; needs root, scripts/setup.sh done)
#
# What the grid adds on top of the creates: its own network (bridge, nft rules, dnsmasq),
# the role ordering (each role running before the next is made), templates, files put in,
# and its records. The image is built once first (not timed): both sides find it cached.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${VFARM_BENCH_NO_BUILD:-}" ]; then
  cargo build --release --locked -p vfarm >/dev/null 2>&1
fi
BIN=${VFARM_BIN:-$CARGO_TARGET_DIR/release/vfarm}
for t in runc jq nft dnsmasq mmdebstrap; do
  command -v "$t" >/dev/null || { echo "benches/grid.sh: $t is missing: run scripts/setup.sh" >&2; exit 1; }
done
WORK=$(mktemp -d /var/tmp/vfarm-grid-bench.XXXXXX)
chmod 755 "$WORK"
export VFARM_DATA_DIR=$WORK/data CI=true
mkdir -p "$VFARM_DATA_DIR"
# 198.18.0.0/15 is set aside for benchmarks.
echo 'grid_subnets = "198.19.0.0/16"' >"$VFARM_DATA_DIR/serve.toml"
vf() { "$BIN" "$@"; }
cleanup() {
  for g in $(vf grid ls --output json 2>/dev/null | jq -r '.[].name' 2>/dev/null); do
    vf grid down "$g" >/dev/null 2>&1 || true
  done
  for i in $(vf instance ls --output json 2>/dev/null | jq -r '.[].id' 2>/dev/null); do
    vf instance destroy "$i" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }
median() { python3 -c "import sys,statistics; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }

# The example's image spec, built the way `grid up` would find it.
t0=$(now)
IMAGE=$(vf image build --suite bookworm --package slurm-wlm --package munge --output json | jq -r .id)
echo "image ${IMAGE:0:12} ready in $(secs "$t0" "$(now)") s (not timed below)" >&2

ups=(); downs=(); creates=()
for r in $(seq "$REPEAT"); do
  t0=$(now); vf grid up examples/grids/slurm-site.toml --name "b$r" >/dev/null; t1=$(now)
  ups+=("$(secs "$t0" "$t1")")
  t0=$(now); vf grid down "b$r" >/dev/null; t1=$(now)
  downs+=("$(secs "$t0" "$t1")")
  # The baseline: the same three members' image and shapes, one create after the other.
  t0=$(now)
  ids=()
  for shape in "1.0 512M" "1.0 512M" "1.0 512M"; do
    set -- $shape
    ids+=("$(vf instance create --image "$IMAGE" --cpus "$1" --memory "$2" --output json -- sleep infinity | jq -r .id)")
  done
  t1=$(now)
  creates+=("$(secs "$t0" "$t1")")
  for i in "${ids[@]}"; do vf instance destroy "$i" >/dev/null; done
done
UP=$(median "${ups[@]}"); DOWN=$(median "${downs[@]}"); CREATE=$(median "${creates[@]}")
cat <<EOT
| measure (median of $REPEAT) | vfarm | baseline, same run | ratio |
|---|---|---|---|
| \`grid up\` mini Slurm site, 3 oci members | $UP s | 3 sequential \`instance create\`: $CREATE s | $(ratio "$UP" "$CREATE") |
| \`grid down\` of it | $DOWN s | | |
EOT

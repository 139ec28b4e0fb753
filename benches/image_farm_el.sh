#!/usr/bin/env bash
# EL image builds (issue 20) against a local signed RPM repository served on loopback (no
# mirror of another distribution is reachable from the development machines). Every figure
# beside its baseline in the same run, printed as a Markdown table for BENCHMARKS.md.
#
#   benches/image_farm_el.sh [REPEAT]      (default REPEAT=5; needs root, scripts/setup.sh done)
#
# 1. cold build of almalinux 9 @core + site-tools (tar) vs plain `dnf --installroot` of the
#    same package set with the same configuration (GPG checks on, fresh cache)
# 2. cache hit of the identical spec vs the cold build
# 3. adding one package (site-extra) to the cached base vs a cold build of that same spec
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-5}
BIN=${VFARM_BIN:-target/release/vfarm}
[ -x "$BIN" ] || cargo build --release --locked -p vfarm >/dev/null 2>&1
WORK=$(mktemp -d /var/tmp/vfarm-bench-el.XXXXXX)
chmod 755 "$WORK"
SERVER=
trap '[ -n "$SERVER" ] && kill "$SERVER"; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
export CI=true GNUPGHOME=$WORK/gnupg
mkdir -m 700 "$GNUPGHOME"

# The repository: a base package (busybox-static as /bin/sh) in a `core` comps group, and
# two site packages; signed packages and repomd.xml.
gpg --batch --passphrase '' --quick-gen-key "vfarm-bench <b@example.invalid>" rsa2048 sign never 2>/dev/null
gpg --armor --export >"$WORK/key.asc"
mkspec() { # name arch files-script
  cat >"$WORK/$1.spec" <<EOF
Name: $1
Version: 1.0
Release: 1
Summary: bench
License: MIT
BuildArch: $2
$([ "$1" = bench-base ] && echo "Provides: /bin/sh")
%description
bench
%install
$3
%files
/usr/bin/*
$([ "$1" = bench-base ] && printf '/bin\n/etc/os-release')
EOF
  rpmbuild --define "_topdir $WORK/rpmbuild" --define '__os_install_post %{nil}' \
    --define 'debug_package %{nil}' -bb "$WORK/$1.spec" >/dev/null 2>&1
}
mkspec bench-base x86_64 'mkdir -p %{buildroot}/usr/bin; cp /bin/busybox %{buildroot}/usr/bin/; ln -s busybox %{buildroot}/usr/bin/sh; ln -s usr/bin %{buildroot}/bin; mkdir -p %{buildroot}/etc; printf "ID=almalinux\nVERSION_ID=9\n" > %{buildroot}/etc/os-release'
for p in site-tools site-extra; do
  mkspec "$p" noarch "mkdir -p %{buildroot}/usr/bin; printf '#!/bin/sh\necho $p\n' > %{buildroot}/usr/bin/$p; chmod 755 %{buildroot}/usr/bin/$p"
done
mkdir -p "$WORK/www/el"
cp "$WORK"/rpmbuild/RPMS/*/*.rpm "$WORK/www/el/"
rpm --define "__gpg /usr/bin/gpg" --define "_gpg_name vfarm-bench" \
  --define "_gpg_sign_cmd_extra_args --batch --pinentry-mode loopback --passphrase ''" \
  --addsign "$WORK"/www/el/*.rpm >/dev/null 2>&1
cat >"$WORK/comps.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<comps><group><id>core</id><name>Core</name><description>core</description>
<packagelist><packagereq type="mandatory">bench-base</packagereq></packagelist></group></comps>
EOF
createrepo_c -q -g "$WORK/comps.xml" "$WORK/www/el"
gpg --batch --yes --armor --detach-sign "$WORK/www/el/repodata/repomd.xml"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/www" "$PORT" >/dev/null 2>&1 &
SERVER=$!
URL="http://127.0.0.1:$PORT/el/"
for _ in $(seq 50); do curl -fs "${URL}repodata/repomd.xml" >/dev/null && break; sleep 0.1; done
mirrors() { printf '[almalinux]\nkey = "%s"\nrepo_gpgcheck = true\n[[almalinux.repos]]\nname = "baseos"\nbaseurl = "%s"\n' "$WORK/key.asc" "$URL" >"$1/mirrors.toml"; }

# The baseline: what vfarm runs, by hand, once.
mkdir -p "$WORK/plain/repos.d"
printf '[main]\ngpgcheck=1\ninstall_weak_deps=False\ntsflags=nodocs\nreposdir=%s\n' "$WORK/plain/repos.d" >"$WORK/plain/dnf.conf"
printf '[baseos]\nname=baseos\nbaseurl=%s\ngpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://%s\n' "$URL" "$WORK/key.asc" >"$WORK/plain/repos.d/b.repo"

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }
median() { python3 -c "import sys,statistics; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.3f}')" "$1" "$2"; }
build() { VFARM_DATA_DIR=$1 "$BIN" image build --distro almalinux --suite 9 --group core "${@:2}" --format tar >/dev/null 2>&1; }

plain=(); cold=(); hit=(); layer=(); cold2=()
for r in $(seq "$REPEAT"); do
  rm -rf "$WORK/plain/root" "$WORK/plain/cache"
  t0=$(now)
  dnf -y -q --installroot="$WORK/plain/root" --releasever=9 --config="$WORK/plain/dnf.conf" \
    --setopt=reposdir="$WORK/plain/repos.d" --setopt=cachedir="$WORK/plain/cache" --noplugins \
    install @core site-tools >/dev/null 2>&1
  t1=$(now); plain+=("$(secs "$t0" "$t1")")

  D="$WORK/d$r"; mkdir -p "$D"; mirrors "$D"
  t0=$(now); build "$D" --package site-tools; t1=$(now); cold+=("$(secs "$t0" "$t1")")
  for _ in $(seq 10); do
    t0=$(now); build "$D" --package site-tools; t1=$(now); hit+=("$(secs "$t0" "$t1")")
  done
  t0=$(now); build "$D" --package site-tools --package site-extra; t1=$(now); layer+=("$(secs "$t0" "$t1")")
  D2="$WORK/e$r"; mkdir -p "$D2"; mirrors "$D2"
  t0=$(now); build "$D2" --package site-tools --package site-extra; t1=$(now); cold2+=("$(secs "$t0" "$t1")")
  rm -rf "$D" "$D2"
done

P=$(median "${plain[@]}"); C=$(median "${cold[@]}"); H=$(median "${hit[@]}"); L=$(median "${layer[@]}"); C2=$(median "${cold2[@]}")
cat <<TABLE
Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; medians of $REPEAT run(s) (cache hit: of $((10*REPEAT))).

| benchmark | vfarm | baseline (same run) | ratio | goal |
|---|---|---|---|---|
| cold build almalinux 9 @core+site-tools → tar | ${C} s | plain dnf --installroot of the same set: ${P} s | $(ratio "$C" "$P") | ≤ 1.15 |
| cache hit of the identical spec | $(python3 -c "print(f'{float(\"$H\")*1000:.1f}')") ms | the cold build: ${C} s | $(ratio "$H" "$C") | ≤ 20 ms |
| +1 package (site-extra) on the cached base | ${L} s | cold build of the same spec: ${C2} s | $(ratio "$L" "$C2") | ≤ 0.5 |

Raw seconds: plain ${plain[*]} · cold ${cold[*]} · layered ${layer[*]} · cold(+extra) ${cold2[*]}
TABLE

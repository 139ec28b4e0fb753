#!/usr/bin/env bash
# Installs every host package vfarm needs on Debian 12, then builds the release binary.
# Idempotent: re-running it changes nothing once everything is present.
#   scripts/setup.sh            packages + release build
#   scripts/setup.sh --deps     packages only (the test script calls this)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and vfarm manages namespaces, mounts and VMs)" >&2
  exit 1
fi

PKGS=(
  mmdebstrap          # image builder (bootstrap of Debian suites)
  dnf rpm             # EL-family builds: dnf --installroot, and rpm to check the images' package databases
  createrepo-c        # test RPM repositories: createrepo_c metadata with comps groups (rpmbuild is in rpm)
  reprepro            # test apt repositories (signed site repository of tests/distros.rs)
  gpg gpg-agent       # signing test repositories; apt/dnf key checks use the keys it exports
  e2fsprogs           # mkfs.ext4 -d and e2fsck for raw images
  qemu-system-x86     # full VMs
  qemu-utils          # qemu-img: qcow2/vmdk/vdi conversion and checks
  runc                # OCI runtime that works with hybrid cgroups here (crun 1.8 does not)
  busybox-static      # minimal initramfs for the fast boot profile
  linux-image-cloud-amd64 # kernel with virtio modules for the fast boot profile
  initramfs-tools-core # lsinitramfs, to check the initramfs of bootable images
  openssh-client      # ssh + ssh-keygen: `vfarm instance ssh` and the full-profile VM tests
  openssl libssl-dev pkg-config   # S/MIME image lists, and the openssl crate's build
  sqlite3             # inspecting the state store by hand
  postgresql          # PostgreSQL 15: the state store's second backend (`--database postgres://…`) and its tests
  slurm-wlm slurm-client munge # Slurm backend: slurmctld + slurmd + sbatch/squeue/scontrol, munge auth
  curl ca-certificates tar zstd uidmap iproute2 util-linux
  nftables dnsmasq-base # instance networks: NAT and isolation rules, DNS for instance names (vfarm-net)
  tmux                # a terminal for the progress test (tests/qemu_cli.rs captures its screen)
  wrk                 # HTTP load for benches/token_last_used.sh (requests/s of whoami)
  iperf3 iputils-ping # TCP throughput and round trips of instance networks (benches/network.sh)
  python3-venv        # the Python client's virtualenv (.venv: client, pytest, schemathesis)
  chromium            # headless browser for the web UI end-to-end test (tests/web, playwright-core)
  prometheus          # promtool (`check metrics`) for the /metrics test; the server is not run (~95 MB)
  libxml2-utils       # xmllint --schema: `job show --jsdl` output against the JSDL 1.0 schemas
)

# Node.js runs the web UI's end-to-end test (tests/web); a machine that has one keeps it.
command -v npm >/dev/null || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

# A qemu-utils newer than the distribution's qemu-system-x86 (e.g. a backport) blocks the
# install: qemu-system-common pins the same version. Align qemu-utils to the distribution's.
qemu_pin=()
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  cand=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [ -n "$cand" ] && [ -n "$have" ] && [ "$cand" != "$have" ] && \
     ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'install ok installed'; then
    qemu_pin=("qemu-utils=$cand")
    dpkg-query -W qemu-block-extra >/dev/null 2>&1 && qemu_pin+=("qemu-block-extra=$cand")
  fi
  echo "setup.sh: installing ${missing[*]} ${qemu_pin[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades \
    "${missing[@]}" "${qemu_pin[@]}"
fi

# Every binary the project drives, checked by name so a broken install fails here, not in a test.
for b in mmdebstrap dnf rpm rpmbuild createrepo_c reprepro gpg dpkg-deb mkfs.ext4 e2fsck qemu-img qemu-system-x86_64 runc busybox openssl ssh ssh-keygen \
         slurmctld slurmd sbatch scontrol munged chromium node npm nft dnsmasq nsenter setpriv \
         promtool xmllint iperf3 ping tmux; do
  command -v "$b" >/dev/null || { echo "setup.sh: $b is still missing after install" >&2; exit 1; }
done

# The Python client and its test tools in .venv (gitignored), versions pinned. Reinstalled
# only when the pins or the client's sources change (stamp in .venv), so re-runs are quiet.
# prometheus-client: its classic text parser reads /metrics in the overview test.
PY_PINS=(pytest==9.2.0 schemathesis==4.32.5 setuptools==75.8.0 openapi-spec-validator==0.9.0
         prometheus-client==0.26.0)
py_stamp=$( { printf '%s\n' "${PY_PINS[@]}"
  find clients/python -path clients/python/tests -prune -o -type f \
    \( -name '*.py' -o -name '*.toml' -o -name '*.md' -o -name py.typed \) -print | sort | xargs sha256sum
} | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.vfarm-stamp 2>/dev/null)" != "$py_stamp" ]; then
  echo "setup.sh: installing the Python client, pytest and schemathesis into .venv"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "${PY_PINS[@]}"
  .venv/bin/pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
    --force-reinstall ./clients/python
  rm -rf clients/python/build clients/python/src/*.egg-info   # setuptools' in-tree leftovers
  echo "$py_stamp" > .venv/.vfarm-stamp
fi

# playwright-core for the web UI test, exactly as locked; it drives Debian's chromium and never
# downloads a browser. Reinstalled only when the installed version differs from the lock.
want=$(node -p "require('./tests/web/package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "require('./tests/web/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "setup.sh: npm ci --prefix tests/web (playwright-core $want)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/web --no-audit --no-fund
fi

# PostgreSQL on loopback for the state store's tests (and a site trying the PostgreSQL backend):
# the `main` cluster running (it listens on localhost only by default), role `vfarm` with
# password `vfarm` (loopback logins use scram-sha-256 in Debian's pg_hba.conf), and database
# `vfarm_test` owned by it with byte-order collation (text sorts as in SQLite). Idempotent.
pg_ver=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
pg_lsclusters -h | awk -v v="$pg_ver" '$1 == v && $2 == "main" {found=1} END {exit !found}' \
  || pg_createcluster "$pg_ver" main >/dev/null
pg_ctlcluster "$pg_ver" main status >/dev/null 2>&1 || pg_ctlcluster "$pg_ver" main start
pg_psql() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"; }
pg_psql -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vfarm')
  THEN CREATE ROLE vfarm LOGIN PASSWORD 'vfarm'; END IF; END \$\$"
[ "$(pg_psql -tAc "SELECT 1 FROM pg_database WHERE datname = 'vfarm_test'")" = 1 ] \
  || pg_psql -c "CREATE DATABASE vfarm_test OWNER vfarm TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
echo "setup.sh: PostgreSQL $pg_ver: VFARM_TEST_POSTGRES=postgres://vfarm:vfarm@127.0.0.1/vfarm_test"

if [ "${1:-}" != "--deps" ]; then
  cargo build --release --locked -p vfarm 2>&1 | tail -n 3
  echo "setup.sh: vfarm built at target/release/vfarm"
fi

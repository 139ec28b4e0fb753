//! The fast-boot initramfs: a static busybox plus the image kernel's virtio modules.
//!
//! Debian's generic initramfs spends seconds in udev and module probing before it mounts the
//! root disk. This one knows exactly which modules a vfarm VM needs, loads them in dependency
//! order with `insmod`, mounts `/dev/vda` and switches to a minimal PID 1 that only prepares
//! what the guest agent needs and then becomes qemu-ga. The modules come from the image's own
//! rootfs tarball (they must match the image's kernel), busybox from the host.
//!
//! Layout inside the archive:
//! - `/init`: the stage-1 script (runs in the initramfs)
//! - `/etc/vfarm/modules`: module paths under `/lib/modules`, in load order
//! - `/etc/vfarm/guest-init`: the stage-2 script, run as PID 1 of the real root
//! - `/bin/busybox`, `/bin/sh` → busybox, `/lib/modules/<version>/kernel/...`

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::error::{Error, Result};

/// Bumped whenever the archive's layout or scripts change, so cached archives are rebuilt.
const FORMAT_VERSION: u32 = 2;

/// Modules every fast-profile VM loads (their dependencies come from `modules.dep`): disk,
/// both virtio transports (mmio for microvm, pci for q35/pc), the console ports the guest agent
/// talks over, the network and vsock.
pub const FAST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];

const STAGE1_INIT: &str = r#"#!/bin/sh
# vfarm fast-boot initramfs, stage 1: load the virtio modules, mount the root disk, hand over.
B=/bin/busybox
export PATH=/bin
fail() {
    echo "vfarm-init: $*"
    # Ends the VM (QEMU runs with -no-reboot), so a broken boot fails fast instead of hanging.
    $B sleep 1
    $B poweroff -f
}
$B mount -t devtmpfs devtmpfs /dev
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
root=/dev/vda
fstype=ext4
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
    esac
done
while read -r m; do
    $B insmod "/lib/modules/$m" || echo "vfarm-init: cannot load $m"
done < /etc/vfarm/modules
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ "$i" -gt 1000 ] && fail "root disk $root did not appear"
    $B usleep 10000
done
$B mount -t "$fstype" -o rw "$root" /newroot || fail "cannot mount $root ($fstype)"
# The stage-2 tools live on a tmpfs at /run of the new root: the image's disk is not touched.
$B mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || fail "cannot mount /run"
$B mkdir -p /newroot/run/vfarm
$B cp /bin/busybox /etc/vfarm/guest-init /newroot/run/vfarm/ || fail "cannot copy stage 2"
$B mount --move /dev /newroot/dev
$B umount /proc /sys
exec $B switch_root /newroot /run/vfarm/busybox sh /run/vfarm/guest-init
fail "switch_root failed"
"#;

const STAGE2_INIT: &str = r#"# vfarm fast-boot stage 2: PID 1 of the image's root. No systemd, no udev: mount the
# kernel file systems, name the virtio ports, then become the guest agent.
B=/run/vfarm/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts -o gid=5,mode=620 devpts /dev/pts
$B mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
net=
ipcfg=
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        vfarm.hostname=*) $B hostname "${arg#vfarm.hostname=}" ;;
        vfarm.net=*) net="${arg#vfarm.net=}" ;;
        ip=*) ipcfg="${arg#ip=}" ;;
    esac
done
$B ip link set lo up
if [ "$net" = user ] && [ -e /sys/class/net/eth0 ]; then
    # QEMU's user-mode network always puts the guest at 10.0.2.15 behind 10.0.2.2, so no
    # DHCP client is needed.
    $B ip addr add 10.0.2.15/24 dev eth0
    $B ip link set eth0 up
    $B ip route add default via 10.0.2.2
fi
if [ -n "$ipcfg" ] && [ -e /sys/class/net/eth0 ]; then
    # A static address on a site network, in the kernel's ip= syntax:
    # <client>::<gateway>:<netmask>:<hostname>:eth0:off[:<dns0>[:<dns1>]]
    IFS=: read -r addr _ gw mask _ _ _ dns0 dns1 <<IP
$ipcfg
IP
    $B ifconfig eth0 "$addr" netmask "$mask" up
    [ -n "$gw" ] && $B ip route add default via "$gw"
    if [ -n "$dns0" ]; then
        echo "nameserver $dns0" > /etc/resolv.conf
        [ -n "$dns1" ] && echo "nameserver $dns1" >> /etc/resolv.conf
    fi
fi
# udev would create these links; the guest agent opens its port by name.
$B mkdir -p /dev/virtio-ports
for d in /sys/class/virtio-ports/*; do
    [ -e "$d/name" ] || continue
    n=$($B cat "$d/name")
    [ -n "$n" ] && $B ln -sf "../${d##*/}" "/dev/virtio-ports/$n"
done
ga=$(command -v qemu-ga)
if [ -z "$ga" ]; then
    echo "vfarm-guest: qemu-ga is not installed in this image"
    $B sleep 1
    $B poweroff -f
fi
echo "vfarm-guest: starting qemu-ga"
exec "$ga" -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0
"#;

/// The init of the accelerator probe's initramfs: print a marker, power off.
pub(crate) const PROBE_MARKER: &str = "VFARM-PROBE-REACHED-INIT";

/// `modules.dep` of one kernel: module path → the paths it depends on (directly or not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    deps: BTreeMap<String, Vec<String>>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> ModulesDep {
        let deps = text
            .lines()
            .filter_map(|line| {
                let (module, rest) = line.split_once(':')?;
                Some((
                    module.trim().to_string(),
                    rest.split_whitespace().map(str::to_string).collect(),
                ))
            })
            .collect();
        ModulesDep { deps }
    }

    /// The path of a module by name (`virtio_blk` finds `kernel/drivers/block/virtio_blk.ko`,
    /// compressed or not). Dashes and underscores are the same in module names.
    pub fn find(&self, name: &str) -> Option<&str> {
        let want = name.replace('-', "_");
        self.deps
            .keys()
            .map(String::as_str)
            .find(|path| module_name(path) == want)
    }

    /// The module files to load, dependencies first, each once.
    pub fn load_order(&self, names: &[&str], kernel_version: &str) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let path = self.find(name).ok_or_else(|| Error::ModuleMissing {
                module: name.to_string(),
                kernel_version: kernel_version.to_string(),
            })?;
            self.visit(path, &mut seen, &mut order, kernel_version)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        path: &str,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
        kernel_version: &str,
    ) -> Result<()> {
        if !seen.insert(path.to_string()) {
            return Ok(());
        }
        let deps = self.deps.get(path).ok_or_else(|| Error::ModuleMissing {
            module: path.to_string(),
            kernel_version: kernel_version.to_string(),
        })?;
        // modules.dep lists the whole closure; visiting each entry's own line puts every
        // module after everything it needs whatever order the list has.
        for dep in deps {
            self.visit(dep, seen, order, kernel_version)?;
        }
        order.push(path.to_string());
        Ok(())
    }
}

/// `kernel/drivers/block/virtio_blk.ko.xz` → `virtio_blk`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let base = file.split(".ko").next().unwrap_or(file);
    base.replace('-', "_")
}

/// A rootfs tarball entry's path relative to `lib/modules/` (usr-merged or not), if it is
/// under it.
fn modules_relative(entry: &Path) -> Option<String> {
    let s = entry.to_str()?;
    let s = s.trim_start_matches("./").trim_start_matches('/');
    s.strip_prefix("usr/lib/modules/")
        .or_else(|| s.strip_prefix("lib/modules/"))
        .map(str::to_string)
}

fn open_tar(rootfs: &Path) -> Result<tar::Archive<Box<dyn Read>>> {
    let mut f = File::open(rootfs).map_err(|e| Error::io("open the rootfs tarball", rootfs, e))?;
    let mut magic = [0u8; 2];
    let gz = f.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    drop(f);
    let f = File::open(rootfs).map_err(|e| Error::io("open the rootfs tarball", rootfs, e))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    Ok(tar::Archive::new(reader))
}

/// Calls `f` with each regular file under `lib/modules/` (relative path, reader).
fn for_each_module_file(
    rootfs: &Path,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let tar_err = |entry: &str, source| Error::Tar {
        rootfs: rootfs.to_path_buf(),
        entry: entry.to_string(),
        source,
    };
    let mut archive = open_tar(rootfs)?;
    for entry in archive
        .entries()
        .map_err(|e| tar_err("the entry list", e))?
    {
        let mut entry = entry.map_err(|e| tar_err("an entry", e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| tar_err("an entry name", e))?
            .into_owned();
        if let Some(rel) = modules_relative(&path) {
            f(&rel, &mut entry)?;
        }
    }
    Ok(())
}

/// The kernel versions whose module trees (`lib/modules/<version>/modules.dep`) the image holds.
pub fn kernel_versions(rootfs: &Path) -> Result<Vec<String>> {
    let mut versions = BTreeSet::new();
    for_each_module_file(rootfs, |rel, _| {
        if let Some((version, "modules.dep")) = rel.split_once('/') {
            versions.insert(version.to_string());
        }
        Ok(())
    })?;
    Ok(versions.into_iter().collect())
}

/// What to build the fast-boot initramfs from.
#[derive(Debug, Clone)]
pub struct InitramfsRequest {
    /// The image's rootfs tarball (plain or gzip'd).
    pub rootfs: PathBuf,
    /// The image kernel's version; found in the tarball when the image holds exactly one.
    pub kernel_version: Option<String>,
    /// A statically linked busybox (Debian's busybox-static).
    pub busybox: PathBuf,
    /// Where built archives are kept, one per kernel version.
    pub cache_dir: PathBuf,
}

/// A built (or cached) fast-boot initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastInitramfs {
    pub path: PathBuf,
    pub kernel_version: String,
    /// Module paths under `lib/modules/<version>/`, in load order.
    pub modules: Vec<String>,
    /// False when an archive built earlier was reused.
    pub built: bool,
}

/// Returns the cached fast-boot initramfs for the image's kernel, building it first if needed.
pub fn fast_initramfs(req: &InitramfsRequest) -> Result<FastInitramfs> {
    let kernel_version = match &req.kernel_version {
        Some(v) => v.clone(),
        None => {
            let found = kernel_versions(&req.rootfs)?;
            match found.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(Error::KernelVersion {
                        rootfs: req.rootfs.clone(),
                        problem: "no lib/modules/<version>/modules.dep (is the image bootable?)"
                            .into(),
                    })
                }
                many => {
                    return Err(Error::KernelVersion {
                        rootfs: req.rootfs.clone(),
                        problem: format!("several kernels ({}); name one", many.join(", ")),
                    })
                }
            }
        }
    };
    if kernel_version.is_empty() || kernel_version.contains('/') || kernel_version.starts_with('.')
    {
        return Err(Error::KernelVersion {
            rootfs: req.rootfs.clone(),
            problem: format!("{kernel_version:?} is not a kernel version"),
        });
    }
    let path = req
        .cache_dir
        .join(format!("fast-v{FORMAT_VERSION}-{kernel_version}.cpio.gz"));
    let list = req
        .cache_dir
        .join(format!("fast-v{FORMAT_VERSION}-{kernel_version}.modules"));
    if path.is_file() {
        if let Ok(text) = std::fs::read_to_string(&list) {
            return Ok(FastInitramfs {
                path,
                kernel_version,
                modules: text.lines().map(str::to_string).collect(),
                built: false,
            });
        }
    }

    // Two passes over the tarball: modules.dep first (its place in the archive is arbitrary),
    // then exactly the module files it names.
    let prefix = format!("{kernel_version}/");
    let dep_name = format!("{kernel_version}/modules.dep");
    let mut dep_text = None;
    for_each_module_file(&req.rootfs, |rel, r| {
        if rel == dep_name {
            let mut s = String::new();
            r.read_to_string(&mut s).map_err(|e| Error::Tar {
                rootfs: req.rootfs.clone(),
                entry: rel.to_string(),
                source: e,
            })?;
            dep_text = Some(s);
        }
        Ok(())
    })?;
    let dep_text = dep_text.ok_or_else(|| Error::KernelVersion {
        rootfs: req.rootfs.clone(),
        problem: format!("no modules.dep for kernel {kernel_version}"),
    })?;
    let modules = ModulesDep::parse(&dep_text).load_order(FAST_MODULES, &kernel_version)?;
    let wanted: HashSet<String> = modules.iter().map(|m| format!("{prefix}{m}")).collect();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for_each_module_file(&req.rootfs, |rel, r| {
        if wanted.contains(rel) {
            let mut data = Vec::new();
            r.read_to_end(&mut data).map_err(|e| Error::Tar {
                rootfs: req.rootfs.clone(),
                entry: rel.to_string(),
                source: e,
            })?;
            files.insert(rel.to_string(), data);
        }
        Ok(())
    })?;
    if let Some(missing) = wanted.iter().find(|w| !files.contains_key(*w)) {
        return Err(Error::ModuleMissing {
            module: missing.clone(),
            kernel_version,
        });
    }

    let busybox =
        std::fs::read(&req.busybox).map_err(|e| Error::io("read busybox", &req.busybox, e))?;
    std::fs::create_dir_all(&req.cache_dir)
        .map_err(|e| Error::io("create the initramfs cache", &req.cache_dir, e))?;
    let load_list: String = modules.iter().map(|m| format!("{prefix}{m}\n")).collect();
    write_atomically(&path, |w| {
        let mut c = Cpio::new(w);
        c.base_layout(&busybox)?;
        c.dir("newroot")?;
        c.dir("etc/vfarm")?;
        c.file("etc/vfarm/modules", 0o644, load_list.as_bytes())?;
        c.file("etc/vfarm/guest-init", 0o755, STAGE2_INIT.as_bytes())?;
        c.file("init", 0o755, STAGE1_INIT.as_bytes())?;
        let mut dirs = BTreeSet::new();
        for rel in files.keys() {
            let mut p = Path::new(rel).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(format!("lib/modules/{}", d.display()));
                p = d.parent();
            }
        }
        c.dir("lib")?;
        c.dir("lib/modules")?;
        // BTreeSet order puts every parent before its children.
        for d in &dirs {
            c.dir(d)?;
        }
        for (rel, data) in &files {
            c.file(&format!("lib/modules/{rel}"), 0o644, data)?;
        }
        c.finish()
    })?;
    std::fs::write(&list, modules.join("\n")).map_err(|e| Error::io("write", &list, e))?;
    Ok(FastInitramfs {
        path,
        kernel_version,
        modules,
        built: true,
    })
}

/// Writes the accelerator probe's initramfs: busybox and an init that prints a marker on the
/// console and powers off at once.
pub(crate) fn write_probe_initramfs(busybox: &Path, out: &Path) -> Result<()> {
    let busybox = std::fs::read(busybox).map_err(|e| Error::io("read busybox", busybox, e))?;
    let init = format!("#!/bin/sh\necho {PROBE_MARKER}\n/bin/busybox poweroff -f\n");
    write_atomically(out, |w| {
        let mut c = Cpio::new(w);
        c.base_layout(&busybox)?;
        c.file("init", 0o755, init.as_bytes())?;
        c.finish()
    })
}

/// Writes a gzip'd file through a temporary file in the same directory and renames it into
/// place, so a crash or a concurrent reader never sees half an archive.
fn write_atomically(
    path: &Path,
    f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io("create a temporary file in", dir, e))?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(tmp), Compression::fast());
    f(&mut gz).map_err(|e| Error::io("write", path, e))?;
    let tmp = gz
        .finish()
        .and_then(|w| w.into_inner().map_err(std::io::IntoInnerError::into_error))
        .map_err(|e| Error::io("write", path, e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("move into place", path, e.error))?;
    Ok(())
}

/// A newc cpio writer with the few entry kinds an initramfs needs.
struct Cpio<'a> {
    w: &'a mut dyn Write,
    ino: u32,
}

impl<'a> Cpio<'a> {
    fn new(w: &'a mut dyn Write) -> Cpio<'a> {
        Cpio { w, ino: 1 }
    }

    fn entry(&mut self, name: &str, mode: u32) -> cpio::newc::Builder {
        self.ino += 1;
        cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(1)
    }

    fn write_entry(&mut self, b: cpio::newc::Builder, data: &[u8]) -> std::io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "file over 4 GiB")
        })?;
        let mut w = b.write(&mut *self.w, size);
        w.write_all(data)?;
        w.finish()?;
        Ok(())
    }

    fn dir(&mut self, name: &str) -> std::io::Result<()> {
        let b = self.entry(name, 0o040755).nlink(2);
        self.write_entry(b, &[])
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> std::io::Result<()> {
        let b = self.entry(name, 0o100000 | perm);
        self.write_entry(b, data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        let b = self.entry(name, 0o120777);
        self.write_entry(b, target.as_bytes())
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> std::io::Result<()> {
        let b = self
            .entry(name, 0o020000 | perm)
            .rdev_major(major)
            .rdev_minor(minor);
        self.write_entry(b, &[])
    }

    /// What every vfarm initramfs has: the mount points, a console for init's output before
    /// devtmpfs is mounted, and busybox as `/bin/sh`.
    fn base_layout(&mut self, busybox: &[u8]) -> std::io::Result<()> {
        for d in ["bin", "dev", "proc", "sys", "etc"] {
            self.dir(d)?;
        }
        self.char_dev("dev/console", 0o600, 5, 1)?;
        self.file("bin/busybox", 0o755, busybox)?;
        self.symlink("bin/sh", "busybox")
    }

    fn finish(self) -> std::io::Result<()> {
        cpio::newc::trailer(self.w)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/xfs/xfs.ko.xz:
";

    fn pos(order: &[String], name: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == name)
            .unwrap_or_else(|| panic!("{name} not in {order:?}"))
    }

    #[test]
    fn load_order_puts_dependencies_first_and_each_once() {
        let dep = ModulesDep::parse(DEP);
        let order = dep.load_order(FAST_MODULES, "6.1.0-test").unwrap();
        assert_eq!(order.len(), 14, "{order:?}");
        let unique: HashSet<_> = order.iter().collect();
        assert_eq!(unique.len(), order.len());
        assert!(pos(&order, "virtio_ring") < pos(&order, "virtio"));
        assert!(pos(&order, "virtio") < pos(&order, "virtio_blk"));
        assert!(pos(&order, "failover") < pos(&order, "net_failover"));
        assert!(pos(&order, "net_failover") < pos(&order, "virtio_net"));
        assert!(pos(&order, "vsock") < pos(&order, "vmw_vsock_virtio_transport_common"));
        assert!(pos(&order, "virtio_pci_modern_dev") < pos(&order, "virtio_pci"));
    }

    #[test]
    fn missing_module_is_named() {
        let dep = ModulesDep::parse("kernel/drivers/virtio/virtio.ko:\n");
        match dep.load_order(&["virtio_blk"], "6.1.0-test") {
            Err(Error::ModuleMissing {
                module,
                kernel_version,
            }) => {
                assert_eq!(module, "virtio_blk");
                assert_eq!(kernel_version, "6.1.0-test");
            }
            other => panic!("expected ModuleMissing, got {other:?}"),
        }
    }

    #[test]
    fn finds_compressed_modules_and_dashed_names() {
        let dep = ModulesDep::parse(DEP);
        assert_eq!(dep.find("xfs"), Some("kernel/fs/xfs/xfs.ko.xz"));
        assert_eq!(
            dep.find("virtio-blk"),
            Some("kernel/drivers/block/virtio_blk.ko")
        );
        assert_eq!(dep.find("virtio_bl"), None);
    }

    #[test]
    fn modules_paths_with_and_without_usr_merge() {
        assert_eq!(
            modules_relative(Path::new("./usr/lib/modules/6.1/modules.dep")).as_deref(),
            Some("6.1/modules.dep")
        );
        assert_eq!(
            modules_relative(Path::new("lib/modules/6.1/kernel/a.ko")).as_deref(),
            Some("6.1/kernel/a.ko")
        );
        assert_eq!(modules_relative(Path::new("./usr/lib/klibc/bin/sh")), None);
    }

    /// A tiny rootfs tarball holding a fake module tree.
    fn fake_rootfs(dir: &Path, versions: &[&str]) -> PathBuf {
        let path = dir.join("rootfs.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("./etc/debian_version", b"12.0\n");
        for v in versions {
            for line in DEP.lines() {
                let module = line.split(':').next().unwrap();
                add(
                    &format!("./usr/lib/modules/{v}/{module}"),
                    format!("module {module}").as_bytes(),
                );
            }
            // modules.dep last, as nothing guarantees its place in a tarball.
            add(
                &format!("./usr/lib/modules/{v}/modules.dep"),
                DEP.as_bytes(),
            );
        }
        b.finish().unwrap();
        path
    }

    fn fake_busybox(dir: &Path) -> PathBuf {
        let p = dir.join("busybox");
        std::fs::write(&p, b"\x7fELF fake busybox").unwrap();
        p
    }

    fn read_archive(path: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
        let mut r: Box<dyn Read> =
            Box::new(flate2::read::GzDecoder::new(File::open(path).unwrap()));
        let mut out = BTreeMap::new();
        loop {
            let mut entry = cpio::NewcReader::new(r).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            let name = entry.entry().name().to_string();
            let mode = entry.entry().mode();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.insert(name, (mode, data));
            r = Box::new(entry.finish().unwrap());
        }
        out
    }

    #[test]
    fn builds_archive_from_rootfs_and_caches_it() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = fake_rootfs(dir.path(), &["6.1.0-test"]);
        let req = InitramfsRequest {
            rootfs,
            kernel_version: None,
            busybox: fake_busybox(dir.path()),
            cache_dir: dir.path().join("cache"),
        };
        let built = fast_initramfs(&req).unwrap();
        assert!(built.built);
        assert_eq!(built.kernel_version, "6.1.0-test");
        let files = read_archive(&built.path);
        let (mode, init) = &files["init"];
        assert_eq!(mode & 0o170777, 0o100755);
        assert!(String::from_utf8_lossy(init).contains("switch_root"));
        assert_eq!(files["bin/busybox"].1, b"\x7fELF fake busybox");
        assert_eq!(files["bin/sh"].0 & 0o170000, 0o120000);
        assert_eq!(files["bin/sh"].1, b"busybox");
        assert_eq!(files["dev/console"].0 & 0o170000, 0o020000);
        let order = String::from_utf8(files["etc/vfarm/modules"].1.clone()).unwrap();
        let order: Vec<&str> = order.lines().collect();
        assert_eq!(order.len(), 14);
        for m in &order {
            let data = &files[&format!("lib/modules/{m}")].1;
            assert!(data.starts_with(b"module "), "{m}");
        }
        // Only what the fast profile needs: xfs stays out.
        assert!(!files.keys().any(|k| k.contains("xfs")));
        // Parents are written before children, as the kernel's unpacker needs.
        let names: Vec<&String> = files.keys().collect();
        assert!(names.contains(&&"lib/modules/6.1.0-test/kernel/drivers/virtio".to_string()));

        let again = fast_initramfs(&req).unwrap();
        assert!(!again.built, "second request must be a cache hit");
        assert_eq!(again.modules, built.modules);
        assert_eq!(again.path, built.path);
    }

    #[test]
    fn several_kernels_need_a_choice() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = fake_rootfs(dir.path(), &["6.1.0-a", "6.1.0-b"]);
        assert_eq!(
            kernel_versions(&rootfs).unwrap(),
            vec!["6.1.0-a", "6.1.0-b"]
        );
        let mut req = InitramfsRequest {
            rootfs,
            kernel_version: None,
            busybox: fake_busybox(dir.path()),
            cache_dir: dir.path().join("cache"),
        };
        assert!(matches!(
            fast_initramfs(&req),
            Err(Error::KernelVersion { .. })
        ));
        req.kernel_version = Some("6.1.0-b".into());
        assert_eq!(fast_initramfs(&req).unwrap().kernel_version, "6.1.0-b");
    }

    #[test]
    fn rootfs_without_kernel_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = fake_rootfs(dir.path(), &[]);
        let req = InitramfsRequest {
            rootfs,
            kernel_version: None,
            busybox: fake_busybox(dir.path()),
            cache_dir: dir.path().join("cache"),
        };
        let err = fast_initramfs(&req).unwrap_err();
        assert!(matches!(err, Error::KernelVersion { .. }), "{err}");
    }
}

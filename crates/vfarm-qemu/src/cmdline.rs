//! The QEMU command line as a pure function of a typed VM configuration.
//!
//! Nothing here touches the file system or the host: the same `VmConfig` always gives the same
//! argument vector, which the golden tests in `tests/golden/` pin down. Validation that needs
//! no I/O (loopback-only port forwards, non-zero sizes) happens here too, so a bad request
//! fails before anything is created.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The machine type. `Microvm` is the fast profile (no PCI, no firmware, virtio-mmio devices,
/// direct kernel boot only); `Q35` and `Pc` are full PCs that can also boot a disk's own
/// bootloader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    Microvm,
    Q35,
    Pc,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }

    /// microvm has no PCI bus: its virtio devices are the `-device` transport, the PCs'
    /// the `-pci` one.
    fn virtio(self, kind: &str) -> String {
        match self {
            Machine::Microvm => format!("virtio-{kind}-device"),
            Machine::Q35 | Machine::Pc => format!("virtio-{kind}-pci"),
        }
    }
}

/// How guest code runs: hardware virtualisation or QEMU's emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    #[serde(default)]
    pub read_only: bool,
}

/// Direct kernel boot: QEMU loads the kernel and initramfs itself (no bootloader, no firmware
/// disk scan), which is what makes the fast profile fast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// A user-mode network port forward from the host to the guest. Only loopback host addresses
/// are accepted: a VM's SSH port must not be exposed beyond the host by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFwd {
    pub proto: Proto,
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl HostFwd {
    /// The usual SSH forward: `127.0.0.1:<host_port>` → guest port 22.
    pub fn ssh(host_port: u16) -> HostFwd {
        HostFwd {
            proto: Proto::Tcp,
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            guest_port: 22,
        }
    }
}

/// QEMU's user-mode (SLIRP) network: no host configuration, no privileges, guest at
/// 10.0.2.15 behind a NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNet {
    #[serde(default)]
    pub hostfwd: Vec<HostFwd>,
    /// Isolate the guest: it reaches neither the host nor beyond, only the forwarded ports
    /// reach it (QEMU's `restrict=on`).
    #[serde(default)]
    pub restrict: bool,
}

/// A tap device on a bridge (made by the service, vfarm-net): the guest's NIC on a site
/// network, with a stable MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapNet {
    pub ifname: String,
    pub mac: String,
}

/// A guest's static address on a site network, as its boot configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub nameservers: Vec<Ipv4Addr>,
}

impl StaticIp {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }

    /// The kernel's `ip=` argument (nfsroot.rst syntax), which the fast profile's init
    /// applies: `ip=<client>::<gw>:<netmask>:<hostname>:eth0:off[:<dns0>[:<dns1>]]`.
    pub fn kernel_arg(&self, hostname: &str) -> String {
        let gw = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        let mut s = format!(
            "ip={}::{gw}:{}:{hostname}:eth0:off",
            self.address,
            self.netmask()
        );
        for ns in self.nameservers.iter().take(2) {
            s.push_str(&format!(":{ns}"));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Shown in `ps` and in QMP's `query-name`.
    pub name: String,
    pub machine: Machine,
    pub accel: Accel,
    /// The `-cpu` model. `None` means the host's own model under KVM (fastest, but a VM can
    /// only migrate to an identical host) and QEMU's default under TCG. Name a model (e.g.
    /// `EPYC-v4`, `Skylake-Server`) for VMs that must migrate between different hosts.
    #[serde(default)]
    pub cpu: Option<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: Option<KernelBoot>,
    pub disk: Option<Disk>,
    /// Further disks after the root disk (`disk1`, `disk2`, …), e.g. the full profile's
    /// cloud-init seed.
    #[serde(default)]
    pub extra_disks: Vec<Disk>,
    /// The QMP control socket (always present: it is how the VM is managed).
    pub qmp_socket: PathBuf,
    /// The guest agent's socket, wired to a virtio-serial port named
    /// `org.qemu.guest_agent.0`.
    pub qga_socket: Option<PathBuf>,
    /// The first serial port's output is appended to this file (the boot log).
    pub serial_log: Option<PathBuf>,
    pub net: Option<UserNet>,
    /// A NIC on a site network (after the user-mode one, if any).
    #[serde(default)]
    pub tap: Option<TapNet>,
    pub pidfile: Option<PathBuf>,
    /// Fork into the background once the VM is set up, so QEMU outlives whoever started it.
    pub daemonize: bool,
    /// Exit instead of rebooting: a guest that reboots or panics (with `panic=-1`) ends the VM.
    pub no_reboot: bool,
    /// Start waiting for an incoming migration (`defer`, `unix:PATH`, `tcp:127.0.0.1:PORT`,
    /// `exec:…`) instead of booting.
    pub incoming: Option<String>,
}

impl VmConfig {
    /// A configuration with the given essentials and everything optional off.
    pub fn new(
        name: impl Into<String>,
        machine: Machine,
        accel: Accel,
        qmp_socket: PathBuf,
    ) -> Self {
        VmConfig {
            name: name.into(),
            machine,
            accel,
            cpu: None,
            cpus: 1,
            memory_mib: 512,
            kernel: None,
            disk: None,
            extra_disks: Vec::new(),
            qmp_socket,
            qga_socket: None,
            serial_log: None,
            net: None,
            tap: None,
            pidfile: None,
            daemonize: false,
            no_reboot: false,
            incoming: None,
        }
    }
}

/// The name of the guest agent's virtio-serial port, which qemu-ga opens in the guest.
pub const QGA_PORT_NAME: &str = "org.qemu.guest_agent.0";

/// Builds the argument vector (without the program name) for `qemu-system-x86_64`.
pub fn build_args(cfg: &VmConfig) -> Result<Vec<String>> {
    validate(cfg)?;
    let mut a = Args::default();
    let m = cfg.machine;

    a.push2("-name", opt_value(&cfg.name));
    a.push2("-machine", m.as_str());
    a.push2("-accel", cfg.accel.as_str());
    match (&cfg.cpu, cfg.accel) {
        (Some(model), _) => a.push2("-cpu", model.clone()),
        // The host CPU model exposes everything the hardware has; under TCG QEMU's default
        // model is kept, since emulating `max` features only costs speed.
        (None, Accel::Kvm) => a.push2("-cpu", "host"),
        (None, Accel::Tcg) => {}
    }
    a.push2("-smp", cfg.cpus.to_string());
    a.push2("-m", format!("{}M", cfg.memory_mib));
    // No default devices, no host-wide config files: the VM has exactly what is listed here,
    // so the golden tests describe the whole machine.
    a.push("-nodefaults");
    a.push("-no-user-config");
    a.push2("-display", "none");
    if cfg.no_reboot {
        a.push("-no-reboot");
    }

    if let Some(k) = &cfg.kernel {
        a.push2("-kernel", path_str(&k.kernel));
        if let Some(initrd) = &k.initrd {
            a.push2("-initrd", path_str(initrd));
        }
        if !k.append.is_empty() {
            a.push2("-append", k.append.clone());
        }
    }

    if let Some(d) = &cfg.disk {
        let mut drive = format!(
            "id=disk0,if=none,file={},format={},discard=unmap",
            opt_path(&d.path),
            d.format.as_str()
        );
        if d.read_only {
            drive.push_str(",read-only=on");
        }
        a.push2("-drive", drive);
        a.push2("-device", format!("{},drive=disk0", m.virtio("blk")));
    }
    for (i, d) in cfg.extra_disks.iter().enumerate() {
        let id = format!("disk{}", i + 1);
        let mut drive = format!(
            "id={id},if=none,file={},format={}",
            opt_path(&d.path),
            d.format.as_str()
        );
        if d.read_only {
            drive.push_str(",read-only=on");
        }
        a.push2("-drive", drive);
        a.push2("-device", format!("{},drive={id}", m.virtio("blk")));
    }

    if let Some(net) = &cfg.net {
        let mut netdev = "user,id=net0".to_string();
        if net.restrict {
            netdev.push_str(",restrict=on");
        }
        for f in &net.hostfwd {
            let proto = match f.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            netdev.push_str(&format!(
                ",hostfwd={proto}:{}:{}-:{}",
                f.host_addr, f.host_port, f.guest_port
            ));
        }
        a.push2("-netdev", netdev);
        a.push2("-device", format!("{},netdev=net0", m.virtio("net")));
    }
    if let Some(tap) = &cfg.tap {
        let ok_name = !tap.ifname.is_empty()
            && tap.ifname.len() <= 15
            && tap
                .ifname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let ok_mac = tap.mac.len() == 17
            && tap.mac.split(':').count() == 6
            && tap
                .mac
                .split(':')
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok_name || !ok_mac {
            return Err(Error::InvalidConfig {
                reason: format!("tap `{}` with MAC `{}` is not valid", tap.ifname, tap.mac),
            });
        }
        // script=no: the service made the tap and put it on the bridge already.
        a.push2(
            "-netdev",
            format!("tap,id=net1,ifname={},script=no,downscript=no", tap.ifname),
        );
        a.push2(
            "-device",
            format!("{},netdev=net1,mac={}", m.virtio("net"), tap.mac),
        );
    }

    // wait=off: QEMU must not block at start-up until a client connects.
    a.push2(
        "-chardev",
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            opt_path(&cfg.qmp_socket)
        ),
    );
    a.push2("-mon", "chardev=qmp,mode=control");

    if let Some(qga) = &cfg.qga_socket {
        a.push2(
            "-chardev",
            format!("socket,id=qga0,path={},server=on,wait=off", opt_path(qga)),
        );
        a.push2("-device", format!("{},id=vser0", m.virtio("serial")));
        a.push2(
            "-device",
            format!("virtserialport,bus=vser0.0,chardev=qga0,name={QGA_PORT_NAME}"),
        );
    }

    if let Some(log) = &cfg.serial_log {
        a.push2(
            "-chardev",
            format!("file,id=serial0,path={},append=on", opt_path(log)),
        );
        a.push2("-serial", "chardev:serial0");
    }

    if let Some(pidfile) = &cfg.pidfile {
        a.push2("-pidfile", path_str(pidfile));
    }
    if cfg.daemonize {
        a.push("-daemonize");
    }
    if let Some(uri) = &cfg.incoming {
        a.push2("-incoming", uri.clone());
    }
    Ok(a.0)
}

fn validate(cfg: &VmConfig) -> Result<()> {
    let invalid = |reason: String| Err(Error::InvalidConfig { reason });
    if cfg.name.is_empty() {
        return invalid("the VM name is empty".into());
    }
    if cfg.cpus == 0 {
        return invalid("a VM needs at least one CPU".into());
    }
    if cfg.memory_mib < 16 {
        return invalid(format!(
            "{} MiB of memory is too little to boot",
            cfg.memory_mib
        ));
    }
    if cfg.machine == Machine::Microvm && cfg.kernel.is_none() {
        // microvm has no firmware that could load a bootloader from the disk.
        return invalid(
            "the microvm machine boots only a given kernel (direct kernel boot)".into(),
        );
    }
    if cfg.kernel.is_none() && cfg.disk.is_none() && cfg.incoming.is_none() {
        return invalid("nothing to boot: neither a kernel nor a disk".into());
    }
    if cfg.daemonize && cfg.pidfile.is_none() {
        // A daemonized QEMU can only be found again (and killed) through its pidfile.
        return invalid("a daemonized VM needs a pidfile".into());
    }
    if let Some(net) = &cfg.net {
        for f in &net.hostfwd {
            if !f.host_addr.is_loopback() {
                return invalid(format!(
                    "port forward to {}: only loopback host addresses are allowed",
                    f.host_addr
                ));
            }
            if f.host_port == 0 || f.guest_port == 0 {
                return invalid("a port forward needs non-zero ports".into());
            }
        }
    }
    let mut paths: Vec<&Path> = vec![&cfg.qmp_socket];
    if let Some(k) = &cfg.kernel {
        paths.push(&k.kernel);
        paths.extend(k.initrd.as_deref());
    }
    paths.extend(cfg.disk.as_ref().map(|d| d.path.as_path()));
    paths.extend(cfg.extra_disks.iter().map(|d| d.path.as_path()));
    paths.extend(cfg.qga_socket.as_deref());
    paths.extend(cfg.serial_log.as_deref());
    paths.extend(cfg.pidfile.as_deref());
    for path in paths {
        // The argument vector is made of Strings; a lossy conversion would silently point
        // QEMU at another file.
        if path.to_str().is_none() {
            return invalid(format!("path {} is not valid UTF-8", path.display()));
        }
    }
    Ok(())
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, s: &str) {
        self.0.push(s.to_string());
    }
    fn push2(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_string());
        self.0.push(value.into());
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A value inside a comma-separated QEMU option list: a literal comma is written twice.
fn opt_value(s: &str) -> String {
    s.replace(',', ",,")
}

fn opt_path(p: &Path) -> String {
    opt_value(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_profile() -> VmConfig {
        let dir = PathBuf::from("/var/lib/vfarm/run/vm-1");
        VmConfig {
            name: "vm-1".into(),
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            cpu: None,
            cpus: 1,
            memory_mib: 512,
            kernel: Some(KernelBoot {
                kernel: "/images/abc/vmlinuz".into(),
                initrd: Some("/cache/initramfs/fast-6.1.0-56-cloud-amd64.cpio.gz".into()),
                append: "console=ttyS0 panic=-1 root=/dev/vda".into(),
            }),
            disk: Some(Disk {
                path: dir.join("disk.qcow2"),
                format: DiskFormat::Qcow2,
                read_only: false,
            }),
            extra_disks: Vec::new(),
            qmp_socket: dir.join("qmp.sock"),
            qga_socket: Some(dir.join("qga.sock")),
            serial_log: Some(dir.join("console.log")),
            net: Some(UserNet {
                hostfwd: vec![HostFwd::ssh(2222)],
                restrict: false,
            }),
            tap: None,
            pidfile: Some(dir.join("qemu.pid")),
            daemonize: true,
            no_reboot: true,
            incoming: None,
        }
    }

    /// Golden files hold one argument per line, so a diff shows exactly which argument moved.
    fn golden(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    fn assert_golden(cfg: &VmConfig, expected: &str) {
        let got = build_args(cfg).expect("valid config");
        assert_eq!(got, golden(expected), "got:\n{}", got.join("\n"));
    }

    #[test]
    fn microvm_fast_profile_matches_golden() {
        assert_golden(
            &fast_profile(),
            include_str!("../tests/golden/microvm-fast.args"),
        );
    }

    #[test]
    fn q35_kvm_disk_boot_matches_golden() {
        let cfg = VmConfig {
            name: "web,01".into(),
            machine: Machine::Q35,
            accel: Accel::Kvm,
            cpu: None,
            cpus: 2,
            memory_mib: 2048,
            kernel: None,
            disk: Some(Disk {
                path: "/data/a,b/disk.raw".into(),
                format: DiskFormat::Raw,
                read_only: true,
            }),
            extra_disks: Vec::new(),
            qmp_socket: "/run/vm/qmp.sock".into(),
            qga_socket: Some("/run/vm/qga.sock".into()),
            serial_log: None,
            net: Some(UserNet {
                hostfwd: vec![
                    HostFwd::ssh(10022),
                    HostFwd {
                        proto: Proto::Udp,
                        host_addr: Ipv4Addr::new(127, 0, 0, 2),
                        host_port: 5353,
                        guest_port: 53,
                    },
                ],
                restrict: false,
            }),
            tap: None,
            pidfile: None,
            daemonize: false,
            no_reboot: false,
            incoming: None,
        };
        assert_golden(&cfg, include_str!("../tests/golden/q35-kvm-disk.args"));
    }

    #[test]
    fn pc_incoming_migration_matches_golden() {
        let mut cfg = VmConfig::new("dst", Machine::Pc, Accel::Tcg, "/run/dst/qmp.sock".into());
        cfg.disk = Some(Disk {
            path: "/run/dst/disk.qcow2".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
        });
        cfg.incoming = Some("unix:/run/dst/migrate.sock".into());
        // A named model, as a migration between different hosts needs.
        cfg.cpu = Some("EPYC-v4".into());
        cfg.pidfile = Some("/run/dst/qemu.pid".into());
        cfg.daemonize = true;
        assert_golden(&cfg, include_str!("../tests/golden/pc-incoming.args"));
    }

    #[test]
    fn rejects_non_loopback_port_forward() {
        let mut cfg = fast_profile();
        cfg.net = Some(UserNet {
            hostfwd: vec![HostFwd {
                proto: Proto::Tcp,
                host_addr: Ipv4Addr::UNSPECIFIED,
                host_port: 2222,
                guest_port: 22,
            }],
            restrict: false,
        });
        let err = build_args(&cfg).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    #[test]
    fn rejects_microvm_without_kernel() {
        let mut cfg = fast_profile();
        cfg.kernel = None;
        assert!(matches!(build_args(&cfg), Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn rejects_daemonize_without_pidfile() {
        let mut cfg = fast_profile();
        cfg.pidfile = None;
        assert!(matches!(build_args(&cfg), Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn rejects_zero_cpus() {
        let mut cfg = fast_profile();
        cfg.cpus = 0;
        assert!(matches!(build_args(&cfg), Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn config_round_trips_through_json() {
        // The driver keeps the config in its per-instance runtime record.
        let cfg = fast_profile();
        let text = serde_json::to_string(&cfg).unwrap();
        let back: VmConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn tap_nic_and_kernel_ip_argument() {
        let mut cfg = fast_profile();
        cfg.tap = Some(TapNet {
            ifname: "vft-0123456789a".into(),
            mac: "52:54:00:aa:bb:cc".into(),
        });
        let args = build_args(&cfg).unwrap();
        let joined = args.join(" ");
        assert!(
            joined.contains("-netdev tap,id=net1,ifname=vft-0123456789a,script=no,downscript=no"),
            "{joined}"
        );
        assert!(
            joined.contains("netdev=net1,mac=52:54:00:aa:bb:cc"),
            "{joined}"
        );
        cfg.tap.as_mut().unwrap().ifname = "vft-x,script=/tmp/evil".into();
        assert!(build_args(&cfg).is_err());
        let ip = StaticIp {
            address: "10.9.0.5".parse().unwrap(),
            prefix: 20,
            gateway: Some("10.9.0.1".parse().unwrap()),
            nameservers: vec!["10.9.0.1".parse().unwrap()],
        };
        assert_eq!(
            ip.kernel_arg("n1"),
            "ip=10.9.0.5::10.9.0.1:255.255.240.0:n1:eth0:off:10.9.0.1"
        );
    }
}

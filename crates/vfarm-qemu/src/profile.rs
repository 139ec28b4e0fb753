//! The boot profiles. `fast`: microvm + direct kernel boot + the fast-boot initramfs + a
//! qcow2 overlay, with qemu-ga as the guest's only process. `full`: q35 + direct kernel boot
//! of the image's own kernel and Debian initramfs, systemd, cloud-init from a NoCloud seed,
//! sshd behind a forwarded port.

use std::path::{Path, PathBuf};

use crate::cmdline::{Accel, Disk, DiskFormat, KernelBoot, Machine, StaticIp, UserNet, VmConfig};
use crate::error::{Error, Result};

/// Files of one VM in its run directory, named the same way for every VM so a restarted
/// service finds them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFiles {
    pub qmp_socket: PathBuf,
    pub qga_socket: PathBuf,
    pub serial_log: PathBuf,
    pub pidfile: PathBuf,
    pub disk: PathBuf,
}

impl RunFiles {
    pub fn in_dir(dir: &Path) -> RunFiles {
        RunFiles {
            qmp_socket: dir.join("qmp.sock"),
            qga_socket: dir.join("qga.sock"),
            serial_log: dir.join("console.log"),
            pidfile: dir.join("qemu.pid"),
            disk: dir.join("disk.qcow2"),
        }
    }

    fn all(&self) -> [&Path; 5] {
        [
            &self.qmp_socket,
            &self.qga_socket,
            &self.serial_log,
            &self.pidfile,
            &self.disk,
        ]
    }

    /// The files that exist (QEMU removes its pidfile on a clean exit but leaves its sockets).
    pub fn existing(&self) -> Vec<PathBuf> {
        self.all()
            .into_iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .map(Path::to_path_buf)
            .collect()
    }

    /// Removes every file of the VM (after QEMU has exited); missing ones are fine, so this
    /// also cleans up after a half-started VM.
    pub fn remove_all(&self) -> Result<()> {
        for p in self.all() {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", p, e)),
            }
        }
        Ok(())
    }
}

/// The kernel command line of the fast profile.
///
/// Under TCG on microvm there is no HPET or ACPI PM timer to calibrate the TSC against and the
/// PIT calibration often fails under emulation, after which the kernel hangs; passing the
/// host's TSC frequency (`tsc_early_khz`, TCG's guest TSC runs at the host's rate) and
/// `tsc=unstable` (emulated TSC reads are not stable enough for the clocksource watchdog) lets
/// it boot every time. `quiet` because every console byte is an emulated UART write.
pub fn fast_append(
    accel: Accel,
    tsc_khz: Option<u64>,
    hostname: Option<&str>,
    user_net: bool,
    ip: Option<&StaticIp>,
) -> String {
    let mut parts = vec![
        "console=ttyS0".to_string(),
        "panic=-1".to_string(),
        "quiet".to_string(),
        "root=/dev/vda".to_string(),
        "rootfstype=ext4".to_string(),
    ];
    if accel == Accel::Tcg {
        if let Some(khz) = tsc_khz {
            parts.push(format!("tsc_early_khz={khz}"));
        }
        parts.push("tsc=unstable".to_string());
    }
    if let Some(h) = hostname {
        parts.push(format!("vfarm.hostname={h}"));
    }
    if user_net {
        parts.push("vfarm.net=user".to_string());
    }
    if let Some(ip) = ip {
        parts.push(ip.kernel_arg(hostname.unwrap_or("")));
    }
    parts.join(" ")
}

/// The kernel command line of the accelerator probe's test guest (the TSC hints matter only
/// when the probe machinery itself is checked under TCG).
pub(crate) fn probe_append(accel: Accel) -> String {
    let mut parts = vec!["console=ttyS0", "panic=-1", "quiet"];
    let tsc;
    if accel == Accel::Tcg {
        if let Some(khz) = host_tsc_khz() {
            tsc = format!("tsc_early_khz={khz}");
            parts.push(&tsc);
        }
        parts.push("tsc=unstable");
    }
    parts.join(" ")
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo` ("cpu MHz" of the first CPU).
pub fn host_tsc_khz() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    parse_cpu_mhz(&text)
}

fn parse_cpu_mhz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// A fast-profile VM: microvm, direct kernel boot with the fast initramfs, the overlay disk,
/// QMP + guest agent sockets, serial log, detached with a pidfile, exiting on reboot or panic.
pub fn fast_vm_config(
    name: &str,
    accel: Accel,
    kernel: &Path,
    initrd: &Path,
    files: &RunFiles,
    net: Option<UserNet>,
) -> VmConfig {
    let append = fast_append(accel, host_tsc_khz(), Some(name), net.is_some(), None);
    VmConfig {
        name: name.to_string(),
        machine: Machine::Microvm,
        accel,
        cpu: None,
        cpus: 1,
        memory_mib: 512,
        kernel: Some(KernelBoot {
            kernel: kernel.to_path_buf(),
            initrd: Some(initrd.to_path_buf()),
            append,
        }),
        disk: Some(Disk {
            path: files.disk.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
        }),
        extra_disks: Vec::new(),
        qmp_socket: files.qmp_socket.clone(),
        qga_socket: Some(files.qga_socket.clone()),
        serial_log: Some(files.serial_log.clone()),
        net,
        tap: None,
        pidfile: Some(files.pidfile.clone()),
        daemonize: true,
        no_reboot: true,
        incoming: None,
    }
}

/// The kernel command line of the full profile: the image's own kernel and Debian initramfs
/// mount the virtio disk read-write (an image's fstab lists no root, so nothing would remount
/// it), systemd is init, the console is the serial port (the boot log).
pub fn full_append(hostname: Option<&str>) -> String {
    let mut parts = vec![
        "console=ttyS0".to_string(),
        "panic=-1".to_string(),
        "root=/dev/vda".to_string(),
        "rootfstype=ext4".to_string(),
        "rw".to_string(),
    ];
    // Shown in /proc/cmdline only, for someone reading a process list; cloud-init sets the
    // real host name from the seed.
    if let Some(h) = hostname {
        parts.push(format!("vfarm.hostname={h}"));
    }
    parts.join(" ")
}

/// Where a full-profile VM's extra files live, beside its [`RunFiles`].
pub fn seed_path(dir: &Path) -> PathBuf {
    dir.join("seed.img")
}

/// A full-profile VM: q35, direct kernel boot of the image's kernel and initramfs, the overlay
/// as root disk, the cloud-init seed as a second read-only disk, user-mode networking (with
/// `net`'s port forwards), QMP + guest agent sockets, serial log, detached with a pidfile.
/// It reboots like a real machine would (no `-no-reboot`): a guest that reboots comes back.
pub fn full_vm_config(
    name: &str,
    accel: Accel,
    kernel: &Path,
    initrd: &Path,
    files: &RunFiles,
    seed: &Path,
    net: UserNet,
) -> VmConfig {
    VmConfig {
        name: name.to_string(),
        machine: Machine::Q35,
        accel,
        cpu: None,
        cpus: 1,
        memory_mib: 1024,
        kernel: Some(KernelBoot {
            kernel: kernel.to_path_buf(),
            initrd: Some(initrd.to_path_buf()),
            append: full_append(Some(name)),
        }),
        disk: Some(Disk {
            path: files.disk.clone(),
            format: DiskFormat::Qcow2,
            read_only: false,
        }),
        extra_disks: vec![Disk {
            path: seed.to_path_buf(),
            format: DiskFormat::Raw,
            read_only: true,
        }],
        qmp_socket: files.qmp_socket.clone(),
        qga_socket: Some(files.qga_socket.clone()),
        serial_log: Some(files.serial_log.clone()),
        net: Some(net),
        tap: None,
        pidfile: Some(files.pidfile.clone()),
        daemonize: true,
        no_reboot: false,
        incoming: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_append_carries_tsc_hints_and_kvm_does_not() {
        assert_eq!(
            fast_append(Accel::Tcg, Some(2_596_122), Some("vm-1"), true, None),
            "console=ttyS0 panic=-1 quiet root=/dev/vda rootfstype=ext4 tsc_early_khz=2596122 tsc=unstable vfarm.hostname=vm-1 vfarm.net=user"
        );
        assert_eq!(
            fast_append(Accel::Kvm, Some(2_596_122), None, false, None),
            "console=ttyS0 panic=-1 quiet root=/dev/vda rootfstype=ext4"
        );
    }

    #[test]
    fn full_profile_matches_golden() {
        let dir = Path::new("/var/lib/vfarm/qemu/instances/vm-2");
        let files = RunFiles::in_dir(dir);
        let cfg = full_vm_config(
            "vm-2",
            Accel::Tcg,
            Path::new("/images/abc/vmlinuz"),
            Path::new("/images/abc/initrd.img"),
            &files,
            &seed_path(dir),
            UserNet {
                hostfwd: vec![crate::cmdline::HostFwd::ssh(40022)],
                restrict: true,
            },
        );
        let got = crate::cmdline::build_args(&cfg).expect("valid config");
        let want: Vec<String> = include_str!("../tests/golden/q35-full.args")
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(got, want, "got:\n{}", got.join("\n"));
    }

    #[test]
    fn cpu_mhz_parsing() {
        let text = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.122\ncache size\t: 512 KB\n";
        assert_eq!(parse_cpu_mhz(text), Some(2_596_122));
        assert_eq!(parse_cpu_mhz("processor: 0\n"), None);
    }
}

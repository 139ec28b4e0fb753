//! QEMU plumbing for vfarm's full-VM driver.
//!
//! The driver (in `vfarm-driver`) decides *what* happens to an instance; this crate knows *how*
//! to make QEMU do it:
//!
//! - [`probe`]: is KVM usable here? Boots a tiny guest under KVM with a timeout; the verdict is
//!   cached per host boot. [`probe::choose_accel`] turns a preference into KVM or TCG.
//! - [`initramfs`]: the fast-boot initramfs (busybox + the image kernel's virtio modules) that
//!   mounts the root disk and makes the guest agent PID 1.
//! - [`cmdline`]: the QEMU argument vector as a pure function of a [`cmdline::VmConfig`].
//! - [`profile`]: the fast and full profiles' kernel command lines and VM configurations.
//! - [`cloudinit`]: the full profile's NoCloud seed disk (user, SSH keys, files).
//! - [`overlay`]: qcow2 copy-on-write disks over an image's disk.
//! - [`process`]: the detached QEMU process, found again through its pidfile.
//! - [`qmp`] and [`qga`]: clients for QEMU's control socket and the guest agent, every exchange
//!   bounded by a timeout.
//!
//! Everything is synchronous: the driver trait is, and each operation here is a short exchange
//! on a local socket or a short-lived child process.

pub mod cloudinit;
pub mod cmdline;
pub mod error;
pub mod initramfs;
pub mod overlay;
pub mod probe;
pub mod process;
pub mod profile;
pub mod qga;
pub mod qmp;
pub mod tools;
mod wire;

pub use cloudinit::{Seed, SeedFile};
pub use cmdline::{
    build_args, Accel, Disk, DiskFormat, HostFwd, KernelBoot, Machine, StaticIp, TapNet, UserNet,
    VmConfig,
};
pub use error::{Error, Result};
pub use initramfs::{fast_initramfs, FastInitramfs, InitramfsRequest};
pub use overlay::create_overlay;
pub use probe::{
    choose_accel, probe_kvm, test_boot, AccelChoice, AccelDecision, KvmFailure, KvmVerdict,
    ProbeConfig,
};
pub use process::{spawn_daemonized, KillOnDrop, QemuProcess};
pub use profile::{fast_vm_config, full_vm_config, RunFiles};
pub use qga::{ExecOutput, ExecRequest, ExitKind, GuestAgent};
pub use qmp::{BlockJob, MigrationInfo, MigrationRam, Qmp, VmStatus};

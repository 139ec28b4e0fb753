//! How an instance is run: the [`Driver`] trait, its optional capabilities, and the backends.
//!
//! A driver works at the lifecycle level of one instance on this host: `prepare` (disks,
//! overlays, config; nothing runs yet), `start`, `stop`, `observe`, `cleanup`. Everything
//! else (pause, exec, snapshots, …) is an optional capability reached through an accessor
//! returning `Option`: `None` means the backend cannot do it, and the caller answers with a
//! clear "unsupported" error instead of a silent no-op.
//!
//! Drivers keep a per-instance runtime record on disk, so a process that did not start an
//! instance (a restarted service, another CLI invocation) can observe and drive it. A driver
//! never needs the state store; the store holds what the user asked for, the driver's record
//! holds how it was done.
//!
//! Backends: [`oci`] (an OCI runtime: runc or crun) and [`qemu`] (full VMs on QEMU).

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[cfg(feature = "fake")]
pub mod fake;
pub mod idmap;
pub mod oci;
pub mod process;
pub mod qemu;
mod record;

/// Why a driver operation failed, classified so a caller can decide to retry, fail, or place
/// the instance elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The backend cannot do this at all (e.g. live migration on oci).
    #[error("{driver} driver does not support {what}")]
    Unsupported { driver: &'static str, what: String },
    /// The request is malformed for this backend; retrying will not help.
    #[error("invalid instance spec: {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    /// This host lacks something the backend needs (runtime binary, kernel feature, cgroup).
    #[error("host not ready for the {driver} driver: {reason}")]
    HostNotReady {
        driver: &'static str,
        reason: String,
    },
    /// The instance (or one of its snapshots) has no runtime record on this host.
    #[error("{kind} `{id}` not found on this host")]
    NotFound { kind: &'static str, id: String },
    /// The backend failed while acting. `retryable` says whether the same call may succeed
    /// later (a busy runtime, a transient I/O error) or not (a corrupt bundle).
    #[error("{op} failed for instance `{id}`: {detail}")]
    Backend {
        op: &'static str,
        id: String,
        detail: String,
        retryable: bool,
        #[source]
        source: Option<std::io::Error>,
    },
}

impl DriverError {
    /// A stable machine-readable code for API bodies and CLI exit paths.
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            DriverError::Unsupported { .. } => vfarm_proto::ErrorCode::Unsupported,
            DriverError::InvalidSpec { .. } => vfarm_proto::ErrorCode::InvalidSpec,
            DriverError::HostNotReady { .. } => vfarm_proto::ErrorCode::HostNotReady,
            DriverError::NotFound { .. } => vfarm_proto::ErrorCode::NotFound,
            DriverError::Backend { .. } => vfarm_proto::ErrorCode::BackendFailure,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DriverError::Backend {
                retryable: true,
                ..
            }
        )
    }
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// Network attachment of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Own network namespace with only a loopback interface.
    #[default]
    None,
    /// Share the host's network stack.
    Host,
    /// On one of the site's networks: the service leased the address and made the link
    /// (vfarm-net) before the driver prepares the instance.
    Attached(Attachment),
}

/// An instance's place on a network, as the service made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub nameservers: Vec<std::net::Ipv4Addr>,
    pub mac: String,
    /// The host's end of the instance's link: oci, the veth (`vfh-…`) whose peer becomes
    /// `eth0` inside; qemu, the tap (`vft-…`).
    pub link: String,
    /// The bridge the link goes on.
    pub bridge: String,
}

impl Network {
    pub fn attachment(&self) -> Option<&Attachment> {
        match self {
            Network::Attached(a) => Some(a),
            _ => None,
        }
    }
}

/// One file of the image, as the driver receives it: the image repository decides where files
/// live, the driver picks the format it can run (oci: the rootfs tar; qemu: a disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    pub format: vfarm_core::Format,
    pub path: PathBuf,
}

/// The image an instance is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInput {
    pub id: String,
    pub files: Vec<ImageFile>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
}

/// What a driver needs to prepare an instance. Validated user input (vfarm-core) becomes this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Unique on the host; `[A-Za-z0-9_-]`, at most 64 characters.
    pub id: String,
    pub image: ImageInput,
    pub hostname: String,
    /// CPU bandwidth in whole or fractional CPUs; `None` is unlimited.
    pub cpus: Option<f64>,
    /// Memory limit in bytes; a process exceeding it is killed inside the instance.
    pub memory: Option<u64>,
    /// Maximum number of processes (a fork bomb stays inside).
    pub pids: Option<u64>,
    /// Disk size in bytes, for drivers with their own disks.
    pub disk: Option<u64>,
    pub env: Vec<(String, String)>,
    /// The instance's main command; empty means the driver's idle init.
    pub command: Vec<String>,
    pub network: Network,
    /// Run inside a user namespace (root in the instance is not root on the host).
    pub user_namespace: bool,
    /// With `user_namespace`: the host id that uid and gid 0 map to, 65,536 ids from it
    /// (`idmap::base_for` the owner). 0 maps ids to themselves, as records made before ranges
    /// existed do: the namespace then confines capabilities but not file ownership.
    #[serde(default)]
    pub id_base: u32,
    /// The instance's filesystem need not survive a host crash (disposable runs): its writes
    /// are never flushed (fsync inside is a no-op), so start, stop, revert and destroy do not
    /// wait for the host's dirty data. Durable instances leave this off.
    #[serde(default)]
    pub volatile: bool,
    /// How a VM boots and what its guest is set up with (qemu driver only; the CLI refuses
    /// these options for other drivers).
    #[serde(default)]
    pub vm: VmSetup,
}

/// How a VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProfile {
    /// microvm + a busybox initramfs with the guest agent as PID 1: seconds to a command.
    #[default]
    Fast,
    /// q35 + the image's own kernel and initramfs, systemd, cloud-init, sshd.
    Full,
}

impl BootProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            BootProfile::Fast => "fast",
            BootProfile::Full => "full",
        }
    }
}

/// A file written into a full-profile VM at its first boot (host certificates, config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub path: String,
    pub content: Vec<u8>,
    /// Permission bits, e.g. 0o644.
    pub mode: u32,
}

/// The VM-only part of an instance spec: the boot profile and, for the full profile, what
/// cloud-init sets up at first boot.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmSetup {
    #[serde(default)]
    pub profile: BootProfile,
    /// The login user (default `vfarm`), with passwordless sudo.
    #[serde(default)]
    pub user: Option<String>,
    /// OpenSSH public key lines authorised for the user.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// A private key beside one of the public keys, used by `vfarm instance ssh` by default.
    #[serde(default)]
    pub ssh_identity: Option<PathBuf>,
    #[serde(default)]
    pub files: Vec<GuestFile>,
}

/// What an instance is doing right now, as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Observed {
    /// Prepared, never started (or reset after a stop).
    Created,
    Running,
    Paused,
    /// The main process ended with this status (128 + signal for a signal, like a shell).
    Exited {
        code: i32,
    },
    /// Started once, but nothing runs and no exit status was recorded (killed runtime,
    /// host reboot): the status is unknown.
    Lost,
}

impl fmt::Display for Observed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observed::Created => f.write_str("created"),
            Observed::Running => f.write_str("running"),
            Observed::Paused => f.write_str("paused"),
            Observed::Exited { code } => write!(f, "exited({code})"),
            Observed::Lost => f.write_str("lost"),
        }
    }
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Ask the main process to terminate; kill it after `timeout`.
    Graceful { timeout: Duration },
    /// Kill at once.
    Kill,
}

/// Where a host can run this driver, and why not if it cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub driver: &'static str,
    pub usable: bool,
    /// Which backend implementation was chosen (e.g. "runc 1.1.5").
    pub backend: String,
    /// One line per thing checked, including refusals of alternatives.
    pub notes: Vec<String>,
}

/// The files an instance writes its console output to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFiles {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// The lifecycle every backend implements. Synchronous and object safe: callers hold a
/// `Box<dyn Driver>` chosen at run time.
pub trait Driver: Send + Sync {
    /// The driver's name as users write it (`oci`, `qemu`).
    fn kind(&self) -> &'static str;

    /// Can this host run instances with this driver? Actually runs something; never trusts
    /// the mere presence of a binary or device node.
    fn probe(&self) -> Result<ProbeReport>;

    /// Make everything the instance needs, without running anything. Idempotent: preparing
    /// an already prepared instance with the same spec succeeds and changes nothing.
    fn prepare(&self, spec: &InstanceSpec) -> Result<()>;

    /// Start the main process. Returns once it runs (or has already exited).
    fn start(&self, id: &str) -> Result<()>;

    /// Stop the main process and return how it ended. Stopping a stopped instance is fine.
    fn stop(&self, id: &str, mode: StopMode) -> Result<Observed>;

    /// What the instance is doing, from the backend's own truth (not from any record).
    fn observe(&self, id: &str) -> Result<Observed>;

    /// Remove everything of the instance from the host: processes, mounts, runtime state,
    /// files. Works on half-prepared instances and on instances that do not exist.
    fn cleanup(&self, id: &str) -> Result<()>;

    /// Where the instance's console output goes.
    fn logs(&self, id: &str) -> Result<LogFiles>;

    /// Ids of all instances this driver has a runtime record for on this host, so a
    /// restarted service can reconcile them with the state store.
    fn list(&self) -> Result<Vec<String>>;

    fn pausable(&self) -> Option<&dyn Pausable> {
        None
    }
    fn exec(&self) -> Option<&dyn Exec> {
        None
    }
    fn snapshots(&self) -> Option<&dyn Snapshots> {
        None
    }
    fn files(&self) -> Option<&dyn Files> {
        None
    }
    fn stats(&self) -> Option<&dyn Stats> {
        None
    }
}

/// What a running instance uses: totals since it started (CPU time, bytes moved) and levels
/// now (memory). Rates come from two samples; the service keeps the history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// CPU time of all its processes (oci: the cgroup; qemu: the QEMU process).
    pub cpu_time: std::time::Duration,
    /// CPUs it may use: its quota (oci), its vCPUs (qemu), else the host's.
    pub cpus: f64,
    /// Memory in use, page cache the kernel reclaims first not counted (oci), or QEMU's RSS.
    pub memory_bytes: u64,
    /// Its memory limit; `None`: unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    /// `None` when not measurable (an oci instance on the host's network, a VM whose agent
    /// does not answer).
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

/// Measuring a running instance. Cheap (file reads, one QMP round trip): the service samples
/// every instance at a fixed interval.
pub trait Stats: Send + Sync {
    /// Fails when the instance is not running (or paused).
    fn usage(&self, id: &str) -> Result<Usage>;
}

/// Freeze and thaw every process of an instance.
pub trait Pausable: Send + Sync {
    fn pause(&self, id: &str) -> Result<()>;
    fn resume(&self, id: &str) -> Result<()>;
}

/// Where an exec'd process reads and writes.
pub struct ExecIo {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl ExecIo {
    /// The caller's own stdin/stdout/stderr: output passes straight through.
    pub fn inherit() -> ExecIo {
        // `Stdio::inherit()` means "the child's fd N is our fd N": a backend that hands the
        // stderr Stdio to a helper's stdout would land on our stdout. Duplicates of our own
        // descriptors keep each stream where it belongs whichever fd receives it.
        use std::os::fd::AsFd;
        fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Stdio {
            fd.try_clone_to_owned()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::inherit())
        }
        ExecIo {
            stdin: dup(std::io::stdin().as_fd()),
            stdout: dup(std::io::stdout().as_fd()),
            stderr: dup(std::io::stderr().as_fd()),
        }
    }
}

/// When an exec must end early: at a deadline, or when its caller gives up (the API client
/// went away).
#[derive(Debug, Clone, Default)]
pub struct ExecStop {
    pub deadline: Option<Instant>,
    pub cancelled: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl ExecStop {
    /// Whether the exec must be ended now.
    pub fn reached(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
            || self
                .cancelled
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Run another process inside a running instance.
pub trait Exec: Send + Sync {
    /// Run `argv` (with extra `env`) in the instance and return its exit status (128 + signal
    /// for a signal).
    fn exec(&self, id: &str, argv: &[String], env: &[(String, String)], io: ExecIo) -> Result<i32>;

    /// [`exec`](Self::exec), killing the process when `stop` is reached: `None` then. The
    /// default cannot kill, so it runs to its end (a backend that can kill overrides it).
    fn exec_until(
        &self,
        id: &str,
        argv: &[String],
        env: &[(String, String)],
        io: ExecIo,
        stop: &ExecStop,
    ) -> Result<Option<i32>> {
        let _ = stop;
        self.exec(id, argv, env, io).map(Some)
    }
}

/// Named, revertible points of an instance's filesystem.
pub trait Snapshots: Send + Sync {
    /// Capture the instance's current filesystem as `name`. A running instance keeps running.
    fn create(&self, id: &str, name: &str) -> Result<SnapshotInfo>;
    /// Make the instance's filesystem exactly the snapshot's. A running instance is stopped,
    /// reverted and started again.
    fn revert(&self, id: &str, name: &str) -> Result<()>;
    fn remove(&self, id: &str, name: &str) -> Result<()>;
    fn list(&self, id: &str) -> Result<Vec<SnapshotInfo>>;
}

/// Copy regular files between the host and an instance's filesystem (job staging, `instance
/// cp`). Paths inside the instance are absolute and resolved inside it: a symlink in the
/// instance never leads a copy out of its root.
pub trait Files: Send + Sync {
    /// Copy the host file `src` to `dst` in the instance, creating missing parent directories
    /// and replacing a file already there; the permission bits of `src` are kept (an
    /// executable stays executable). oci: the instance is prepared or running; qemu: running.
    fn copy_in(&self, id: &str, src: &std::path::Path, dst: &str) -> Result<()>;
    /// Copy the instance's file `src` to the host file `dst` (replaced if it exists).
    fn copy_out(&self, id: &str, src: &str, dst: &std::path::Path) -> Result<()>;
}

/// Check an instance-side path given to [`Files`]: absolute, no `..`, not the root itself.
pub fn validate_instance_path(field: &'static str, path: &str) -> Result<()> {
    let bad = |reason: &str| DriverError::InvalidSpec {
        field,
        reason: format!("`{path}`: {reason}"),
    };
    if !path.starts_with('/') {
        return Err(bad("must be an absolute path inside the instance"));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(bad("must not contain `..`"));
    }
    if path.trim_end_matches('/').is_empty() {
        return Err(bad("names the instance's root, not a file"));
    }
    if path.ends_with('/') {
        return Err(bad("names a directory; give the file name"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// Bytes the snapshot holds beyond the image and earlier snapshots.
    pub size: u64,
}

/// Sleep intervals for polling a process: about 1 ms for the first 200 ms, so short
/// commands are noticed at once, then backing off to 20 ms so long waits cost little.
#[derive(Debug, Clone)]
pub struct Backoff {
    begun: Instant,
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            begun: Instant::now(),
            delay: Duration::from_micros(250),
        }
    }
}

impl Backoff {
    /// Sleep for the next interval.
    pub fn sleep(&mut self) {
        std::thread::sleep(self.delay);
        let cap = if self.begun.elapsed() < Duration::from_millis(200) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(20)
        };
        self.delay = (self.delay * 2).min(cap);
    }

    pub fn elapsed(&self) -> Duration {
        self.begun.elapsed()
    }
}

/// Poll `observe` until the instance is no longer running (or paused), or `timeout` passes.
/// Returns the last observation. Polls fast at first so short commands return quickly.
pub fn wait_until_stopped(
    driver: &dyn Driver,
    id: &str,
    timeout: Option<Duration>,
) -> Result<Observed> {
    let mut b = Backoff::default();
    loop {
        let o = driver.observe(id)?;
        if !matches!(o, Observed::Running | Observed::Paused) {
            return Ok(o);
        }
        if timeout.is_some_and(|t| b.elapsed() >= t) {
            return Ok(o);
        }
        b.sleep();
    }
}

/// Instance ids become file names, cgroup paths and runtime container ids.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(DriverError::InvalidSpec {
            field: "id",
            reason: format!("`{id}` must be 1-64 characters of A-Z a-z 0-9 - _"),
        });
    }
    Ok(())
}

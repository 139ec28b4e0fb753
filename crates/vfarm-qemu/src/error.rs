//! The crate's one error type. Variants are classified by what the caller can do about them:
//! a missing host tool (install it), an invalid configuration (fix the request), a timeout or a
//! lost connection (retry or give up on the VM), an error QEMU or the guest agent reported.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::probe::KvmFailure;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program this crate drives is not installed.
    #[error("{tool} not found (install the Debian package {package})")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },

    /// A file or directory operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A program could not be started at all.
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A program ran but failed; `stderr` is its last output, trimmed.
    #[error("{program} failed ({status}): {stderr}")]
    CommandFailed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },

    /// A VM configuration that QEMU cannot be given.
    #[error("invalid VM configuration: {reason}")]
    InvalidConfig { reason: String },

    /// An operation did not finish in time.
    #[error("{what} timed out after {:.1} s", after.as_secs_f64())]
    Timeout { what: String, after: Duration },

    /// A socket (QMP or guest agent) or pipe closed while a reply was expected.
    #[error("{what} closed the connection")]
    Disconnected { what: &'static str },

    /// The socket read or write failed for a reason other than a timeout.
    #[error("{what} connection failed")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A signal could not be sent to a QEMU process.
    #[error("cannot signal QEMU (pid {pid})")]
    Signal {
        pid: i32,
        #[source]
        source: std::io::Error,
    },

    /// The peer sent something that is not the protocol we speak.
    #[error("{what} sent an unexpected reply: {detail}")]
    Protocol { what: &'static str, detail: String },

    /// QEMU answered a QMP command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Qmp {
        command: String,
        class: String,
        desc: String,
    },

    /// The guest agent answered a command with an error.
    #[error("guest agent command {command} failed: {class}: {desc}")]
    GuestAgent {
        command: String,
        class: String,
        desc: String,
    },

    /// KVM was required but the probe found it unusable.
    #[error("KVM does not work on this host: {reason}")]
    KvmUnusable { reason: KvmFailure },

    /// The image's rootfs holds no (or more than one, and none was named) kernel module tree.
    #[error("kernel version in {}: {problem}", rootfs.display())]
    KernelVersion { rootfs: PathBuf, problem: String },

    /// A module the fast-boot initramfs needs is not in the image's `modules.dep`.
    #[error("kernel module {module} not found for kernel {kernel_version}")]
    ModuleMissing {
        module: String,
        kernel_version: String,
    },

    /// A tarball entry could not be read.
    #[error("cannot read {} from the rootfs tarball {}", entry, rootfs.display())]
    Tar {
        rootfs: PathBuf,
        entry: String,
        #[source]
        source: std::io::Error,
    },

    /// A requested overlay is smaller than the image it is based on.
    #[error("disk size {requested} bytes is smaller than the image's {base} bytes")]
    OverlayTooSmall { requested: u64, base: u64 },

    /// The host's boot id (the probe cache key) cannot be read.
    #[error("cannot read the host boot id")]
    BootId {
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether trying again later may succeed (a timeout or a lost connection, as opposed to
    /// a configuration or installation problem).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Disconnected { .. } | Error::Socket { .. }
        )
    }
}

//! Classifying vfarm-qemu's errors (and the driver's own file errors) into [`DriverError`], so
//! a caller can tell "install something" from "fix the request" from "try again".

use crate::DriverError;

pub(crate) const DRIVER: &str = "qemu";

/// Every vfarm-qemu error variant is named here on purpose (no catch-all): a new variant must
/// be classified by whoever adds it.
pub(crate) fn classify(op: &'static str, id: &str, e: vfarm_qemu::Error) -> DriverError {
    use vfarm_qemu::Error as E;
    let msg = e.to_string();
    let backend = |retryable: bool, source: Option<std::io::Error>| DriverError::Backend {
        op,
        id: id.to_string(),
        detail: msg.clone(),
        retryable,
        source,
    };
    match e {
        E::ToolMissing { .. } | E::KvmUnusable { .. } | E::BootId { .. } => {
            DriverError::HostNotReady {
                driver: DRIVER,
                reason: msg,
            }
        }
        // A program that cannot even be executed is an installation problem.
        E::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            DriverError::HostNotReady {
                driver: DRIVER,
                reason: msg,
            }
        }
        E::Spawn { source, .. } => backend(false, Some(source)),
        E::InvalidConfig { reason } => DriverError::InvalidSpec {
            field: "vm",
            reason,
        },
        E::OverlayTooSmall { .. } => DriverError::InvalidSpec {
            field: "disk",
            reason: msg,
        },
        // The image lacks what the fast profile needs (a kernel's module tree, virtio modules).
        E::KernelVersion { .. } | E::ModuleMissing { .. } => DriverError::InvalidSpec {
            field: "image",
            reason: msg,
        },
        E::Tar { source, .. } | E::Io { source, .. } | E::Signal { source, .. } => {
            backend(false, Some(source))
        }
        // A QEMU that went away or a guest that is slow may answer next time.
        E::Timeout { .. } | E::Disconnected { .. } => backend(true, None),
        E::Socket { source, .. } => backend(true, Some(source)),
        E::CommandFailed { .. } | E::Protocol { .. } | E::Qmp { .. } | E::GuestAgent { .. } => {
            backend(false, None)
        }
    }
}

/// A file operation of the driver itself failed.
pub(crate) fn io_err(
    op: &'static str,
    id: &str,
    what: impl std::fmt::Display,
    e: std::io::Error,
) -> DriverError {
    DriverError::Backend {
        op,
        id: id.to_string(),
        detail: format!("{what}: {e}"),
        retryable: false,
        source: Some(e),
    }
}

/// The operation needs a running (or paused) VM.
pub(crate) fn not_running(op: &'static str, id: &str, o: crate::Observed) -> DriverError {
    DriverError::Backend {
        op,
        id: id.to_string(),
        detail: format!("instance is {o}, not running"),
        retryable: false,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn classes() {
        let e = classify(
            "prepare",
            "a",
            vfarm_qemu::Error::ToolMissing {
                tool: "qemu-img",
                package: "qemu-utils",
            },
        );
        assert_eq!(e.code().as_str(), "host_not_ready");
        assert!(e.to_string().contains("qemu-utils"), "{e}");
        let e = classify(
            "exec",
            "a",
            vfarm_qemu::Error::Timeout {
                what: "x".into(),
                after: Duration::from_secs(1),
            },
        );
        assert!(e.is_retryable());
        let e = classify(
            "prepare",
            "a",
            vfarm_qemu::Error::OverlayTooSmall {
                requested: 1,
                base: 2,
            },
        );
        assert_eq!(e.code().as_str(), "invalid_spec");
        let e = classify(
            "start",
            "a",
            vfarm_qemu::Error::Qmp {
                command: "cont".into(),
                class: "GenericError".into(),
                desc: "no".into(),
            },
        );
        assert_eq!(e.code().as_str(), "backend_failure");
        assert!(!e.is_retryable());
    }
}

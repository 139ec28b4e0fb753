use std::path::PathBuf;

use vfarm_core::SpecError;
use vfarm_store::StoreError;

/// Everything the image farm can refuse or fail at. Variants carry the facts a caller needs
/// to decide (and an API to answer with a stable code); the wrapped error is the source,
/// never repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("image `{0}` not found")]
    NotFound(String),
    #[error("unknown package(s) {}: not found in {suite}\n--- last lines of the build log ({log}) ---\n{tail}", packages.join(", "))]
    UnknownPackages {
        packages: Vec<String>,
        suite: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "suite `{suite}` is not available from this host's package sources (build log: {log})"
    )]
    SuiteUnavailable { suite: String, log: PathBuf },
    #[error("invalid size `{value}`: the root filesystem holds {needed} bytes, a disk of at least {minimum} bytes is needed")]
    SizeTooSmall {
        value: u64,
        needed: u64,
        minimum: u64,
    },
    #[error("arch `{arch}` cannot be built on this {host} host (no emulation is set up)")]
    ForeignArch { arch: String, host: String },
    #[error("{tool} failed (exit {status}){}\n{tail}", log.as_ref().map(|l| format!(" — full log: {}", l.display())).unwrap_or_default())]
    ToolFailed {
        tool: &'static str,
        status: String,
        tail: String,
        log: Option<PathBuf>,
    },
    #[error("`{tool}` is not installed; run scripts/setup.sh")]
    ToolMissing { tool: &'static str },
    #[error("check of {format} artifact failed: {reason}")]
    CheckFailed { format: String, reason: String },
    #[error("cannot import {path}: {reason}")]
    Import { path: PathBuf, reason: String },
    #[error("image `{0}` has no {1} artifact")]
    NoArtifact(String, String),
    /// Instances' disks sit on the image: it stays until they are destroyed.
    #[error("image `{id}` is in use by instance(s) {}: destroy them first", instances.join(", "))]
    InUse { id: String, instances: Vec<String> },
    /// Only the image's owner (or an admin, for any image) may remove it.
    #[error("image `{id}` is not yours to remove (public images: admins only)")]
    NotOwner { id: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    /// Stable machine-readable code, used by the API and `--output json`.
    pub fn code(&self) -> &'static str {
        match self {
            ImageError::Spec(_) => "invalid_spec",
            ImageError::Store(StoreError::NotFound { .. }) | ImageError::NotFound(_) => {
                "image_not_found"
            }
            ImageError::Store(StoreError::Ambiguous { .. }) => "ambiguous_reference",
            ImageError::Store(StoreError::Conflict { .. }) => "conflict",
            ImageError::Store(_) => "store_error",
            ImageError::UnknownPackages { .. } => "unknown_package",
            ImageError::SuiteUnavailable { .. } => "suite_unavailable",
            ImageError::SizeTooSmall { .. } => "invalid_spec",
            ImageError::ForeignArch { .. } => "invalid_spec",
            ImageError::ToolFailed { .. } => "build_failed",
            ImageError::ToolMissing { .. } => "host_not_ready",
            ImageError::CheckFailed { .. } => "check_failed",
            ImageError::Import { .. } => "invalid_import",
            ImageError::NoArtifact(..) => "artifact_not_found",
            ImageError::InUse { .. } => "image_in_use",
            ImageError::NotOwner { .. } => "forbidden",
            ImageError::Io { .. } => "io_error",
        }
    }

    /// True for errors caused by the request (4xx), false for the host's or service's (5xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.code(),
            "invalid_spec"
                | "image_not_found"
                | "ambiguous_reference"
                | "conflict"
                | "unknown_package"
                | "suite_unavailable"
                | "invalid_import"
                | "artifact_not_found"
                | "image_in_use"
                | "forbidden"
        )
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

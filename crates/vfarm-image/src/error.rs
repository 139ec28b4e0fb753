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
    #[error("no mirror for `{distro}` is configured: add a [{distro}] table to {path} (see docs/guide/images.md, \"Mirrors\")")]
    MirrorMissing { distro: String, path: PathBuf },
    #[error("invalid mirror configuration {path}: {reason}")]
    MirrorConfig { path: PathBuf, reason: String },
    /// A repository's signature did not verify against its key (or it is unsigned).
    #[error("repository `{repository}` failed its signature check against key {key}: {reason}\n--- last lines of the build log ({log}) ---\n{tail}")]
    RepositoryUnverified {
        repository: String,
        key: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("check of {format} artifact failed: {reason}")]
    CheckFailed { format: String, reason: String },
    #[error("cannot import {path}: {reason}")]
    Import { path: PathBuf, reason: String },
    #[error("image `{0}` has no {1} artifact")]
    NoArtifact(String, String),
    #[error("image `{id}` has no package manifest (it was imported, or built before vfarm recorded manifests): rebuild it to get one")]
    NoManifest { id: String },
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
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            ImageError::Spec(_) => vfarm_proto::ErrorCode::InvalidSpec,
            ImageError::Store(StoreError::NotFound { .. }) | ImageError::NotFound(_) => {
                vfarm_proto::ErrorCode::ImageNotFound
            }
            ImageError::Store(StoreError::Ambiguous { .. }) => {
                vfarm_proto::ErrorCode::AmbiguousReference
            }
            ImageError::Store(StoreError::Conflict { .. }) => vfarm_proto::ErrorCode::Conflict,
            ImageError::Store(_) => vfarm_proto::ErrorCode::StoreError,
            ImageError::UnknownPackages { .. } => vfarm_proto::ErrorCode::UnknownPackage,
            ImageError::SuiteUnavailable { .. } => vfarm_proto::ErrorCode::SuiteUnavailable,
            ImageError::SizeTooSmall { .. } => vfarm_proto::ErrorCode::InvalidSpec,
            ImageError::ForeignArch { .. } => vfarm_proto::ErrorCode::InvalidSpec,
            ImageError::ToolFailed { .. } => vfarm_proto::ErrorCode::BuildFailed,
            ImageError::ToolMissing { .. } => vfarm_proto::ErrorCode::HostNotReady,
            ImageError::CheckFailed { .. } => vfarm_proto::ErrorCode::CheckFailed,
            ImageError::MirrorMissing { .. } => vfarm_proto::ErrorCode::HostNotReady,
            ImageError::MirrorConfig { .. } => vfarm_proto::ErrorCode::InvalidConfig,
            ImageError::RepositoryUnverified { .. } => vfarm_proto::ErrorCode::BuildFailed,
            ImageError::Import { .. } => vfarm_proto::ErrorCode::InvalidImport,
            ImageError::NoArtifact(..) | ImageError::NoManifest { .. } => {
                vfarm_proto::ErrorCode::ArtifactNotFound
            }
            ImageError::InUse { .. } => vfarm_proto::ErrorCode::ImageInUse,
            ImageError::NotOwner { .. } => vfarm_proto::ErrorCode::Forbidden,
            ImageError::Io { .. } => vfarm_proto::ErrorCode::IoError,
        }
    }

    /// The input field at fault, for errors of the request.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ImageError::Spec(s) => Some(s.field()),
            ImageError::UnknownPackages { .. } => Some("package"),
            ImageError::SizeTooSmall { .. } => Some("size"),
            ImageError::ForeignArch { .. } => Some("arch"),
            ImageError::SuiteUnavailable { .. } => Some("suite"),
            ImageError::MirrorMissing { .. } => Some("distro"),
            ImageError::RepositoryUnverified { .. } => Some("repository.key"),
            ImageError::NotFound(_) => Some("image"),
            ImageError::Import { .. } => Some("file"),
            _ => None,
        }
    }

    /// True for errors caused by the request (4xx), false for the host's or service's (5xx).
    pub fn is_client_error(&self) -> bool {
        self.code().is_client_error()
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

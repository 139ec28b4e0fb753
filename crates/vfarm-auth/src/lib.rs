//! Identity and access for `vfarm serve`.
//!
//! - [`Identity`]: who a request is (a grid DN from a client certificate, a token's user, or
//!   the local user on the unix socket) and whether they are an admin.
//! - [`token`]: bearer tokens `vft_<id>_<secret>`; the store keeps only SHA-256(secret).
//! - [`ca`]: the site CA (rcgen): host certificates for instances, user/node certificates,
//!   CRLs in the IGTF layout.
//! - [`config`]: `<data>/serve.toml` — admins, the hostname pool, quotas.
//! - [`pool`]: hostname leases; [`quota`]: per-owner limits reserved atomically.
//! - [`audit`]: one function that appends who did what.

use std::path::PathBuf;

pub mod audit;
pub mod ca;
pub mod config;
pub mod dn;
pub mod identity;
pub mod pool;
pub mod quota;
pub mod token;

pub use config::ServeConfig;
pub use identity::{AuthMethod, Identity};

/// Everything that can go wrong here; `code()` is stable and part of the API.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed, unknown or wrong token: one message for all, so a caller learns nothing
    /// about which tokens exist.
    #[error("invalid bearer token")]
    InvalidToken,
    #[error("token {id} was revoked at {at}")]
    TokenRevoked { id: String, at: String },
    #[error("token {id} expired at {at}")]
    TokenExpired { id: String, at: String },
    #[error("token `{id}` not found")]
    TokenNotFound { id: String },
    #[error("invalid {field} `{value}`: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("the hostname pool is exhausted: all {size} names are held")]
    PoolExhausted { size: usize },
    #[error("hostname `{name}` is held by another instance")]
    HostnameTaken { name: String },
    #[error(
        "hostname `{name}` was given back recently and stays out of the pool until {until} \
         (hostname_quarantine in serve.toml: DNS caches may still name the old instance)"
    )]
    HostnameQuarantined { name: String, until: String },
    #[error("hostname `{name}` is not in the pool")]
    HostnameNotInPool { name: String },
    #[error("quota exceeded for {owner}: {resource} would be {would} (limit {limit})")]
    QuotaExceeded {
        owner: String,
        resource: &'static str,
        would: String,
        limit: String,
    },
    #[error("the site CA already exists in {}", dir.display())]
    CaExists { dir: PathBuf },
    #[error("no site CA in {} (run `vfarm ca init`)", dir.display())]
    CaMissing { dir: PathBuf },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("X.509: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    #[error("cannot {what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Trust(#[from] vfarm_imagelist::trust::TrustError),
    #[error(transparent)]
    Store(#[from] vfarm_store::StoreError),
}

impl AuthError {
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            AuthError::InvalidToken => vfarm_proto::ErrorCode::InvalidToken,
            AuthError::TokenRevoked { .. } => vfarm_proto::ErrorCode::TokenRevoked,
            AuthError::TokenExpired { .. } => vfarm_proto::ErrorCode::TokenExpired,
            AuthError::TokenNotFound { .. } => vfarm_proto::ErrorCode::TokenNotFound,
            AuthError::Invalid { .. } => vfarm_proto::ErrorCode::InvalidArgument,
            AuthError::PoolExhausted { .. } => vfarm_proto::ErrorCode::PoolExhausted,
            AuthError::HostnameTaken { .. } | AuthError::HostnameQuarantined { .. } => {
                vfarm_proto::ErrorCode::HostnameTaken
            }
            AuthError::HostnameNotInPool { .. } => vfarm_proto::ErrorCode::HostnameNotInPool,
            AuthError::QuotaExceeded { .. } => vfarm_proto::ErrorCode::QuotaExceeded,
            AuthError::CaExists { .. } => vfarm_proto::ErrorCode::CaExists,
            AuthError::CaMissing { .. } => vfarm_proto::ErrorCode::CaNotInitialised,
            AuthError::Rcgen(_) | AuthError::Openssl(_) => vfarm_proto::ErrorCode::CertificateError,
            AuthError::Io { .. } => vfarm_proto::ErrorCode::IoError,
            AuthError::Config { .. } => vfarm_proto::ErrorCode::InvalidConfig,
            AuthError::Trust(_) => vfarm_proto::ErrorCode::InvalidCaDir,
            AuthError::Store(vfarm_store::StoreError::NotFound { .. }) => {
                vfarm_proto::ErrorCode::NotFound
            }
            AuthError::Store(vfarm_store::StoreError::Conflict { .. }) => {
                vfarm_proto::ErrorCode::Conflict
            }
            AuthError::Store(_) => vfarm_proto::ErrorCode::StoreError,
        }
    }

    /// The field of the request at fault, when one is.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            AuthError::Invalid { field, .. } => Some(field),
            AuthError::HostnameTaken { .. }
            | AuthError::HostnameQuarantined { .. }
            | AuthError::HostnameNotInPool { .. } => Some("hostname"),
            AuthError::QuotaExceeded { resource, .. } => Some(resource),
            AuthError::InvalidToken
            | AuthError::TokenRevoked { .. }
            | AuthError::TokenExpired { .. } => Some("authorization"),
            _ => None,
        }
    }

    /// Whether the caller (not the server) is at fault.
    pub fn is_client_error(&self) -> bool {
        self.code().is_client_error()
    }

    pub(crate) fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> Self {
        AuthError::Invalid {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        AuthError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

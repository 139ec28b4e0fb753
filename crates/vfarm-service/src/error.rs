//! The one error the service's request-shaped operations return: a stable code, a message
//! fit for the caller, and the field at fault. The HTTP API turns it into a response, the
//! CLI into an exit status; both derive what they need from the code alone.

use std::borrow::Cow;

use vfarm_image::ImageError;
use vfarm_proto::ErrorCode;
use vfarm_store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<Cow<'static, str>>,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServiceError {}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
            field: None,
        }
    }
    pub fn bad_request(field: &'static str, message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::InvalidRequest, message).with_field(field)
    }
    pub fn internal(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Internal, message)
    }
    /// A missing `kind` `id`; instances, snapshots and jobs have codes of their own.
    pub fn not_found(kind: &str, id: &str) -> ServiceError {
        let code = match kind {
            "instance" => ErrorCode::InstanceNotFound,
            "snapshot" => ErrorCode::SnapshotNotFound,
            "job" => ErrorCode::JobNotFound,
            _ => ErrorCode::NotFound,
        };
        ServiceError::new(code, format!("{kind} `{id}` not found"))
    }
    pub fn with_field(mut self, field: impl Into<Cow<'static, str>>) -> ServiceError {
        self.field = Some(field.into());
        self
    }

    /// An operation's error as the caller sees it: classified by [`crate::classify`]; an
    /// unclassified or server-side one is logged in full and reported without paths.
    pub fn from_anyhow(e: anyhow::Error) -> ServiceError {
        let e = match e.downcast::<ServiceError>() {
            Ok(s) => return s,
            Err(e) => e,
        };
        let e = match e.downcast::<vfarm_auth::AuthError>() {
            Ok(a) => return a.into(),
            Err(e) => e,
        };
        let e = match e.downcast::<ImageError>() {
            Ok(i) => return i.into(),
            Err(e) => e,
        };
        let e = match e.downcast::<StoreError>() {
            Ok(s @ StoreError::NotFound { .. }) => return s.into(),
            Ok(s) => anyhow::Error::from(s),
            Err(e) => e,
        };
        let (code, field) = match crate::classify(&e) {
            Some((ErrorCode::Error, f)) => (ErrorCode::Internal, f),
            Some(c) => c,
            None => (ErrorCode::Internal, None),
        };
        let message = if !code.is_client_error() {
            tracing::error!("request failed: {e:#}");
            format!("{e}; see the service log")
        } else {
            format!("{e:#}")
        };
        ServiceError {
            code,
            message,
            field: field.map(Into::into),
        }
    }
}

/// A server-side failure's detail goes to the log; the caller gets `public`.
fn logged(code: ErrorCode, e: &dyn std::fmt::Display, public: impl FnOnce() -> String) -> String {
    if code.is_client_error() {
        e.to_string()
    } else {
        tracing::error!(error = %e, "request failed");
        public()
    }
}

impl From<vfarm_auth::AuthError> for ServiceError {
    fn from(e: vfarm_auth::AuthError) -> ServiceError {
        let code = e.code();
        ServiceError {
            code,
            message: logged(code, &e, || "internal error; see the service log".into()),
            field: e.field().map(|f| Cow::Owned(f.to_string())),
        }
    }
}

impl From<ImageError> for ServiceError {
    fn from(e: ImageError) -> ServiceError {
        let code = e.code();
        // The client gets the message without the server's paths.
        let message = logged(code, &e, || match &e {
            ImageError::ToolFailed { tool, .. } => format!("{tool} failed; see the build log"),
            ImageError::ToolMissing { tool } => format!("{tool} is not installed on the server"),
            _ => "internal error; see the service log".to_string(),
        });
        ServiceError {
            code,
            message,
            field: e.field().map(|f| Cow::Owned(f.to_string())),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> ServiceError {
        match e {
            StoreError::NotFound { kind, id } => ServiceError::not_found(kind, &id),
            StoreError::Conflict { kind, id } => {
                ServiceError::new(ErrorCode::Conflict, format!("{kind} `{id}` already exists"))
            }
            e @ StoreError::Ambiguous { .. } => ServiceError::new(e.code(), e.to_string()),
            e => {
                tracing::error!(error = %e, "state store");
                ServiceError::internal("state store error; see the service log")
            }
        }
    }
}

impl From<vfarm_core::SpecError> for ServiceError {
    fn from(e: vfarm_core::SpecError) -> ServiceError {
        ImageError::Spec(e).into()
    }
}

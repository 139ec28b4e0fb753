//! vfarm's wire vocabulary: what the service, the HTTP API and every client share.
//!
//! Only serde and utoipa: the libraries below the service classify their errors with
//! [`ErrorCode`] without depending on HTTP or the CLI.

mod error;
pub mod grids;
pub mod hosts;
pub mod instances;
pub mod networks;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};

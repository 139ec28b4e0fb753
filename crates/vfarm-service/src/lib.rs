//! vfarm's operations, for every front end: the CLI calls them in local mode with the local
//! caller, `vfarm serve` with each request's identity. No clap, no HTTP, no printing
//! (warnings go to `tracing`).
//!
//! Today: the environment, the caller, the instance operations (records, drivers,
//! transitions, views, the reaper) with file staging, what the API asks of them on one host
//! (`local`) and on a control with nodes (`cluster`, `node_migration`), the control's host
//! inventory, joins and heartbeats (`hosts`) and the node agent (`node`), live migration to
//! another data dir (`migrate`), disposable runs (`run`), images (`images`), jobs (`jobs`:
//! submission and views; `dispatch`: the dispatcher, the runner, reconciliation), bearer
//! tokens, and image lists with their subscriptions and cache.

pub mod backend;
pub mod ca;
pub mod caller;
pub mod checkpoints;
pub mod cluster;
pub mod dispatch;
pub mod env;
pub mod error;
pub mod grids;
pub mod hosts;
pub mod imagelists;
pub mod images;
pub mod instances;
pub mod jobs;
pub mod local;
pub mod migrate;
pub mod net;
pub mod node;
pub mod node_migration;
pub mod run;
pub mod staging;
pub mod stats;
pub mod subscriptions;
pub mod tokens;

pub use caller::{Caller, Forbidden};
pub use env::Env;
pub use error::ServiceError;

use vfarm_proto::ErrorCode;

/// The code and the field at fault of an operation's error, for the errors the operations
/// and the libraries below them raise; `None` for anything else (a front end's own errors,
/// or a failure with no code of its own). The CLI and the HTTP handlers both start here.
pub fn classify(err: &anyhow::Error) -> Option<(ErrorCode, Option<String>)> {
    let owned = |(c, f): (ErrorCode, Option<&str>)| (c, f.map(str::to_string));
    if let Some(e) = err.downcast_ref::<ServiceError>() {
        return Some((e.code, e.field.as_deref().map(str::to_string)));
    }
    if let Some(e) = err.downcast_ref::<Forbidden>() {
        return Some(owned((ErrorCode::Forbidden, e.field)));
    }
    if let Some(c) = jobs::classify(err) {
        return Some(owned(c));
    }
    if let Some(c) = imagelists::classify(err) {
        return Some(owned(c));
    }
    if let Some(c) = instances::classify(err) {
        return Some(owned(c));
    }
    if let Some(e) = err.downcast_ref::<vfarm_image::ImageError>() {
        return Some(owned((e.code(), e.field())));
    }
    if let Some(e) = err.downcast_ref::<vfarm_core::SpecError>() {
        return Some((ErrorCode::InvalidSpec, Some(e.field().to_string())));
    }
    if let Some(e) = err.downcast_ref::<vfarm_auth::AuthError>() {
        return Some(owned((e.code(), e.field())));
    }
    None
}

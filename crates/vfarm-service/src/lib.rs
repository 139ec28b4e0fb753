//! vfarm's operations, for every front end: the CLI calls them in local mode with the local
//! caller, `vfarm serve` with each request's identity. No clap, no HTTP, no printing
//! (warnings go to `tracing`).
//!
//! Today: the environment, the caller, and the instance operations (records, drivers,
//! transitions, views, the reaper) with file staging. Jobs, image lists and the cluster
//! still live in the binary (ARCHITECTURE.md, "Where the service layer stands").

pub mod caller;
pub mod env;
pub mod instances;
pub mod jobs;
pub mod staging;

pub use caller::Caller;
pub use env::Env;

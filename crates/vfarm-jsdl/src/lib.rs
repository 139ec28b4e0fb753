//! JSDL 1.0 (GGF GFD.56) job definitions for vfarm batch jobs.
//!
//! * [`parse`] reads a `jsdl:JobDefinition` order-insensitively, accepting both HPC Profile
//!   Application namespaces and the errata `jsdl:MountSource`; deviations from the schema are
//!   reported as [`SchemaWarning`]s next to the result, while documents that leave the job
//!   ambiguous or incomplete are refused with a [`JsdlError`] naming element and line.
//! * [`parse_range_value`] reads a standalone range element (e.g. `jsdl:TotalCPUCount`).
//! * [`write`] emits a [`JobDefinition`] in schema order.
//! * [`JobDefinition::to_job_request`] flattens a job into the queue's [`JobRequest`], and
//!   [`JobRequest::matches_image`] routes it to an image by OS, version and architecture.
//!
//! Besides the JSDL specifications, two extensions are understood: the XenBEE VM-image
//! extension (`xsdl:InstanceDefinition` inside Resources) and vfarm's own namespace
//! `urn:vfarm:jsdl:1` with `<vfarm:Image>` and `<vfarm:Driver>` (inside Resources or
//! JobDescription) to name an image directly.

mod error;
mod model;
mod parse;
mod request;
mod write;
mod xml;

/// Deepest element nesting accepted. Real JSDL documents stay below 10 levels (extension
/// elements included); the bound keeps the recursive passes over the tree off the stack limit.
pub const MAX_DEPTH: usize = 100;

pub use error::{JsdlError, SchemaWarning, WarningKind};
pub use model::*;
pub use parse::{parse, parse_range_value, NamedRange, Parsed, RANGE_ELEMENTS};
pub use request::{
    arch_matches, os_matches, version_matches, JobRequest, MappingError, StageFile, UriScheme,
};
pub use write::write;

//! The image farm: build OS images from specs, keep them in a content-addressed repository,
//! convert them between formats, import existing ones.
//!
//! The builder is mmdebstrap (Debian suites); other distributions would add their own
//! bootstrap command beside `tools::mmdebstrap_command` and dispatch on `ImageSpec::distro`.

pub mod error;
pub mod formats;
pub mod repo;
pub mod tools;

pub use error::{ImageError, Result};
pub use repo::{AdoptMeta, Artifact, BuildOutcome, Image, ImportOptions, Repository};
pub use tools::Progress;

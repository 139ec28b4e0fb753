//! The image farm: build OS images from specs, keep them in a content-addressed repository,
//! convert them between formats, import existing ones.
//!
//! Builders: mmdebstrap for the apt family (Debian, Ubuntu), Debian's own `dnf
//! --installroot` for the EL family; `repo.rs` dispatches on `Distro::family`, mirrors come
//! from `<data>/mirrors.toml` (`mirrors.rs`).

pub mod error;
pub mod formats;
pub mod manifest;
pub mod mirrors;
pub mod repo;
pub mod tools;

pub use error::{ImageError, Result};
pub use repo::{AdoptMeta, Artifact, BuildOutcome, Image, ImportOptions, Repository};
pub use tools::Progress;

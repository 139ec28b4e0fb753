//! vfarm's domain core: the vocabulary every other crate speaks.
//!
//! Invariant: this crate does no I/O (no files, processes, sockets or clocks). Functions
//! take what they need as arguments, so they are tested without a machine.

pub mod doctor;
pub mod groups;
pub mod instance;
pub mod placement;
pub mod size;
pub mod spec;

pub use size::{parse_size, ByteSize};
pub use spec::{
    Arch, BaseKey, Boot, BuildRequest, Distro, Family, Format, ImageSpec, RepoRequest, Repository,
    SpecError, SpecRequest, Variant,
};

/// Shortest accepted id prefix when looking an image up by prefix.
pub const MIN_ID_PREFIX: usize = 4;

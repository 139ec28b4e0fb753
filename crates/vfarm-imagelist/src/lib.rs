//! HEPiX signed image lists (vmcaster / vmcatcher compatible).
//!
//! * [`model`]: the `{"hv:imagelist": …}` document, parsed leniently, unknown keys kept.
//! * [`smime`]: detached S/MIME signatures as `openssl smime` writes and reads them.
//! * [`trust`]: IGTF CA directories (`<hash>.0` certificates, `<hash>.r0` CRLs).
//! * [`namespaces`]: IGTF `.namespaces` / `.signing_policy` files: who each CA may sign.
//! * [`verify`]: the whole acceptance check, with a [`verify::Refusal`] for every way to fail.
//! * [`subscription`]: the update decision (no-op, rollback, changed identifier, image sets).
//! * [`cache`]: streaming, verifying, atomic image downloads.
//! * [`hooks`]: `VMCATCHER_EVENT_*` event handlers.
//! * [`create`]: new lists from a short description.
//!
//! No module here touches the state database; the binary records what this crate decides.

pub mod cache;
pub mod create;
pub mod hooks;
pub mod model;
pub mod namespaces;
pub mod smime;
pub mod subscription;
pub mod trust;
pub mod verify;
pub mod version;

pub use model::{Endorser, Image, ImageList, ModelError};
pub use trust::{CertInfo, TrustStore};
pub use verify::{verify, EndorserId, Policy, Refusal, VerifiedList};

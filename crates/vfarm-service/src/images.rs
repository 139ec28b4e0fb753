//! The image operations that change the repository, for every front end: build (or find),
//! import, add a format, and remove, with the caller as the actor of the event log and, for a remote
//! non-admin, as the owner of what it builds. They take the repository the front end holds
//! (`vfarm serve` keeps one open; the CLI opens one per command).

use vfarm_core::spec::BuildRequest;
use vfarm_core::Format;
use vfarm_image::manifest::{ManifestDiff, Package};
use vfarm_image::{Artifact, BuildOutcome, Image, ImageError, ImportOptions, Progress, Repository};

use crate::Caller;

/// Build (or find) the image of `req`. A new image is its builder's when the caller owns
/// what it builds ([`Caller::owner_of_builds`]); one that existed keeps its owner.
pub fn build(
    repo: &Repository,
    caller: &Caller,
    req: &BuildRequest,
    on: &mut dyn FnMut(Progress),
) -> Result<BuildOutcome, ImageError> {
    let outcome = repo.build(req, &caller.user, on)?;
    claim(repo, caller, &outcome)?;
    Ok(outcome)
}

/// Import an image file (a tarball or a disk image) as the caller.
pub fn import(
    repo: &Repository,
    caller: &Caller,
    file: &std::path::Path,
    opts: &ImportOptions,
) -> Result<BuildOutcome, ImageError> {
    let outcome = repo.import(file, opts, &caller.user)?;
    claim(repo, caller, &outcome)?;
    Ok(outcome)
}

fn claim(repo: &Repository, caller: &Caller, o: &BuildOutcome) -> Result<(), ImageError> {
    if let Some(user) = caller.owner_of_builds() {
        if !o.cached {
            repo.store().claim_image(&o.image.id, user)?;
        }
    }
    Ok(())
}

/// Remove an image: the caller's own, or any for admins and local callers (public images
/// are theirs only).
pub fn remove(repo: &Repository, caller: &Caller, reference: &str) -> Result<Image, ImageError> {
    if caller.owner_of_builds().is_some() {
        let img = repo.resolve(reference)?;
        let owner = repo.store().image_owner(&img.id)?;
        if !owner.flatten().is_some_and(|o| caller.may_access(&o)) {
            return Err(ImageError::NotOwner { id: img.id });
        }
    }
    repo.remove(reference, &caller.user)
}

/// The image's file in `format`, converted now if the image lacks it (a download or an
/// export of a format not built yet).
pub fn ensure_format(
    repo: &Repository,
    img: &Image,
    format: Format,
    on: &mut dyn FnMut(Progress),
) -> Result<Artifact, ImageError> {
    repo.ensure_format(img, format, on)
}

/// An image's package manifest, as `image manifest` and the API show it.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub image: String,
    pub name: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub packages: Vec<Package>,
}

/// Two images' manifests compared: what `b` added, removed and changed from `a`.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Diff {
    pub from: String,
    pub to: String,
    #[schema(value_type = Object)]
    #[serde(flatten)]
    pub diff: ManifestDiff,
}

/// The packages a build of `reference` recorded.
pub fn manifest(repo: &Repository, reference: &str) -> Result<Manifest, ImageError> {
    let img = repo.resolve(reference)?;
    let packages = repo
        .manifest(&img)?
        .ok_or_else(|| ImageError::NoManifest { id: img.id.clone() })?;
    Ok(Manifest {
        image: img.id,
        name: img.name,
        packages,
    })
}

/// What changed in the packages from image `a` to image `b`.
pub fn diff(repo: &Repository, a: &str, b: &str) -> Result<Diff, ImageError> {
    let (ma, mb) = (manifest(repo, a)?, manifest(repo, b)?);
    Ok(Diff {
        diff: vfarm_image::manifest::diff(&ma.packages, &mb.packages),
        from: ma.image,
        to: mb.image,
    })
}

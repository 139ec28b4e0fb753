//! Signed HEPiX image lists of this site: make one (from a description or repository
//! images), sign it, publish it under `/imagelists/`, and the cache of images from the lists
//! it subscribes to (`subscriptions`). The decisions (verification, update rules, streaming
//! downloads) live in `vfarm-imagelist`; this module records them and returns views.
//!
//! Everything here acts on the service's files and keys: over the API it is for admins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vfarm_imagelist::cache::{Cache, Expected};
use vfarm_imagelist::create::{EndorserDesc, ListDesc};
use vfarm_imagelist::model::{format_date, ImageList};
use vfarm_imagelist::smime::{Credentials, SignedMessage};
use vfarm_imagelist::trust::CertInfo;
use vfarm_proto::ErrorCode;
use vfarm_store::imagelists::{CacheRow, ImageDefRow};
use vfarm_store::Store;

use crate::{Caller, Env};

/// Reserved to admins over the API.
pub const ADMIN_ONLY: &str = "image lists, subscriptions and the image cache";

/// Bad input to an image-list operation: the field at fault and why.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> anyhow::Error {
    Invalid {
        field,
        message: message.into(),
    }
    .into()
}

/// Codes of this module's and `subscriptions`' errors.
pub fn classify(err: &anyhow::Error) -> Option<(ErrorCode, Option<&'static str>)> {
    if let Some(e) = err.downcast_ref::<Invalid>() {
        return Some((ErrorCode::InvalidRequest, Some(e.field)));
    }
    if err
        .downcast_ref::<vfarm_imagelist::trust::TrustError>()
        .is_some()
    {
        return Some((ErrorCode::InvalidCaDir, Some("ca_dir")));
    }
    // A list description that cannot be read or used is the caller's input at fault (exit
    // 2, as for any other input file), not a failure of this host.
    if let Some(e) = err.downcast_ref::<vfarm_imagelist::create::CreateError>() {
        use vfarm_imagelist::create::CreateError as C;
        let field = match e {
            C::Read { .. } | C::Json { .. } | C::Toml { .. } => "file",
            C::NoChecksum { .. } | C::BadChecksum { .. } | C::NoUri { .. } => "images",
            C::BadLifetime => "lifetime_days",
            C::NoEndorser => "endorser",
        };
        return Some((ErrorCode::InvalidRequest, Some(field)));
    }
    None
}

/// The image cache in the data dir.
pub fn cache(env: &Env) -> Result<Cache> {
    Ok(Cache::open(&env.data_dir.join("imagelist-cache"))?)
}

// ---------------------------------------------------------------------------------------
// Making, signing and publishing a list

/// A list made from repository images (`imagelist create --image`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FromRepository {
    /// Repository images to list (id, id prefix or name).
    pub images: Vec<String>,
    /// Where the signed list will be published (its `hv:uri`); the list's and its images'
    /// identifiers are derived from it.
    pub uri: String,
    /// List title (default `vfarm image list`).
    pub title: Option<String>,
    /// List version (default 1).
    pub list_version: Option<String>,
    /// Base URL of image downloads: an image's `hv:uri` becomes <base>/<image id>/<file>
    /// (default: file:// URLs of the repository files).
    pub image_base_url: Option<String>,
}

/// What a new list is made of.
pub enum ListSource {
    /// A description (`imagelist create --file`).
    Description(Box<ListDesc>),
    Repository(FromRepository),
}

/// The endorser named by a PEM certificate: `hv:dn`/`hv:ca` are its subject and issuer.
pub fn endorser_from_pem(pem: &[u8]) -> Result<EndorserDesc> {
    let cert = vfarm_imagelist::trust::certificate_from_pem(pem)
        .map_err(|e| invalid("cert", format!("no PEM certificate: {e}")))?;
    let info = CertInfo::of(&cert);
    Ok(EndorserDesc {
        dn: info.subject,
        ca: info.issuer,
        email: String::new(),
        creator: String::new(),
    })
}

/// Write a new (unsigned) list: sizes, sha512, identifiers and dates are filled in.
pub fn create_list(
    env: &Env,
    caller: &Caller,
    source: ListSource,
    endorser: Option<EndorserDesc>,
) -> Result<ImageList> {
    caller.require_admin(ADMIN_ONLY)?;
    let desc = match source {
        ListSource::Description(d) => *d,
        ListSource::Repository(r) => desc_from_repository(env, r)?,
    };
    Ok(vfarm_imagelist::create::build(&desc, endorser, Utc::now())?)
}

fn desc_from_repository(env: &Env, r: FromRepository) -> Result<ListDesc> {
    if r.images.is_empty() {
        return Err(invalid("images", "name at least one repository image"));
    }
    if r.uri.trim().is_empty() {
        return Err(invalid(
            "uri",
            "--uri (where the list will be published) is required with --image",
        ));
    }
    let repo = env.images()?;
    let mut images = Vec::new();
    for reference in &r.images {
        let img = repo.resolve(reference)?;
        // Disk formats first: they are what a VM boots; a rootfs tar serves containers.
        let art = img
            .artifacts
            .iter()
            .min_by_key(|a| match a.format.as_str() {
                "qcow2" => 0,
                "raw" => 1,
                "tar" => 3,
                _ => 2,
            })
            .with_context(|| format!("image {} has no files", img.display_name()))?;
        let file_name = art
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("image");
        // Stable identifiers (see `derived_identifier`): the same name in the list at the same
        // URL is the same image, so a rebuilt `web` replaces the old one at subscribers.
        let identity = img.name.clone().unwrap_or_else(|| img.id.clone());
        images.push(vfarm_imagelist::create::ImageDesc {
            file: None,
            uri: Some(match &r.image_base_url {
                Some(b) => format!("{}/{}/{file_name}", b.trim_end_matches('/'), img.id),
                None => format!("file://{}", art.path.display()),
            }),
            sha512: Some(art.sha512.clone()),
            size: Some(art.size),
            identifier: Some(derived_identifier(&[&r.uri, "image", &identity])),
            title: img.display_name(),
            description: img.summary.clone(),
            arch: img.arch.clone().unwrap_or_else(|| "x86_64".into()),
            os: img.os.clone().unwrap_or_else(|| "Linux".into()),
            osversion: img.os_version.clone().unwrap_or_default(),
            comments: format!("vfarm image {}", img.id),
            hypervisor: "kvm".into(),
            version: "1".into(),
            format: Some(art.format.as_str().to_string()),
            extra: BTreeMap::new(),
        });
    }
    Ok(ListDesc {
        identifier: Some(derived_identifier(&[&r.uri, "list"])),
        title: r.title.unwrap_or_else(|| "vfarm image list".into()),
        description: String::new(),
        source: String::new(),
        uri: r.uri,
        version: r.list_version.unwrap_or_else(|| "1".into()),
        lifetime_days: 28,
        endorser: None,
        images,
        extra: BTreeMap::new(),
    })
}

/// A UUID-shaped identifier derived from `parts` (name-based, like a UUID v5).
///
/// `imagelist create --image` used random identifiers, so version 2 of a list made the same
/// way had a new `dc:identifier` (subscribers refuse it: identifier changed) and every image
/// looked new (nothing was ever "replaced"). Deriving them from the list's URL keeps the
/// list's identity across versions, as vmcatcher requires.
fn derived_identifier(parts: &[&str]) -> String {
    let h = vfarm_imagelist::verify::sha512_hex(parts.join("\n").as_bytes());
    let variant = u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 0x3 | 0x8;
    format!(
        "{}-{}-5{}-{variant:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A signed list.
pub struct Signed {
    /// The S/MIME message (detached signature of the exact input bytes).
    pub message: Vec<u8>,
    pub signer: CertInfo,
    pub identifier: String,
    /// What subscribers will trip over (the list outlives the certificate, or has expired).
    pub warnings: Vec<String>,
}

/// Sign `body` (an unsigned list, JSON) with the certificate and key files `cert`, `key`
/// (paths on this machine). The list's endorser must be the certificate's subject and
/// issuer.
/// Sign `body`. A certificate S/MIME consumers refuse as a signer (no e-mail protection, say)
/// is refused too unless `force`, which signs with a warning: such a list verifies nowhere.
pub fn sign_list(
    caller: &Caller,
    cert: &Path,
    key: &Path,
    body: &[u8],
    force: bool,
) -> Result<Signed> {
    caller.require_admin(ADMIN_ONLY)?;
    // Bad files are the request's fault (400 over the API), never the service's.
    let creds = Credentials::load(cert, key)
        .map_err(|e| invalid("cert", format!("cannot use the certificate and key: {e}")))?;
    let list = ImageList::from_json(body)
        .map_err(|e| invalid("list", format!("not an image list: {e}")))?;
    let me = CertInfo::of(&creds.cert);
    if !list
        .endorsers
        .iter()
        .any(|e| e.dn == me.subject && e.ca == me.issuer)
    {
        return Err(invalid(
            "cert",
            format!(
                "the list's endorser ({} / {}) is not the certificate's subject and issuer ({} / {}); subscribers would refuse it",
                list.endorsers[0].dn,
                list.endorsers[0].ca,
                me.subject,
                me.issuer
            ),
        ));
    }
    let mut warnings = Vec::new();
    if let Err(why) = vfarm_imagelist::smime::smime_signing_fitness(&creds.cert) {
        let what = format!(
            "{} is not fit for S/MIME signing ({why}): `openssl smime -verify`, vmcatcher and \
             atrope refuse lists it signs; use a certificate with e-mail protection in its \
             extended key usage (`vfarm ca issue-user` issues one)",
            me.subject
        );
        if !force {
            return Err(invalid("cert", format!("{what}; --force signs anyway")));
        }
        warnings.push(format!("SIGNED ANYWAY (--force): {what}"));
    }
    if me.not_after.is_some_and(|t| t < list.expires) {
        warnings.push(format!(
            "the list expires after the certificate ({}); re-sign before the certificate expires",
            me.not_after.map(|t| format_date(&t)).unwrap_or_default()
        ));
    }
    if list.expires < Utc::now() {
        warnings.push(format!(
            "the list already expired at {}",
            format_date(&list.expires)
        ));
    }
    // The exact input bytes are signed; nothing is re-serialised.
    let message = creds.sign(body)?;
    Ok(Signed {
        message,
        signer: me,
        identifier: list.identifier,
        warnings,
    })
}

/// A published list.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PublishedList)]
pub struct Published {
    /// The file it is served from.
    #[schema(value_type = String)]
    pub published: PathBuf,
    /// Its path on the service: `/imagelists/<name>.list`.
    pub path: String,
    pub identifier: String,
    pub version: String,
    /// The list's `hv:uri` differs from where it is served, say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Check a publish name: letters, digits, `-` and `_`.
pub fn check_publish_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(invalid(
            "name",
            format!("publish name `{name}` may only hold letters, digits, `-` and `_`"),
        ));
    }
    Ok(())
}

/// Publish a signed list (`raw`, as signed): `vfarm serve` serves it at
/// `/imagelists/<name>.list`. It must verify (its signature; trust is the subscribers').
pub fn publish(env: &Env, caller: &Caller, raw: &[u8], name: &str) -> Result<Published> {
    caller.require_admin(ADMIN_ONLY)?;
    check_publish_name(name)?;
    let msg = SignedMessage::parse(raw)
        .map_err(|e| invalid("list", format!("not a signed list: {e}")))?;
    msg.check_signature()
        .map_err(|e| invalid("list", format!("does not verify; sign it again: {e}")))?;
    let list = ImageList::from_json(&msg.content).map_err(|e| {
        invalid(
            "list",
            format!("the signed content is not an image list: {e}"),
        )
    })?;
    let dir = env.data_dir.join("published");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dest = dir.join(format!("{name}.list"));
    let tmp = dir.join(format!(".{name}.list.tmp"));
    std::fs::write(&tmp, raw).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    let path = format!("/imagelists/{name}.list");
    let mut warnings = Vec::new();
    if !list.uri.ends_with(&path) {
        warnings.push(format!(
            "the list's hv:uri is {}, but it is served at {path}; subscribers warn about the difference",
            list.uri
        ));
    }
    Ok(Published {
        published: dest,
        path,
        identifier: list.identifier,
        version: list.version,
        warnings,
    })
}

// ---------------------------------------------------------------------------------------
// The cache

/// A cached image: its index entry, the list's title and state, and whether the file is
/// there.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CachedImage)]
pub struct CacheView {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub entry: CacheRow,
    pub title: Option<String>,
    pub state: Option<String>,
    pub present: bool,
}

/// One cached image with its list definition.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CachedImageDetail)]
pub struct CacheDetail {
    pub cache: CacheView,
    #[schema(value_type = Option<Object>)]
    pub definition: Option<ImageDefRow>,
}

fn cache_view(store: &Store, cache: &Cache, entry: CacheRow) -> CacheView {
    let def = store.find_list_image(&entry.identifier).ok();
    CacheView {
        present: cache.contains(&entry.identifier),
        title: def.as_ref().map(|d| d.title.clone()),
        state: def.map(|d| d.state),
        entry,
    }
}

fn cache_ref(store: &Store, reference: &str) -> Result<CacheRow> {
    if let Some(c) = store.cache_entry(reference)? {
        return Ok(c);
    }
    let def = store.find_list_image(reference)?;
    store
        .cache_entry(&def.identifier)?
        .with_context(|| format!("image {} ({}) is not cached", def.identifier, def.title))
}

pub fn cache_list(env: &Env, caller: &Caller) -> Result<Vec<CacheView>> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    let cache = cache(env)?;
    Ok(store
        .cache_entries()?
        .into_iter()
        .map(|e| cache_view(&store, &cache, e))
        .collect())
}

pub fn cache_show(env: &Env, caller: &Caller, image: &str) -> Result<CacheDetail> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    let entry = cache_ref(&store, image)?;
    let definition = store.find_list_image(&entry.identifier).ok();
    Ok(CacheDetail {
        cache: cache_view(&store, &cache(env)?, entry),
        definition,
    })
}

/// A cached image moved to the expired area.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CacheExpired)]
pub struct Expired {
    pub expired: String,
    #[schema(value_type = Option<String>)]
    pub moved_to: Option<PathBuf>,
}

pub fn cache_expire(env: &Env, caller: &Caller, image: &str) -> Result<Expired> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    let entry = cache_ref(&store, image)?;
    let moved_to = cache(env)?.expire(&entry.identifier, Utc::now())?;
    store.remove_cache_entry(&entry.identifier)?;
    // As in `Site::expire`: an expired image no longer answers to its identifier.
    release_repository_name(&store, &entry.identifier)?;
    if let Some(sub) = &entry.subscription_id {
        store.set_list_image_state(sub, &entry.identifier, "expired")?;
    }
    Ok(Expired {
        expired: entry.identifier,
        moved_to,
    })
}

/// The check of one cached image.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CacheChecked)]
pub struct Checked {
    /// `ok`, or why the copy was removed.
    pub code: String,
    pub identifier: String,
    pub ok: bool,
    pub reason: String,
}

/// Re-hash cached images (one, or all); corrupted copies are deleted (the next update
/// downloads them again).
pub fn cache_verify(env: &Env, caller: &Caller, image: Option<&str>) -> Result<Vec<Checked>> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    let cache = cache(env)?;
    let entries = match image {
        Some(r) => vec![cache_ref(&store, r)?],
        None => store.cache_entries()?,
    };
    let mut results = Vec::new();
    for e in entries {
        let expected = Expected {
            uri: e.file.clone(),
            size: e.size,
            sha512: e.sha512.clone(),
        };
        let (ok, code, reason) = match cache.verify(&e.identifier, &expected) {
            Ok(_) => (true, "ok".to_string(), String::new()),
            Err(err) => (false, err.code().as_str().to_string(), error_chain(&err)),
        };
        if !ok {
            // A corrupted copy is worse than none: the next update downloads it again.
            cache.remove(&e.identifier)?;
            store.remove_cache_entry(&e.identifier)?;
        }
        results.push(Checked {
            code,
            identifier: e.identifier,
            ok,
            reason,
        });
    }
    Ok(results)
}

// ---------------------------------------------------------------------------------------
// Shared with `subscriptions`

/// Repository names must be simple; the list identifier is (UUIDs are).
pub(crate) fn repository_name_of(identifier: &str) -> String {
    identifier
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Take the list image's name off its repository image (see `Site::expire`).
pub(crate) fn release_repository_name(store: &Store, identifier: &str) -> Result<()> {
    store.release_imagelist_image_name(&repository_name_of(identifier))?;
    Ok(())
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `at` (YYYY-MM-DDTHH:MM:SSZ), or now.
pub fn parse_at(at: Option<&str>) -> Result<DateTime<Utc>> {
    match at {
        None => Ok(Utc::now()),
        Some(s) => vfarm_imagelist::model::parse_date(s).ok_or_else(|| {
            invalid(
                "at",
                format!("--at `{s}` is not of the form YYYY-MM-DDTHH:MM:SSZ"),
            )
        }),
    }
}

//! `vfarm imagelist …`, `vfarm subscription …`, `vfarm cache …`: signed HEPiX image lists.
//!
//! The decisions (verification, update rules, streaming downloads) live in `vfarm-imagelist`;
//! this module fetches, records them in the state store and reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vfarm_proto::ErrorCode;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Serialize;
use vfarm_imagelist::cache::{Cache, Expected, FetchOptions};
use vfarm_imagelist::hooks::{Event, EventType, Hook};
use vfarm_imagelist::model::{format_date, parse_date, Image, ImageList};
use vfarm_imagelist::smime::{Credentials, SignedMessage};
use vfarm_imagelist::subscription::{decide, expired_by_time, Current, Decision};
use vfarm_imagelist::trust::CertInfo;
use vfarm_imagelist::{verify, EndorserId, Policy, Refusal, TrustStore};
use vfarm_store::imagelists::{
    record_list, CacheRow, EndorserRow, ImageDefRow, NewListInstance, SubscriptionRow,
};
use vfarm_store::Store;

use crate::ctx::Ctx;

#[derive(Subcommand)]
pub enum ImagelistCmd {
    /// Write a new (unsigned) image list: from a JSON/TOML description, or from repository
    /// images. Sizes, sha512, identifiers and dates are filled in.
    #[command(
        after_help = "Description (TOML or JSON): title, description, source, uri, version, lifetime_days,\n[endorser] dn/ca/email/creator, [[images]] file or uri+sha512+size, title, description,\narch, os, osversion, comments, hypervisor, version, format, identifier.\n\nExamples:\n  vfarm imagelist create -f site.toml --cert usercert.pem -o site.list.json\n  vfarm imagelist create --image web --uri https://example.org/imagelists/site.list --title Site --cert usercert.pem"
    )]
    Create {
        /// List description (`.toml` for TOML, anything else JSON).
        #[arg(long = "file", short = 'f', value_name = "DESC")]
        file: Option<PathBuf>,
        /// Repository images to list (id, id prefix or name); repeatable.
        #[arg(long = "image", value_name = "IMAGE")]
        images: Vec<String>,
        /// Where the signed list will be published (its `hv:uri`); required with --image.
        /// The list's and its images' identifiers are derived from it (and the image names),
        /// so later versions made the same way keep them.
        #[arg(long)]
        uri: Option<String>,
        /// List title (with --image).
        #[arg(long)]
        title: Option<String>,
        /// List version (with --image; default 1).
        #[arg(long = "list-version")]
        list_version: Option<String>,
        /// Base URL of image downloads: an image's `hv:uri` becomes <base>/<image id>/<file>.
        /// `vfarm serve` serves exactly that under http://HOST:PORT/repository.
        /// Default: file:// URLs of the repository files.
        #[arg(long, value_name = "URL")]
        image_base_url: Option<String>,
        /// The endorser's certificate: `hv:dn`/`hv:ca` are taken from it.
        #[arg(long, value_name = "PEM")]
        cert: Option<PathBuf>,
        /// Output file (default: stdout).
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Sign a list (S/MIME, detached, as `openssl smime -sign`). The list's endorser must be
    /// the certificate's subject and issuer.
    Sign {
        #[arg(long, value_name = "PEM")]
        cert: PathBuf,
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
        /// Unsigned list (JSON).
        input: PathBuf,
        /// Signed list to write. (Not named `output`: that is the global `--output` flag.)
        #[arg(value_name = "OUT")]
        signed: PathBuf,
    },
    /// Verify a signed list: prints the list and its signer, or the precise reason it is refused
    /// (exit 1).
    Verify {
        file: PathBuf,
        /// IGTF CA directory (<hash>.0 certificates, <hash>.r0 CRLs).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Only accept these signer DNs; repeatable.
        #[arg(long = "endorser", value_name = "DN")]
        endorsers: Vec<String>,
        /// Judge validity at this time (YYYY-MM-DDTHH:MM:SSZ) instead of now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Publish a signed list: `vfarm serve` serves it at /imagelists/<name>.list.
    Publish {
        /// Signed list.
        file: PathBuf,
        /// Name in the URL (default: the file name without extensions).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SubscriptionCmd {
    /// Subscribe to a list URL (file://, http://, https://) and run the first update.
    Add {
        url: String,
        /// IGTF CA directory the list must chain to.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Authorised signer DN (one-line form); repeatable. Without any, the first accepted
        /// list's signer (DN and CA) becomes the only endorser.
        #[arg(long = "endorser", value_name = "DN")]
        endorsers: Vec<String>,
        /// Do not cache new images automatically (they are recorded as available).
        #[arg(long)]
        no_cache: bool,
        /// Command run on image events with VMCATCHER_EVENT_* variables (default: $VMCATCHER_CACHE_EVENT).
        #[arg(long, value_name = "CMD")]
        hook: Option<String>,
        /// Only record the subscription; do not fetch now.
        #[arg(long)]
        no_update: bool,
    },
    /// List subscriptions.
    #[command(alias = "list")]
    Ls,
    /// Show a subscription: endorsers, the accepted list, its images and their state.
    Show { subscription: String },
    /// Fetch, verify and apply new list versions; exits 1 if any list was refused.
    Update {
        /// Subscription id, id prefix, URL or list identifier.
        subscription: Option<String>,
        /// Update every subscription.
        #[arg(long, conflicts_with = "subscription")]
        all: bool,
        /// Judge validity at this time (YYYY-MM-DDTHH:MM:SSZ) instead of now.
        #[arg(long, value_name = "TIME", hide = true)]
        at: Option<String>,
    },
    /// Remove a subscription; its cached images are expired.
    #[command(alias = "remove")]
    Rm { subscription: String },
    /// Revoke an image, an endorser or a whole subscription: revoked images leave the cache
    /// and new instances from them are refused.
    Revoke {
        /// What to revoke.
        #[arg(value_enum)]
        kind: RevokeKind,
        /// Image identifier or title, endorser DN, or subscription reference.
        target: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RevokeKind {
    Image,
    Endorser,
    Subscription,
}

#[derive(Subcommand)]
pub enum CacheCmd {
    /// List cached images.
    #[command(alias = "list")]
    Ls,
    /// Show one cached image with its list metadata.
    Show { image: String },
    /// Move a cached image to the expired area.
    Expire { image: String },
    /// Re-hash cached images; corrupted copies are deleted (exit 1 if any).
    Verify {
        /// One image (default: all).
        image: Option<String>,
    },
}

fn cache(ctx: &Ctx) -> Result<Cache> {
    Ok(Cache::open(&ctx.data_dir.join("imagelist-cache"))?)
}

fn parse_at(at: Option<&str>) -> Result<DateTime<Utc>> {
    match at {
        None => Ok(Utc::now()),
        Some(s) => parse_date(s)
            .with_context(|| format!("--at `{s}` is not of the form YYYY-MM-DDTHH:MM:SSZ")),
    }
}

// ---------------------------------------------------------------------------------------
// vfarm imagelist

pub fn run_imagelist(ctx: &Ctx, cmd: ImagelistCmd) -> Result<i32> {
    match cmd {
        ImagelistCmd::Create {
            file,
            images,
            uri,
            title,
            list_version,
            image_base_url,
            cert,
            out,
        } => {
            let endorser = match &cert {
                Some(c) => Some(endorser_from_cert(c)?),
                None => None,
            };
            let desc = match (&file, images.is_empty()) {
                (Some(f), true) => vfarm_imagelist::create::ListDesc::load(f)?,
                (None, false) => desc_from_repository(
                    ctx,
                    &images,
                    uri.clone().context(
                        "--uri (where the list will be published) is required with --image",
                    )?,
                    title,
                    list_version,
                    image_base_url.as_deref(),
                )?,
                (Some(_), false) => bail!("give either --file or --image, not both"),
                (None, true) => bail!("give a description (--file) or repository images (--image)"),
            };
            let list = vfarm_imagelist::create::build(&desc, endorser, Utc::now())?;
            let json = list.to_json_pretty();
            match out {
                Some(p) => {
                    std::fs::write(&p, &json)
                        .with_context(|| format!("cannot write {}", p.display()))?;
                    if ctx.json() {
                        ctx.print_json(&list.to_value())?;
                    } else {
                        println!(
                            "wrote {} ({} images, identifier {})",
                            p.display(),
                            list.images.len(),
                            list.identifier
                        );
                    }
                }
                None => print!("{}", String::from_utf8_lossy(&json)),
            }
            Ok(0)
        }
        ImagelistCmd::Sign {
            cert,
            key,
            input,
            signed: output,
        } => {
            let creds = Credentials::load(&cert, &key)?;
            let body = std::fs::read(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let list = ImageList::from_json(&body)
                .with_context(|| format!("{} is not an image list", input.display()))?;
            let me = CertInfo::of(&creds.cert);
            if !list
                .endorsers
                .iter()
                .any(|e| e.dn == me.subject && e.ca == me.issuer)
            {
                bail!(
                    "the list's endorser ({} / {}) is not the certificate's subject and issuer ({} / {}); subscribers would refuse it",
                    list.endorsers[0].dn,
                    list.endorsers[0].ca,
                    me.subject,
                    me.issuer
                );
            }
            let now = Utc::now();
            if me.not_after.is_some_and(|t| t < list.expires) {
                eprintln!(
                    "warning: the list expires after the certificate ({}); re-sign before the certificate expires",
                    me.not_after.map(|t| format_date(&t)).unwrap_or_default()
                );
            }
            if list.expires < now {
                eprintln!(
                    "warning: the list already expired at {}",
                    format_date(&list.expires)
                );
            }
            // The exact input bytes are signed; nothing is re-serialised.
            let signed = creds.sign(&body)?;
            std::fs::write(&output, &signed)
                .with_context(|| format!("cannot write {}", output.display()))?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"signed": output, "signer": me, "identifier": list.identifier}))?;
            } else {
                println!(
                    "signed {} as {} -> {}",
                    list.identifier,
                    me.subject,
                    output.display()
                );
            }
            Ok(0)
        }
        ImagelistCmd::Verify {
            file,
            ca_dir,
            endorsers,
            at,
        } => {
            let raw =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut policy = Policy::at(parse_at(at.as_deref())?);
            policy.endorsers = endorsers
                .into_iter()
                .map(|dn| EndorserId { dn, ca: None })
                .collect();
            let result = TrustStore::load(&ca_dir)
                .map_err(Refusal::Trust)
                .and_then(|t| verify(&raw, &t, &policy));
            match result {
                Ok(v) => {
                    if ctx.json() {
                        ctx.print_json(&serde_json::json!({
                            "accepted": true,
                            "signer": v.signer,
                            "micalg": v.micalg,
                            "sha512": v.raw_sha512,
                            "list": v.list.to_value(),
                        }))?;
                    } else {
                        print_list(&v.list);
                        println!("signer:      {}", v.signer.subject);
                        println!("issuer:      {}", v.signer.issuer);
                        println!("verdict:     accepted");
                    }
                    Ok(0)
                }
                Err(r) => {
                    print_refusal(ctx, &file.display().to_string(), &r)?;
                    Ok(1)
                }
            }
        }
        ImagelistCmd::Publish { file, name } => {
            let raw =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let msg = SignedMessage::parse(&raw)
                .with_context(|| format!("{} is not a signed list", file.display()))?;
            msg.check_signature()
                .with_context(|| format!("{} does not verify; sign it again", file.display()))?;
            let list = ImageList::from_json(&msg.content)?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('.').next())
                    .filter(|n| !n.is_empty())
                    .context("cannot derive a name from the file name; give --name")?
                    .to_string(),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                bail!("publish name `{name}` may only hold letters, digits, `-` and `_`");
            }
            let dir = ctx.data_dir.join("published");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let dest = dir.join(format!("{name}.list"));
            let tmp = dir.join(format!(".{name}.list.tmp"));
            std::fs::write(&tmp, &raw)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("cannot write {}", dest.display()))?;
            let path = format!("/imagelists/{name}.list");
            if !list.uri.ends_with(&path) {
                eprintln!(
                    "warning: the list's hv:uri is {}, but it is served at {path}; subscribers warn about the difference",
                    list.uri
                );
            }
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"published": dest, "path": path, "identifier": list.identifier, "version": list.version}))?;
            } else {
                println!(
                    "published {} version {} at {path}",
                    list.identifier, list.version
                );
            }
            Ok(0)
        }
    }
}

fn endorser_from_cert(path: &Path) -> Result<vfarm_imagelist::create::EndorserDesc> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cert = openssl_cert(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))?;
    Ok(vfarm_imagelist::create::EndorserDesc {
        dn: cert.subject,
        ca: cert.issuer,
        email: String::new(),
        creator: String::new(),
    })
}

fn openssl_cert(pem: &[u8]) -> Result<CertInfo> {
    let c = vfarm_imagelist::trust::certificate_from_pem(pem)?;
    Ok(CertInfo::of(&c))
}

fn desc_from_repository(
    ctx: &Ctx,
    refs: &[String],
    uri: String,
    title: Option<String>,
    version: Option<String>,
    base: Option<&str>,
) -> Result<vfarm_imagelist::create::ListDesc> {
    let repo = ctx.images()?;
    let mut images = Vec::new();
    for r in refs {
        let img = repo.resolve(r)?;
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
            uri: Some(match base {
                Some(b) => format!("{}/{}/{file_name}", b.trim_end_matches('/'), img.id),
                None => format!("file://{}", art.path.display()),
            }),
            sha512: Some(art.sha512.clone()),
            size: Some(art.size),
            identifier: Some(derived_identifier(&[&uri, "image", &identity])),
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
    Ok(vfarm_imagelist::create::ListDesc {
        identifier: Some(derived_identifier(&[&uri, "list"])),
        title: title.unwrap_or_else(|| "vfarm image list".into()),
        description: String::new(),
        source: String::new(),
        uri,
        version: version.unwrap_or_else(|| "1".into()),
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

fn print_list(l: &ImageList) {
    println!("identifier:  {}", l.identifier);
    println!("title:       {}", l.title);
    println!("version:     {}", l.version);
    println!("created:     {}", format_date(&l.created));
    println!("expires:     {}", format_date(&l.expires));
    println!("uri:         {}", l.uri);
    for e in &l.endorsers {
        println!("endorser:    {} (CA {})", e.dn, e.ca);
    }
    println!("images:      {}", l.images.len());
    for i in &l.images {
        println!(
            "  {}  {}  {} bytes  {}",
            i.identifier, i.title, i.size, i.uri
        );
    }
}

#[derive(Serialize)]
struct RefusalDoc<'a> {
    accepted: bool,
    source: &'a str,
    code: ErrorCode,
    reason: String,
}

fn print_refusal(ctx: &Ctx, source: &str, r: &Refusal) -> Result<()> {
    if ctx.json() {
        ctx.print_json(&RefusalDoc {
            accepted: false,
            source,
            code: r.code(),
            reason: r.reason(),
        })?;
    } else {
        println!("verdict:     refused ({})", r.code());
        println!("reason:      {}", r.reason());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// vfarm subscription

pub fn run_subscription(ctx: &Ctx, cmd: SubscriptionCmd) -> Result<i32> {
    let store = ctx.store()?;
    match cmd {
        SubscriptionCmd::Add {
            url,
            ca_dir,
            endorsers,
            no_cache,
            hook,
            no_update,
        } => {
            let ca_dir = std::path::absolute(&ca_dir)
                .with_context(|| format!("bad CA dir {}", ca_dir.display()))?;
            TrustStore::load(&ca_dir)?;
            let url = normalise_url(&url)?;
            let row = SubscriptionRow {
                id: vfarm_imagelist::subscription::new_id(),
                url,
                ca_dir: ca_dir.display().to_string(),
                list_identifier: None,
                title: None,
                auto_cache: !no_cache,
                hook,
                created: vfarm_store::now(),
                updated: None,
                checked: None,
                last_error: None,
                revoked: None,
                endorsers: endorsers
                    .into_iter()
                    .map(|dn| EndorserRow { dn, ca: None })
                    .collect(),
            };
            store.add_subscription(&row)?;
            store.event(
                "cli",
                "subscription.add",
                &row.id,
                &serde_json::json!({"url": row.url}),
            )?;
            if no_update {
                if ctx.json() {
                    ctx.print_json(&row)?;
                } else {
                    println!("subscribed {} to {}", row.id, row.url);
                }
                return Ok(0);
            }
            let report = update_one(ctx, &store, &row, Utc::now())?;
            let code = if report.refused.is_some() || !report.failed.is_empty() {
                1
            } else {
                0
            };
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"subscription": store.find_subscription(&row.id)?, "update": report}))?;
            } else {
                println!("subscribed {} to {}", row.id, row.url);
                print_report(&report);
            }
            Ok(code)
        }
        SubscriptionCmd::Ls => {
            let subs = store.subscriptions()?;
            if ctx.json() {
                ctx.print_json(&subs)?;
                return Ok(0);
            }
            println!(
                "{:<36}  {:<8}  {:<20}  {:<20}  URL",
                "ID", "STATE", "VERSION", "UPDATED"
            );
            for s in subs {
                let version = store
                    .latest_list(&s.id)?
                    .map(|l| l.version)
                    .unwrap_or_else(|| "-".into());
                let state = if s.revoked.is_some() {
                    "revoked"
                } else if s.last_error.is_some() {
                    "refused"
                } else {
                    "ok"
                };
                println!(
                    "{:<36}  {:<8}  {:<20}  {:<20}  {}",
                    s.id,
                    state,
                    version,
                    s.updated
                        .as_deref()
                        .map(|u| &u[..u.len().min(19)])
                        .unwrap_or("-"),
                    s.url
                );
            }
            Ok(0)
        }
        SubscriptionCmd::Show { subscription } => {
            let s = store.find_subscription(&subscription)?;
            let latest = store.latest_list(&s.id)?;
            let images = store.list_images(Some(&s.id))?;
            if ctx.json() {
                ctx.print_json(
                    &serde_json::json!({"subscription": s, "list": latest, "images": images}),
                )?;
                return Ok(0);
            }
            println!("id:          {}", s.id);
            println!("url:         {}", s.url);
            println!("ca dir:      {}", s.ca_dir);
            println!(
                "list:        {}",
                s.list_identifier.as_deref().unwrap_or("-")
            );
            println!("title:       {}", s.title.as_deref().unwrap_or("-"));
            println!("auto cache:  {}", s.auto_cache);
            for e in &s.endorsers {
                println!(
                    "endorser:    {} (CA {})",
                    e.dn,
                    e.ca.as_deref().unwrap_or("any trusted")
                );
            }
            if let Some(r) = &s.revoked {
                println!("revoked:     {r}");
            }
            if let Some(e) = &s.last_error {
                println!("last error:  {e}");
            }
            if let Some(l) = latest {
                println!(
                    "version:     {} (created {}, expires {})",
                    l.version, l.created, l.expires
                );
                println!("signer:      {} (CA {})", l.signer_dn, l.signer_ca);
            }
            println!("images:");
            for i in images {
                println!(
                    "  {}  {:<9}  {}  {}",
                    i.identifier, i.state, i.version, i.title
                );
            }
            Ok(0)
        }
        SubscriptionCmd::Update {
            subscription,
            all,
            at,
        } => {
            let now = parse_at(at.as_deref())?;
            let subs = match (subscription, all) {
                (Some(r), _) => vec![store.find_subscription(&r)?],
                (None, true) => store.subscriptions()?,
                (None, false) => bail!("name a subscription or give --all"),
            };
            let mut code = 0;
            let mut reports = Vec::new();
            for s in &subs {
                let r = update_one(ctx, &store, s, now)?;
                if r.refused.is_some() || !r.failed.is_empty() {
                    code = 1;
                }
                if !ctx.json() {
                    print_report(&r);
                }
                reports.push(r);
            }
            if ctx.json() {
                ctx.print_json(&reports)?;
            }
            Ok(code)
        }
        SubscriptionCmd::Rm { subscription } => {
            let s = store.find_subscription(&subscription)?;
            let cache = cache(ctx)?;
            let now = Utc::now();
            let mut expired = Vec::new();
            for c in store.cache_entries()? {
                if c.subscription_id.as_deref() == Some(s.id.as_str()) {
                    cache.expire(&c.identifier, now)?;
                    store.remove_cache_entry(&c.identifier)?;
                    // As in `Site::expire`: an expired image no longer answers to its identifier.
                    release_repository_name(&store, &c.identifier)?;
                    expired.push(c.identifier);
                }
            }
            store.remove_subscription(&s.id)?;
            store.event(
                "cli",
                "subscription.rm",
                &s.id,
                &serde_json::json!({"expired": expired}),
            )?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"removed": s.id, "expired": expired}))?;
            } else {
                println!(
                    "removed subscription {} ({} cached images expired)",
                    s.id,
                    expired.len()
                );
            }
            Ok(0)
        }
        SubscriptionCmd::Revoke {
            kind,
            target,
            reason,
        } => {
            let (kind, target) = match kind {
                RevokeKind::Image => ("image", store.find_list_image(&target)?.identifier),
                RevokeKind::Endorser => ("endorser", target),
                RevokeKind::Subscription => ("subscription", store.find_subscription(&target)?.id),
            };
            let revoked = store.revoke(kind, &target, reason.as_deref())?;
            let cache = cache(ctx)?;
            let mut removed = Vec::new();
            for img in &revoked {
                if cache.remove(&img.identifier)? {
                    removed.push(img.identifier.clone());
                }
                store.remove_cache_entry(&img.identifier)?;
            }
            store.event(
                "cli",
                "imagelist.revoke",
                &target,
                &serde_json::json!({"kind": kind, "images": revoked.iter().map(|i| &i.identifier).collect::<Vec<_>>(), "reason": reason}),
            )?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"kind": kind, "target": target, "revoked_images": revoked, "removed_from_cache": removed}))?;
            } else {
                println!(
                    "revoked {kind} {target}: {} images revoked, {} removed from the cache",
                    revoked.len(),
                    removed.len()
                );
            }
            Ok(0)
        }
    }
}

fn normalise_url(url: &str) -> Result<String> {
    if url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file://") {
        return Ok(url.to_string());
    }
    // A plain path is taken as a local file.
    let p =
        std::path::absolute(url).with_context(|| format!("`{url}` is neither a URL nor a path"))?;
    if !p.exists() {
        bail!("`{url}` is not an http://, https:// or file:// URL, nor an existing file");
    }
    Ok(format!("file://{}", p.display()))
}

/// What one subscription update did.
#[derive(Debug, Default, Serialize)]
pub struct UpdateReport {
    pub subscription: String,
    pub url: String,
    /// `accepted`, `unchanged` or `refused`.
    pub result: &'static str,
    pub version: Option<String>,
    pub refused: Option<RefusedDoc>,
    pub new: Vec<String>,
    pub replaced: Vec<String>,
    pub expired: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<FailedDoc>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RefusedDoc {
    pub code: ErrorCode,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct FailedDoc {
    pub image: String,
    pub code: ErrorCode,
    pub reason: String,
}

fn print_report(r: &UpdateReport) {
    match &r.refused {
        Some(f) => println!("{}: refused ({}): {}", r.subscription, f.code, f.reason),
        None => println!(
            "{}: {} version {}: {} new, {} replaced, {} expired, {} cached",
            r.subscription,
            r.result,
            r.version.as_deref().unwrap_or("-"),
            r.new.len(),
            r.replaced.len(),
            r.expired.len(),
            r.cached.len()
        ),
    }
    if r.refused.is_some() && !r.expired.is_empty() {
        println!("  expired: {}", r.expired.join(", "));
    }
    for w in &r.warnings {
        println!("  warning: {w}");
    }
    for f in &r.failed {
        println!("  image {} not cached ({}): {}", f.image, f.code, f.reason);
    }
}

struct Site<'a> {
    store: &'a Store,
    cache: Cache,
    hook: Option<Hook>,
    session: String,
    sub: &'a SubscriptionRow,
    ctx: &'a Ctx,
}

impl Site<'_> {
    fn event(&self, kind: EventType, img: &Image, list: Option<&ImageList>, file: Option<&str>) {
        let Some(h) = &self.hook else { return };
        let mut e = Event::image(kind, &self.session, img, list, file);
        e.cache_dir = Some(self.cache.cache_dir());
        e.download_dir = Some(self.cache.partial_dir());
        e.expire_dir = Some(self.cache.expired_dir());
        if let Err(err) = h.run(&e) {
            // Hooks are the site's business: a failing one is reported, never fatal.
            tracing::warn!(subscription = %self.sub.id, error = %err, "event hook failed");
            eprintln!("warning: {err}");
        }
    }

    fn expire(&self, img: Option<&Image>, identifier: &str, now: DateTime<Utc>) -> Result<bool> {
        // An expired image is no longer endorsed: its repository image must stop answering
        // to the identifier (new instances by that name are refused), as a replaced one does.
        // The image itself stays (by its id) for instances already running from it.
        release_repository_name(self.store, identifier)?;
        if !self.cache.contains(identifier) {
            self.store.remove_cache_entry(identifier)?;
            return Ok(false);
        }
        if let Some(i) = img {
            self.event(EventType::ExpirePrefix, i, None, Some(identifier));
        }
        let moved = self.cache.expire(identifier, now)?;
        self.store.remove_cache_entry(identifier)?;
        if let (Some(i), Some(m)) = (img, moved) {
            let name = m
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(identifier)
                .to_string();
            self.event(EventType::ExpirePostfix, i, None, Some(&name));
        }
        Ok(true)
    }

    /// Download one image into the cache and make it a repository image.
    fn cache_image(&self, img: &Image, list: &ImageList, report: &mut UpdateReport) -> Result<()> {
        self.event(
            EventType::AvailablePrefix,
            img,
            Some(list),
            Some(&img.identifier),
        );
        let expected = Expected {
            uri: img.uri.clone(),
            size: img.size,
            sha512: img.sha512.clone(),
        };
        let opts = FetchOptions {
            attempts: 3,
            retry_delay: Duration::from_millis(500),
            // Local image files only in a list the admin subscribed to as a local file.
            allow_file: self.sub.url.starts_with("file://"),
            ..FetchOptions::default()
        };
        match self.cache.fetch(&img.identifier, &expected, &opts) {
            Ok(c) => {
                let image_id = self.adopt(img, &c.path, report);
                self.store.put_cache_entry(&CacheRow {
                    identifier: img.identifier.clone(),
                    subscription_id: Some(self.sub.id.clone()),
                    file: c.path.display().to_string(),
                    size: c.size,
                    sha512: c.sha512,
                    cached: vfarm_store::now(),
                    image_id: image_id.clone(),
                })?;
                self.store.set_list_image_repository_id(
                    &self.sub.id,
                    &img.identifier,
                    image_id.as_deref(),
                )?;
                report.cached.push(img.identifier.clone());
                self.event(
                    EventType::AvailablePostfix,
                    img,
                    Some(list),
                    Some(&img.identifier),
                );
            }
            Err(e) => report.failed.push(FailedDoc {
                image: img.identifier.clone(),
                code: e.code(),
                reason: error_chain(&e),
            }),
        }
        Ok(())
    }

    /// Make the cached file a repository image (hard link, origin `imagelist`), so instances
    /// can be created from it by its identifier or title. Failure leaves it cached only.
    fn adopt(&self, img: &Image, path: &Path, report: &mut UpdateReport) -> Option<String> {
        let result = (|| -> Result<String> {
            let repo = self.ctx.images()?;
            let name = repository_name(img);
            self.store.release_imagelist_image_name(&name)?;
            let format = img
                .format
                .as_deref()
                .and_then(|f| f.parse::<vfarm_core::Format>().ok());
            let opts = vfarm_image::ImportOptions {
                name: Some(name),
                origin: Some("imagelist".into()),
                format,
                os: Some(img.os.clone()),
                os_version: Some(img.os_version.clone()),
                arch: Some(img.arch.clone()),
                link: true,
                extra: Some(serde_json::json!({
                    "dc:identifier": img.identifier,
                    "dc:title": img.title,
                    "hv:version": img.version,
                    "subscription": self.sub.id,
                })),
            };
            Ok(repo.import(path, &opts, "imagelist")?.image.id)
        })();
        match result {
            Ok(id) => Some(id),
            Err(e) => {
                report.warnings.push(format!(
                    "image {} is cached but not usable by instances: {e:#}",
                    img.identifier
                ));
                None
            }
        }
    }
}

/// Repository names must be simple; the list identifier is (UUIDs are).
fn repository_name(img: &Image) -> String {
    repository_name_of(&img.identifier)
}

fn repository_name_of(identifier: &str) -> String {
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
fn release_repository_name(store: &Store, identifier: &str) -> Result<()> {
    store.release_imagelist_image_name(&repository_name_of(identifier))?;
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn def_row(sub: &str, img: &Image, state: &str, cache: bool) -> ImageDefRow {
    ImageDefRow {
        subscription_id: sub.to_string(),
        identifier: img.identifier.clone(),
        instance_id: 0,
        title: img.title.clone(),
        sha512: img.sha512.clone(),
        size: img.size,
        uri: img.uri.clone(),
        version: img.version.clone(),
        os: img.os.clone(),
        os_version: img.os_version.clone(),
        arch: img.arch.clone(),
        hypervisor: img.hypervisor.clone(),
        format: img.format.clone(),
        entry: img.to_value()["hv:image"].to_string(),
        state: state.to_string(),
        cache,
        image_id: None,
    }
}

/// The accepted list of a subscription, parsed from its stored raw message.
fn stored_list(
    store: &Store,
    sub: &str,
) -> Result<Option<(vfarm_store::imagelists::ListInstanceRow, ImageList)>> {
    let Some(inst) = store.latest_list(sub)? else {
        return Ok(None);
    };
    let raw = store.list_raw(inst.id)?;
    let msg = SignedMessage::parse(&raw).context("stored list is no longer readable")?;
    let list = ImageList::from_json(&msg.content).context("stored list is no longer readable")?;
    Ok(Some((inst, list)))
}

fn update_one(
    ctx: &Ctx,
    store: &Store,
    sub: &SubscriptionRow,
    now: DateTime<Utc>,
) -> Result<UpdateReport> {
    let hook = sub
        .hook
        .clone()
        .or_else(|| {
            std::env::var("VMCATCHER_CACHE_EVENT")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .map(Hook::new);
    let site = Site {
        store,
        cache: cache(ctx)?,
        hook,
        session: vfarm_imagelist::subscription::new_id(),
        sub,
        ctx,
    };
    let mut report = UpdateReport {
        subscription: sub.id.clone(),
        url: sub.url.clone(),
        result: "refused",
        ..UpdateReport::default()
    };
    let stored = stored_list(store, &sub.id)?;

    // Time passing expires what the accepted list no longer covers, whatever the download says.
    if let Some((_, list)) = &stored {
        for id in expired_by_time(list, now) {
            let held = store
                .list_images(Some(&sub.id))?
                .into_iter()
                .any(|d| d.identifier == id && d.state == "available");
            if held {
                store.set_list_image_state(&sub.id, &id, "expired")?;
                site.expire(list.image(&id), &id, now)?;
                report.expired.push(id);
            }
        }
    }

    let refuse = |report: &mut UpdateReport, code: ErrorCode, reason: String| -> Result<()> {
        store.set_subscription_error(&sub.id, Some(&format!("{code}: {reason}")))?;
        report.refused = Some(RefusedDoc { code, reason });
        report.result = "refused";
        Ok(())
    };
    if sub.revoked.is_some() {
        refuse(
            &mut report,
            ErrorCode::SubscriptionRevoked,
            "the subscription is revoked".into(),
        )?;
        return Ok(report);
    }
    let raw = match vfarm_imagelist::cache::fetch_bytes(&sub.url, Duration::from_secs(120)) {
        Ok(r) => r,
        Err(e) => {
            refuse(&mut report, e.code(), error_chain(&e))?;
            return Ok(report);
        }
    };
    let trust = match TrustStore::load(Path::new(&sub.ca_dir)) {
        Ok(t) => t,
        Err(e) => {
            let r = Refusal::Trust(e);
            refuse(&mut report, r.code(), r.reason())?;
            return Ok(report);
        }
    };
    let mut policy = Policy::at(now);
    policy.endorsers = sub
        .endorsers
        .iter()
        .map(|e| EndorserId {
            dn: e.dn.clone(),
            ca: e.ca.clone(),
        })
        .collect();
    policy.revoked_endorsers = store
        .revocations()?
        .into_iter()
        .filter(|r| r.kind == "endorser")
        .map(|r| r.target)
        .collect();
    let verified = match verify(&raw, &trust, &policy) {
        Ok(v) => v,
        Err(r) => {
            // The very list accepted before no longer verifies (its signer expired or was
            // revoked): what it endorsed is no longer endorsed. A different, bad list
            // changes nothing.
            let same = stored
                .as_ref()
                .is_some_and(|(inst, _)| inst.sha512 == vfarm_imagelist::verify::sha512_hex(&raw));
            if let (true, Some((_, list))) = (same, &stored) {
                for d in store.list_images(Some(&sub.id))? {
                    if d.state == "available" {
                        store.set_list_image_state(&sub.id, &d.identifier, "expired")?;
                        site.expire(list.image(&d.identifier), &d.identifier, now)?;
                        report.expired.push(d.identifier);
                    }
                }
            }
            refuse(&mut report, r.code(), r.reason())?;
            return Ok(report);
        }
    };
    if verified.list.uri != sub.url {
        report.warnings.push(format!(
            "the list says it is published at {}, not {}",
            verified.list.uri, sub.url
        ));
    }
    let defs = store.list_images(Some(&sub.id))?;
    let current = stored.as_ref().map(|(inst, _)| Current {
        identifier: inst.identifier.clone(),
        version: inst.version.clone(),
        list_sha512: inst.sha512.clone(),
        images: defs
            .iter()
            .filter(|d| d.state == "available")
            .map(|d| (d.identifier.clone(), d.sha512.clone()))
            .collect(),
    });
    let plan = match decide(current.as_ref(), &verified, now) {
        Ok(Decision::Unchanged) => {
            store.set_subscription_error(&sub.id, None)?;
            report.result = "unchanged";
            report.version = Some(verified.list.version.clone());
            // Images that should be cached but are not (an earlier download failed) are retried.
            for d in defs.iter().filter(|d| d.state == "available" && d.cache) {
                if !site.cache.contains(&d.identifier) {
                    if let Some(img) = verified.list.image(&d.identifier) {
                        site.cache_image(img, &verified.list, &mut report)?;
                    }
                }
            }
            return Ok(report);
        }
        Ok(Decision::Apply(p)) => p,
        Err(r) => {
            refuse(&mut report, r.code(), r.reason())?;
            return Ok(report);
        }
    };
    if plan.same_version {
        report.warnings.push(format!(
            "the list changed but kept version {}",
            verified.list.version
        ));
    }
    let revoked_images: Vec<String> = defs
        .iter()
        .filter(|d| d.state == "revoked")
        .map(|d| d.identifier.clone())
        .collect();
    let available: Vec<ImageDefRow> = plan
        .new
        .iter()
        .map(|i| def_row(&sub.id, i, "available", sub.auto_cache))
        .chain(plan.replaced.iter().chain(&plan.unchanged).map(|i| {
            let was_cached = defs.iter().any(|d| d.identifier == i.identifier && d.cache);
            def_row(&sub.id, i, "available", was_cached)
        }))
        .collect();
    let l = &verified.list;
    store.tx(|tx| {
        record_list(
            tx,
            &sub.id,
            &NewListInstance {
                raw: &verified.raw,
                sha512: &verified.raw_sha512,
                identifier: &l.identifier,
                version: &l.version,
                created: &format_date(&l.created),
                expires: &format_date(&l.expires),
                signer_dn: &verified.signer.subject,
                signer_ca: &verified.signer.issuer,
                title: &l.title,
            },
            &available,
            &plan.expired,
        )?;
        if sub.endorsers.is_empty() {
            // First use: the signer of the first accepted list becomes the endorser.
            tx.execute(
                "INSERT INTO imagelist_endorsers(subscription_id, dn, ca) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                vfarm_store::params![sub.id, verified.signer.subject, verified.signer.issuer],
            )?;
        }
        Ok::<_, vfarm_store::StoreError>(())
    })?;
    store.event(
        "cli",
        "subscription.update",
        &sub.id,
        &serde_json::json!({"version": l.version, "sha512": verified.raw_sha512}),
    )?;
    report.result = "accepted";
    report.version = Some(l.version.clone());
    report.new = plan.new.iter().map(|i| i.identifier.clone()).collect();
    report.replaced = plan.replaced.iter().map(|i| i.identifier.clone()).collect();
    for id in &plan.expired {
        let img = stored.as_ref().and_then(|(_, old)| old.image(id));
        site.expire(img, id, now)?;
        report.expired.push(id.clone());
    }
    for img in &plan.new {
        site.event(EventType::SubscriptionImageNew, img, Some(l), None);
    }
    let cached_now: Vec<String> = store
        .cache_entries()?
        .into_iter()
        .map(|c| c.identifier)
        .collect();
    for row in &available {
        let img = l
            .image(&row.identifier)
            .expect("available images come from the list");
        let replaced = plan.replaced.iter().any(|r| r.identifier == img.identifier);
        let missing =
            !cached_now.contains(&img.identifier) || !site.cache.contains(&img.identifier);
        let wanted = row.cache && !revoked_images.contains(&img.identifier);
        if wanted && (replaced || missing) {
            site.cache_image(img, l, &mut report)?;
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// vfarm cache

#[derive(Serialize)]
struct CacheView {
    #[serde(flatten)]
    entry: CacheRow,
    title: Option<String>,
    state: Option<String>,
    present: bool,
}

fn cache_view(store: &Store, cache: &Cache, entry: CacheRow) -> Result<CacheView> {
    let def = store.find_list_image(&entry.identifier).ok();
    Ok(CacheView {
        present: cache.contains(&entry.identifier),
        title: def.as_ref().map(|d| d.title.clone()),
        state: def.map(|d| d.state),
        entry,
    })
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

pub fn run_cache(ctx: &Ctx, cmd: CacheCmd) -> Result<i32> {
    let store = ctx.store()?;
    let cache = cache(ctx)?;
    match cmd {
        CacheCmd::Ls => {
            let views = store
                .cache_entries()?
                .into_iter()
                .map(|e| cache_view(&store, &cache, e))
                .collect::<Result<Vec<_>>>()?;
            if ctx.json() {
                ctx.print_json(&views)?;
                return Ok(0);
            }
            println!(
                "{:<36}  {:>12}  {:<9}  {:<16}  TITLE",
                "IDENTIFIER", "SIZE", "STATE", "SHA512"
            );
            for v in views {
                println!(
                    "{:<36}  {:>12}  {:<9}  {:<16}  {}",
                    v.entry.identifier,
                    v.entry.size,
                    if v.present {
                        v.state.as_deref().unwrap_or("-")
                    } else {
                        "missing"
                    },
                    &v.entry.sha512[..16.min(v.entry.sha512.len())],
                    v.title.as_deref().unwrap_or("-")
                );
            }
            Ok(0)
        }
        CacheCmd::Show { image } => {
            let entry = cache_ref(&store, &image)?;
            let def = store.find_list_image(&entry.identifier).ok();
            let view = cache_view(&store, &cache, entry)?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({"cache": view, "definition": def}))?;
                return Ok(0);
            }
            println!("identifier:  {}", view.entry.identifier);
            println!("title:       {}", view.title.as_deref().unwrap_or("-"));
            println!("state:       {}", view.state.as_deref().unwrap_or("-"));
            println!(
                "file:        {}{}",
                view.entry.file,
                if view.present { "" } else { " (missing)" }
            );
            println!("size:        {}", view.entry.size);
            println!("sha512:      {}", view.entry.sha512);
            println!("cached:      {}", view.entry.cached);
            println!(
                "subscription:{}",
                view.entry
                    .subscription_id
                    .as_deref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default()
            );
            println!(
                "repository:  {}",
                view.entry.image_id.as_deref().unwrap_or("-")
            );
            if let Some(d) = def {
                println!("uri:         {}", d.uri);
                println!("version:     {}", d.version);
                println!("os:          {} {} {}", d.os, d.os_version, d.arch);
            }
            Ok(0)
        }
        CacheCmd::Expire { image } => {
            let entry = cache_ref(&store, &image)?;
            let moved = cache.expire(&entry.identifier, Utc::now())?;
            store.remove_cache_entry(&entry.identifier)?;
            // As in `Site::expire`: an expired image no longer answers to its identifier.
            release_repository_name(&store, &entry.identifier)?;
            if let Some(sub) = &entry.subscription_id {
                store.set_list_image_state(sub, &entry.identifier, "expired")?;
            }
            if ctx.json() {
                ctx.print_json(
                    &serde_json::json!({"expired": entry.identifier, "moved_to": moved}),
                )?;
            } else {
                println!("expired {}", entry.identifier);
            }
            Ok(0)
        }
        CacheCmd::Verify { image } => {
            let entries = match image {
                Some(r) => vec![cache_ref(&store, &r)?],
                None => store.cache_entries()?,
            };
            let mut results = Vec::new();
            let mut bad = 0;
            for e in entries {
                let expected = Expected {
                    uri: e.file.clone(),
                    size: e.size,
                    sha512: e.sha512.clone(),
                };
                let outcome = cache.verify(&e.identifier, &expected);
                let (ok, code, reason) = match &outcome {
                    Ok(_) => (true, None, String::new()),
                    Err(err) => (false, Some(err.code()), error_chain(err)),
                };
                if !ok {
                    bad += 1;
                    // A corrupted copy is worse than none: the next update downloads it again.
                    cache.remove(&e.identifier)?;
                    store.remove_cache_entry(&e.identifier)?;
                }
                results.push(serde_json::json!({"identifier": e.identifier, "ok": ok, "code": code.map_or("ok", ErrorCode::as_str), "reason": reason}));
                if !ctx.json() {
                    if ok {
                        println!("{}: ok", e.identifier);
                    } else {
                        let code = code.map(ErrorCode::as_str).unwrap_or_default();
                        println!("{}: removed ({code}): {reason}", e.identifier);
                    }
                }
            }
            if ctx.json() {
                ctx.print_json(&results)?;
            }
            Ok(if bad > 0 { 1 } else { 0 })
        }
    }
}

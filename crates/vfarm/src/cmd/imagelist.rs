//! `vfarm imagelist …`, `vfarm subscription …`, `vfarm cache …`: signed HEPiX image lists.
//!
//! The decisions (verification, update rules, streaming downloads) live in `vfarm-imagelist`,
//! the operations in `vfarm_service::imagelists` and `::subscriptions`; this module parses
//! the commands and prints. `remote_lists` runs the same commands against a service.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde::Serialize;
use vfarm_imagelist::create::{EndorserDesc, ListDesc};
use vfarm_imagelist::model::{format_date, ImageList};
use vfarm_imagelist::{verify, EndorserId, Policy, Refusal, TrustStore};
use vfarm_proto::ErrorCode;
use vfarm_service::imagelists::{
    self, CacheDetail, CacheView, Checked, Expired, FromRepository, ListSource, Published,
};
use vfarm_service::subscriptions::{
    self, AddSubscription, Added, Detail, Listed, Removed, Revoke, Revoked, UpdateReport,
    UpdateRequest,
};
use vfarm_service::Caller;

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
        /// The endorser's certificate.
        #[arg(long, value_name = "PEM")]
        cert: PathBuf,
        /// The private key of --cert.
        #[arg(long, value_name = "PEM")]
        key: PathBuf,
        /// Unsigned list (JSON).
        input: PathBuf,
        /// Signed list to write. (Not named `output`: that is the global `--output` flag.)
        #[arg(value_name = "OUT")]
        signed: PathBuf,
        /// Sign even with a certificate S/MIME consumers refuse (no e-mail protection):
        /// the list then verifies nowhere but in tests of that refusal.
        #[arg(long)]
        force: bool,
    },
    /// Verify a signed list: prints the list and its signer, or the precise reason it is refused
    /// (exit 1).
    Verify {
        /// The signed list (S/MIME or JSON).
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
        /// The list's URL (file://, http://, https://).
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
    Show {
        /// Subscription id, id prefix, URL or list identifier.
        subscription: String,
    },
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
    Rm {
        /// Subscription id, id prefix, URL or list identifier.
        subscription: String,
    },
    /// Revoke an image, an endorser or a whole subscription: revoked images leave the cache
    /// and new instances from them are refused.
    Revoke {
        /// What to revoke.
        #[arg(value_enum)]
        kind: RevokeKind,
        /// Image identifier or title, endorser DN, or subscription reference.
        target: String,
        /// Why, kept with the revocation.
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

impl From<RevokeKind> for subscriptions::RevokeKind {
    fn from(k: RevokeKind) -> Self {
        match k {
            RevokeKind::Image => subscriptions::RevokeKind::Image,
            RevokeKind::Endorser => subscriptions::RevokeKind::Endorser,
            RevokeKind::Subscription => subscriptions::RevokeKind::Subscription,
        }
    }
}

#[derive(Subcommand)]
pub enum CacheCmd {
    /// List cached images.
    #[command(alias = "list")]
    Ls,
    /// Show one cached image with its list metadata.
    Show {
        /// The cached image: identifier, title or id prefix.
        image: String,
    },
    /// Move a cached image to the expired area.
    Expire {
        /// The cached image: identifier, title or id prefix.
        image: String,
    },
    /// Re-hash cached images; corrupted copies are deleted (exit 1 if any).
    Verify {
        /// One image (default: all).
        image: Option<String>,
    },
}

/// Print `value` as `json!` did: through a `serde_json::Value`, whose keys are sorted.
pub(crate) fn print_sorted<T: Serialize>(ctx: &Ctx, value: &T) -> Result<()> {
    ctx.print_json(&serde_json::to_value(value)?)
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

// ---------------------------------------------------------------------------------------
// vfarm imagelist

pub fn run_imagelist(ctx: &Ctx, cmd: ImagelistCmd) -> Result<i32> {
    let caller = &Caller::local();
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
            let endorser = cert.as_deref().map(endorser_from_cert).transpose()?;
            let source = match (&file, images.is_empty()) {
                (Some(f), true) => ListSource::Description(Box::new(ListDesc::load(f)?)),
                (None, false) => ListSource::Repository(FromRepository {
                    images,
                    uri: uri.context(
                        "--uri (where the list will be published) is required with --image",
                    )?,
                    title,
                    list_version,
                    image_base_url,
                }),
                (Some(_), false) => bail!("give either --file or --image, not both"),
                (None, true) => bail!("give a description (--file) or repository images (--image)"),
            };
            let list = imagelists::create_list(ctx, caller, source, endorser)?;
            print_created(ctx, &list, out.as_deref())?;
            Ok(0)
        }
        ImagelistCmd::Sign {
            cert,
            key,
            input,
            signed: output,
            force,
        } => {
            let body = crate::cmd::read_input("input", &input)?;
            let signed = imagelists::sign_list(caller, &cert, &key, &body, force)
                .with_context(|| format!("cannot sign {}", input.display()))?;
            std::fs::write(&output, &signed.message)
                .with_context(|| format!("cannot write {}", output.display()))?;
            print_signed(
                ctx,
                &output,
                &serde_json::to_value(&signed.signer)?,
                &signed.identifier,
                &signed.warnings,
            )?;
            Ok(0)
        }
        ImagelistCmd::Verify {
            file,
            ca_dir,
            endorsers,
            at,
        } => {
            let raw = crate::cmd::read_input("file", &file)?;
            let mut policy = Policy::at(imagelists::parse_at(at.as_deref())?);
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
            let raw = crate::cmd::read_input("file", &file)?;
            let name = publish_name(&file, name)?;
            let done = imagelists::publish(ctx, caller, &raw, &name)
                .with_context(|| format!("cannot publish {}", file.display()))?;
            print_published(ctx, &done)?;
            Ok(0)
        }
    }
}

/// The name a list is published under: `--name`, else the file name without extensions.
pub(crate) fn publish_name(file: &Path, name: Option<String>) -> Result<String> {
    match name {
        Some(n) => Ok(n),
        None => Ok(file
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .filter(|n| !n.is_empty())
            .context("cannot derive a name from the file name; give --name")?
            .to_string()),
    }
}

pub(crate) fn endorser_from_cert(path: &Path) -> Result<EndorserDesc> {
    let pem = crate::cmd::read_input("cert", path)?;
    imagelists::endorser_from_pem(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))
}

/// A new list: to `out` (reported), else on stdout.
pub(crate) fn print_created(ctx: &Ctx, list: &ImageList, out: Option<&Path>) -> Result<()> {
    let json = list.to_json_pretty();
    match out {
        Some(p) => {
            std::fs::write(p, &json).with_context(|| format!("cannot write {}", p.display()))?;
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
    Ok(())
}

pub(crate) fn print_signed(
    ctx: &Ctx,
    output: &Path,
    signer: &serde_json::Value,
    identifier: &str,
    warnings: &[String],
) -> Result<()> {
    warn(warnings);
    if ctx.json() {
        ctx.print_json(
            &serde_json::json!({"signed": output, "signer": signer, "identifier": identifier}),
        )
    } else {
        println!(
            "signed {identifier} as {} -> {}",
            signer["subject"].as_str().unwrap_or("?"),
            output.display()
        );
        Ok(())
    }
}

pub(crate) fn print_published(ctx: &Ctx, p: &Published) -> Result<()> {
    warn(&p.warnings);
    if ctx.json() {
        let mut doc = serde_json::to_value(p)?;
        // On stderr as the text form has them; the document stays as it was.
        if let Some(o) = doc.as_object_mut() {
            o.remove("warnings");
        }
        ctx.print_json(&doc)
    } else {
        println!(
            "published {} version {} at {}",
            p.identifier, p.version, p.path
        );
        Ok(())
    }
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
    let caller = &Caller::local();
    match cmd {
        SubscriptionCmd::Add {
            url,
            ca_dir,
            endorsers,
            no_cache,
            hook,
            no_update,
        } => {
            // Paths are this machine's: relative ones are taken from here.
            let ca_dir = std::path::absolute(&ca_dir)
                .with_context(|| format!("bad CA dir {}", ca_dir.display()))?;
            let url = if url.contains("://") {
                url
            } else {
                std::path::absolute(&url)
                    .with_context(|| format!("`{url}` is neither a URL nor a path"))?
                    .display()
                    .to_string()
            };
            let req = AddSubscription {
                url,
                ca_dir,
                endorsers,
                no_cache,
                hook,
                no_update,
            };
            let added = subscriptions::add(ctx, caller, req)?;
            print_added(ctx, &added)
        }
        SubscriptionCmd::Ls => {
            print_subscriptions(ctx, &subscriptions::list(ctx, caller)?)?;
            Ok(0)
        }
        SubscriptionCmd::Show { subscription } => {
            print_detail(ctx, &subscriptions::show(ctx, caller, &subscription)?)?;
            Ok(0)
        }
        SubscriptionCmd::Update {
            subscription,
            all,
            at,
        } => {
            let req = UpdateRequest {
                subscription,
                all,
                at,
            };
            print_reports(ctx, &subscriptions::update(ctx, caller, &req)?)
        }
        SubscriptionCmd::Rm { subscription } => {
            print_removed(ctx, &subscriptions::remove(ctx, caller, &subscription)?)?;
            Ok(0)
        }
        SubscriptionCmd::Revoke {
            kind,
            target,
            reason,
        } => {
            let req = Revoke {
                kind: kind.into(),
                target,
                reason,
            };
            print_revoked(ctx, &subscriptions::revoke(ctx, caller, req)?)?;
            Ok(0)
        }
    }
}

/// A new subscription; exit 1 if its first update was refused or an image not cached.
pub(crate) fn print_added(ctx: &Ctx, added: &Added) -> Result<i32> {
    let row = &added.subscription;
    let Some(report) = &added.update else {
        if ctx.json() {
            ctx.print_json(row)?;
        } else {
            println!("subscribed {} to {}", row.id, row.url);
        }
        return Ok(0);
    };
    if ctx.json() {
        print_sorted(ctx, added)?;
    } else {
        println!("subscribed {} to {}", row.id, row.url);
        print_report(report);
    }
    Ok(i32::from(added.failed()))
}

pub(crate) fn print_subscriptions(ctx: &Ctx, subs: &[Listed]) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(&subs);
    }
    println!(
        "{:<36}  {:<8}  {:<20}  {:<20}  URL",
        "ID", "STATE", "VERSION", "UPDATED"
    );
    for l in subs {
        let s = &l.subscription;
        println!(
            "{:<36}  {:<8}  {:<20}  {:<20}  {}",
            s.id,
            l.state(),
            l.version.as_deref().unwrap_or("-"),
            s.updated
                .as_deref()
                .map(|u| &u[..u.len().min(19)])
                .unwrap_or("-"),
            s.url
        );
    }
    Ok(())
}

pub(crate) fn print_detail(ctx: &Ctx, d: &Detail) -> Result<()> {
    if ctx.json() {
        return print_sorted(ctx, d);
    }
    let s = &d.subscription;
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
    if let Some(l) = &d.list {
        println!(
            "version:     {} (created {}, expires {})",
            l.version, l.created, l.expires
        );
        println!("signer:      {} (CA {})", l.signer_dn, l.signer_ca);
    }
    println!("images:");
    for i in &d.images {
        println!(
            "  {}  {:<9}  {}  {}",
            i.identifier, i.state, i.version, i.title
        );
    }
    Ok(())
}

/// Update reports; exit 1 if any list was refused or any image not cached.
pub(crate) fn print_reports(ctx: &Ctx, reports: &[UpdateReport]) -> Result<i32> {
    if ctx.json() {
        ctx.print_json(&reports)?;
    } else {
        reports.iter().for_each(print_report);
    }
    Ok(i32::from(reports.iter().any(UpdateReport::failed)))
}

pub(crate) fn print_removed(ctx: &Ctx, r: &Removed) -> Result<()> {
    if ctx.json() {
        return print_sorted(ctx, r);
    }
    println!(
        "removed subscription {} ({} cached images expired)",
        r.removed,
        r.expired.len()
    );
    Ok(())
}

pub(crate) fn print_revoked(ctx: &Ctx, r: &Revoked) -> Result<()> {
    if ctx.json() {
        return print_sorted(ctx, r);
    }
    println!(
        "revoked {} {}: {} images revoked, {} removed from the cache",
        r.kind,
        r.target,
        r.revoked_images.len(),
        r.removed_from_cache.len()
    );
    Ok(())
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

// ---------------------------------------------------------------------------------------
// vfarm cache

pub fn run_cache(ctx: &Ctx, cmd: CacheCmd) -> Result<i32> {
    let caller = &Caller::local();
    match cmd {
        CacheCmd::Ls => print_cache(ctx, &imagelists::cache_list(ctx, caller)?)?,
        CacheCmd::Show { image } => {
            print_cache_detail(ctx, &imagelists::cache_show(ctx, caller, &image)?)?
        }
        CacheCmd::Expire { image } => {
            print_expired(ctx, &imagelists::cache_expire(ctx, caller, &image)?)?
        }
        CacheCmd::Verify { image } => {
            return print_checked(
                ctx,
                &imagelists::cache_verify(ctx, caller, image.as_deref())?,
            )
        }
    }
    Ok(0)
}

pub(crate) fn print_cache(ctx: &Ctx, views: &[CacheView]) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(&views);
    }
    println!(
        "{:<36}  {:>12}  {:<9}  {:<16}  TITLE",
        "IDENTIFIER", "SIZE", "STATE", "SHA512"
    );
    for v in views {
        println!(
            "{:<36}  {:>12}  {:<9}  {:<16}  {}",
            v.entry.identifier,
            // Human sizes in tables, as everywhere; bytes in JSON.
            vfarm_core::ByteSize(v.entry.size).to_string(),
            if v.present {
                v.state.as_deref().unwrap_or("-")
            } else {
                "missing"
            },
            &v.entry.sha512[..16.min(v.entry.sha512.len())],
            v.title.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

pub(crate) fn print_cache_detail(ctx: &Ctx, d: &CacheDetail) -> Result<()> {
    if ctx.json() {
        return print_sorted(ctx, d);
    }
    let view = &d.cache;
    println!("identifier:  {}", view.entry.identifier);
    println!("title:       {}", view.title.as_deref().unwrap_or("-"));
    println!("state:       {}", view.state.as_deref().unwrap_or("-"));
    println!(
        "file:        {}{}",
        view.entry.file,
        if view.present { "" } else { " (missing)" }
    );
    println!(
        "size:        {} ({} bytes)",
        vfarm_core::ByteSize(view.entry.size),
        view.entry.size
    );
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
    if let Some(d) = &d.definition {
        println!("uri:         {}", d.uri);
        println!("version:     {}", d.version);
        println!("os:          {} {} {}", d.os, d.os_version, d.arch);
    }
    Ok(())
}

pub(crate) fn print_expired(ctx: &Ctx, e: &Expired) -> Result<()> {
    if ctx.json() {
        return print_sorted(ctx, e);
    }
    println!("expired {}", e.expired);
    Ok(())
}

/// Checked cached images; exit 1 if any copy was corrupted (and removed).
pub(crate) fn print_checked(ctx: &Ctx, results: &[Checked]) -> Result<i32> {
    if ctx.json() {
        print_sorted(ctx, &results)?;
    } else {
        for c in results {
            if c.ok {
                println!("{}: ok", c.identifier);
            } else {
                println!("{}: removed ({}): {}", c.identifier, c.code, c.reason);
            }
        }
    }
    Ok(i32::from(results.iter().any(|c| !c.ok)))
}

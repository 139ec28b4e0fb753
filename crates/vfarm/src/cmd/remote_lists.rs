//! `vfarm --server URL token …` / `imagelist …` / `subscription …` / `cache …`: the same
//! commands against a remote `vfarm serve`, through its REST API, printed as locally.
//! Tokens are each user's own (admins: anyone's); image lists, subscriptions and the cache
//! are for the service's admins.

use anyhow::{bail, Context, Result};
use reqwest::Method as M;
use serde_json::{json, Value};
use vfarm_imagelist::model::ImageList;
use vfarm_service::imagelists::{CacheDetail, CacheView, Checked, Expired, Published};
use vfarm_service::subscriptions::{Added, Detail, Listed, Removed, Revoked, UpdateReport};
use vfarm_service::tokens::{CreatedToken, TokenView};

use crate::cmd::imagelist::{self as local, CacheCmd, ImagelistCmd, SubscriptionCmd};
use crate::cmd::remote::{seg, Client, RemoteArgs};
use crate::cmd::token::{self, TokenCmd};
use crate::ctx::Ctx;

pub fn run_token(ctx: &Ctx, a: &RemoteArgs, cmd: TokenCmd) -> Result<i32> {
    let c = Client::new(a)?;
    match cmd {
        TokenCmd::Create { user, expiry, name } => {
            let body = json!({ "user": user, "name": name, "expiry": expiry });
            let created: CreatedToken = c.json(M::POST, "/api/v1/tokens", Some(body))?;
            token::print_created(ctx, &created)?;
        }
        TokenCmd::Ls { user } => {
            let path = match user {
                Some(u) => format!("/api/v1/tokens?user={}", seg(&u)),
                None => "/api/v1/tokens".into(),
            };
            let rows: Vec<TokenView> = c.json(M::GET, &path, None)?;
            token::print_list(ctx, &rows)?;
        }
        TokenCmd::Revoke { id } => {
            let row: TokenView =
                c.json(M::DELETE, &format!("/api/v1/tokens/{}", seg(&id)), None)?;
            token::print_revoked(ctx, &row)?;
        }
    }
    Ok(0)
}

pub fn run_imagelist(ctx: &Ctx, a: &RemoteArgs, cmd: ImagelistCmd) -> Result<i32> {
    // `create --cert` and `sign --cert/--key` are the list's (the endorser's certificate, the
    // signing key the service holds), and clap also hands them to the global TLS flags of the
    // same names: they are no client identity. These two authenticate with a token.
    let mut list_args = a.clone();
    list_args.cert = None;
    list_args.key = None;
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
            if file.is_some() {
                bail!(
                    "with --server, `imagelist create` lists the service's repository images \
                     (--image); a description (--file) names local files: run it without --server"
                );
            }
            if images.is_empty() {
                bail!("give repository images (--image)");
            }
            let uri =
                uri.context("--uri (where the list will be published) is required with --image")?;
            let cert = match &cert {
                Some(p) => {
                    // Checked here, so a bad file is named as locally.
                    local::endorser_from_cert(p)?;
                    Some(crate::cmd::read_input_text("cert", p)?)
                }
                None => None,
            };
            let c = Client::new(&list_args)?;
            let body = json!({
                "images": images, "uri": uri, "title": title, "list_version": list_version,
                "image_base_url": image_base_url, "cert": cert,
            });
            let v: Value = c.json(M::POST, "/api/v1/imagelists", Some(body))?;
            let list = ImageList::from_json(&serde_json::to_vec(&v)?)
                .context("the service answered with no image list")?;
            local::print_created(ctx, &list, out.as_deref())?;
            Ok(0)
        }
        ImagelistCmd::Sign {
            cert,
            key,
            input,
            signed: output,
            force,
        } => {
            // The certificate and key stay on the service: the paths are its files.
            let body = crate::cmd::read_input_text("input", &input)?;
            let c = Client::new(&list_args)?;
            let v: Value = c.json(
                M::POST,
                "/api/v1/imagelists/sign",
                Some(json!({ "list": body, "cert": cert, "key": key, "force": force })),
            )?;
            let signed = v["signed"]
                .as_str()
                .with_context(|| format!("no signed list in {v}"))?;
            std::fs::write(&output, signed)
                .with_context(|| format!("cannot write {}", output.display()))?;
            let warnings: Vec<String> =
                serde_json::from_value(v["warnings"].clone()).unwrap_or_default();
            local::print_signed(
                ctx,
                &output,
                &v["signer"],
                v["identifier"].as_str().unwrap_or(""),
                &warnings,
            )?;
            Ok(0)
        }
        ImagelistCmd::Verify { .. } => bail!(
            "`imagelist verify` checks a local file against a local CA directory and asks the \
             service nothing: run it without --server (the service verifies every list it \
             subscribes to: `vfarm --server URL subscription update`)"
        ),
        ImagelistCmd::Publish { file, name } => {
            let raw = crate::cmd::read_input_text("file", &file)?;
            let name = local::publish_name(&file, name)?;
            let c = Client::new(a)?;
            let p: Published = c.json(
                M::POST,
                "/api/v1/imagelists/publish",
                Some(json!({ "name": name, "list": raw })),
            )?;
            local::print_published(ctx, &p)?;
            Ok(0)
        }
    }
}

pub fn run_subscription(ctx: &Ctx, a: &RemoteArgs, cmd: SubscriptionCmd) -> Result<i32> {
    let c = Client::new(a)?;
    let path = |r: &str| format!("/api/v1/subscriptions/{}", seg(r));
    match cmd {
        SubscriptionCmd::Add {
            url,
            ca_dir,
            endorsers,
            no_cache,
            hook,
            no_update,
        } => {
            // Paths name the service's files: sent as given, the service wants them absolute.
            let body = json!({
                "url": url, "ca_dir": ca_dir, "endorsers": endorsers, "no_cache": no_cache,
                "hook": hook, "no_update": no_update,
            });
            let added: Added = c.json(M::POST, "/api/v1/subscriptions", Some(body))?;
            local::print_added(ctx, &added)
        }
        SubscriptionCmd::Ls => {
            let subs: Vec<Listed> = c.json(M::GET, "/api/v1/subscriptions", None)?;
            local::print_subscriptions(ctx, &subs)?;
            Ok(0)
        }
        SubscriptionCmd::Show { subscription } => {
            let d: Detail = c.json(M::GET, &path(&subscription), None)?;
            local::print_detail(ctx, &d)?;
            Ok(0)
        }
        SubscriptionCmd::Update {
            subscription,
            all,
            at,
        } => {
            let body = json!({ "subscription": subscription, "all": all, "at": at });
            let reports: Vec<UpdateReport> =
                c.json(M::POST, "/api/v1/subscriptions/update", Some(body))?;
            local::print_reports(ctx, &reports)
        }
        SubscriptionCmd::Rm { subscription } => {
            let r: Removed = c.json(M::DELETE, &path(&subscription), None)?;
            local::print_removed(ctx, &r)?;
            Ok(0)
        }
        SubscriptionCmd::Revoke {
            kind,
            target,
            reason,
        } => {
            let kind = vfarm_service::subscriptions::RevokeKind::from(kind);
            let body = json!({ "kind": kind, "target": target, "reason": reason });
            let r: Revoked = c.json(M::POST, "/api/v1/revocations", Some(body))?;
            local::print_revoked(ctx, &r)?;
            Ok(0)
        }
    }
}

pub fn run_cache(ctx: &Ctx, a: &RemoteArgs, cmd: CacheCmd) -> Result<i32> {
    let c = Client::new(a)?;
    let path = |r: &str, rest: &str| format!("/api/v1/cache/{}{rest}", seg(r));
    match cmd {
        CacheCmd::Ls => {
            let v: Vec<CacheView> = c.json(M::GET, "/api/v1/cache", None)?;
            local::print_cache(ctx, &v)?;
        }
        CacheCmd::Show { image } => {
            let d: CacheDetail = c.json(M::GET, &path(&image, ""), None)?;
            local::print_cache_detail(ctx, &d)?;
        }
        CacheCmd::Expire { image } => {
            let e: Expired = c.json(M::POST, &path(&image, "/expire"), None)?;
            local::print_expired(ctx, &e)?;
        }
        CacheCmd::Verify { image } => {
            let v: Vec<Checked> = c.json(
                M::POST,
                "/api/v1/cache/verify",
                Some(json!({ "image": image })),
            )?;
            return local::print_checked(ctx, &v);
        }
    }
    Ok(0)
}

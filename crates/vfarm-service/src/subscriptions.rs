//! Subscriptions to signed image lists: add, list, show, update (fetch, verify and apply
//! new versions, caching their images), remove, and revocations of images, endorsers and
//! subscriptions. Over the API all of it is for admins: a subscription names a CA
//! directory, a hook command and `file://` URLs on the service's machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use vfarm_imagelist::cache::{Cache, Expected, FetchOptions};
use vfarm_imagelist::hooks::{Event, EventType, Hook};
use vfarm_imagelist::model::{format_date, Image, ImageList};
use vfarm_imagelist::smime::SignedMessage;
use vfarm_imagelist::subscription::{decide, expired_by_time, Current, Decision};
use vfarm_imagelist::{verify, EndorserId, Policy, Refusal, TrustStore};
use vfarm_proto::ErrorCode;
use vfarm_store::imagelists::{
    record_list, CacheRow, EndorserRow, ImageDefRow, ListInstanceRow, NewListInstance,
    SubscriptionRow,
};
use vfarm_store::Store;

use crate::imagelists::{
    cache, error_chain, invalid, release_repository_name, repository_name_of, ADMIN_ONLY,
};
use crate::{Caller, Env};

/// `subscription add`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AddSubscription {
    /// The list's URL: http://, https://, or file:// (or an absolute path) on the service's
    /// machine.
    pub url: String,
    /// IGTF CA directory the list must chain to (an absolute path on the service's machine).
    #[schema(value_type = String)]
    pub ca_dir: PathBuf,
    /// Authorised signer DNs (one-line form). Without any, the first accepted list's signer
    /// (DN and CA) becomes the only endorser.
    #[serde(default)]
    pub endorsers: Vec<String>,
    /// Do not cache new images automatically (they are recorded as available).
    #[serde(default)]
    pub no_cache: bool,
    /// Command run on image events with VMCATCHER_EVENT_* variables, on the service's
    /// machine (default: the service's $VMCATCHER_CACHE_EVENT).
    pub hook: Option<String>,
    /// Only record the subscription; do not fetch now.
    #[serde(default)]
    pub no_update: bool,
}

/// A new subscription and its first update (none with `no_update`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SubscriptionAdded)]
pub struct Added {
    #[schema(value_type = Object)]
    pub subscription: SubscriptionRow,
    pub update: Option<UpdateReport>,
}

impl Added {
    /// Some list was refused or some image could not be cached.
    pub fn failed(&self) -> bool {
        self.update.as_ref().is_some_and(UpdateReport::failed)
    }
}

/// A subscription as listed: its row and the version of its accepted list.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SubscriptionListed)]
pub struct Listed {
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub subscription: SubscriptionRow,
    /// The accepted list's version, if any was accepted.
    pub version: Option<String>,
}

impl Listed {
    /// `revoked`, `refused` (the last update) or `ok`.
    pub fn state(&self) -> &'static str {
        if self.subscription.revoked.is_some() {
            "revoked"
        } else if self.subscription.last_error.is_some() {
            "refused"
        } else {
            "ok"
        }
    }
}

/// A subscription with its accepted list and that list's images.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SubscriptionDetail)]
pub struct Detail {
    #[schema(value_type = Vec<Object>)]
    pub images: Vec<ImageDefRow>,
    #[schema(value_type = Option<Object>)]
    pub list: Option<ListInstanceRow>,
    #[schema(value_type = Object)]
    pub subscription: SubscriptionRow,
}

/// A removed subscription and the cached images it took along (expired).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SubscriptionRemoved)]
pub struct Removed {
    pub expired: Vec<String>,
    pub removed: String,
}

/// What can be revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RevokeKind {
    Image,
    Endorser,
    Subscription,
}

/// `subscription revoke`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = RevokeRequest)]
pub struct Revoke {
    pub kind: RevokeKind,
    /// Image identifier or title, endorser DN, or subscription reference.
    pub target: String,
    pub reason: Option<String>,
}

/// A revocation and what it took away.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Revocation)]
pub struct Revoked {
    pub kind: String,
    pub removed_from_cache: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub revoked_images: Vec<ImageDefRow>,
    pub target: String,
}

fn normalise_url(url: &str) -> Result<String> {
    if url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file://") {
        return Ok(url.to_string());
    }
    // A plain path is taken as a local file.
    let p = Path::new(url);
    if !p.is_absolute() || !p.exists() {
        return Err(invalid(
            "url",
            format!("`{url}` is not an http://, https:// or file:// URL, nor an existing file"),
        ));
    }
    Ok(format!("file://{}", p.display()))
}

/// Subscribe to a list and (unless `no_update`) run the first update.
pub fn add(env: &Env, caller: &Caller, req: AddSubscription) -> Result<Added> {
    caller.require_admin(ADMIN_ONLY)?;
    if !req.ca_dir.is_absolute() {
        return Err(invalid(
            "ca_dir",
            format!(
                "the CA dir `{}` must be an absolute path on the service's machine",
                req.ca_dir.display()
            ),
        ));
    }
    TrustStore::load(&req.ca_dir)?;
    let url = normalise_url(&req.url)?;
    let store = env.store()?;
    let row = SubscriptionRow {
        id: vfarm_imagelist::subscription::new_id(),
        url,
        ca_dir: req.ca_dir.display().to_string(),
        list_identifier: None,
        title: None,
        auto_cache: !req.no_cache,
        hook: req.hook,
        created: vfarm_store::now(),
        updated: None,
        checked: None,
        last_error: None,
        revoked: None,
        endorsers: req
            .endorsers
            .into_iter()
            .map(|dn| EndorserRow { dn, ca: None })
            .collect(),
    };
    store.add_subscription(&row)?;
    store.event(
        &caller.user,
        "subscription.add",
        &row.id,
        &serde_json::json!({"url": row.url}),
    )?;
    if req.no_update {
        return Ok(Added {
            subscription: row,
            update: None,
        });
    }
    let report = update_one(env, caller, &store, &row, Utc::now())?;
    Ok(Added {
        subscription: store.find_subscription(&row.id)?,
        update: Some(report),
    })
}

pub fn list(env: &Env, caller: &Caller) -> Result<Vec<Listed>> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    store
        .subscriptions()?
        .into_iter()
        .map(|s| {
            Ok(Listed {
                version: store.latest_list(&s.id)?.map(|l| l.version),
                subscription: s,
            })
        })
        .collect()
}

pub fn show(env: &Env, caller: &Caller, reference: &str) -> Result<Detail> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    let s = store.find_subscription(reference)?;
    Ok(Detail {
        list: store.latest_list(&s.id)?,
        images: store.list_images(Some(&s.id))?,
        subscription: s,
    })
}

/// Which subscriptions `subscription update` fetches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SubscriptionUpdateRequest)]
pub struct UpdateRequest {
    /// Subscription id, id prefix, URL or list identifier.
    pub subscription: Option<String>,
    /// Every subscription.
    #[serde(default)]
    pub all: bool,
    /// Judge validity at this time (YYYY-MM-DDTHH:MM:SSZ) instead of now.
    pub at: Option<String>,
}

/// Fetch, verify and apply new list versions: one report per subscription.
pub fn update(env: &Env, caller: &Caller, req: &UpdateRequest) -> Result<Vec<UpdateReport>> {
    caller.require_admin(ADMIN_ONLY)?;
    let now = crate::imagelists::parse_at(req.at.as_deref())?;
    let store = env.store()?;
    let subs = match (&req.subscription, req.all) {
        (Some(_), true) => {
            return Err(invalid(
                "all",
                "name a subscription or give --all, not both",
            ))
        }
        (Some(r), false) => vec![store.find_subscription(r)?],
        (None, true) => store.subscriptions()?,
        (None, false) => return Err(invalid("subscription", "name a subscription or give --all")),
    };
    subs.iter()
        .map(|s| update_one(env, caller, &store, s, now))
        .collect()
}

/// Remove a subscription; its cached images are expired.
pub fn remove(env: &Env, caller: &Caller, reference: &str) -> Result<Removed> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    let s = store.find_subscription(reference)?;
    let cache = cache(env)?;
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
        &caller.user,
        "subscription.rm",
        &s.id,
        &serde_json::json!({"expired": expired}),
    )?;
    Ok(Removed {
        expired,
        removed: s.id,
    })
}

/// Revoke an image, an endorser or a whole subscription: revoked images leave the cache and
/// new instances from them are refused.
pub fn revoke(env: &Env, caller: &Caller, req: Revoke) -> Result<Revoked> {
    caller.require_admin(ADMIN_ONLY)?;
    let store = env.store()?;
    let (kind, target) = match req.kind {
        RevokeKind::Image => ("image", store.find_list_image(&req.target)?.identifier),
        RevokeKind::Endorser => ("endorser", req.target),
        RevokeKind::Subscription => ("subscription", store.find_subscription(&req.target)?.id),
    };
    let revoked = store.revoke(kind, &target, req.reason.as_deref())?;
    let cache = cache(env)?;
    let mut removed = Vec::new();
    for img in &revoked {
        if cache.remove(&img.identifier)? {
            removed.push(img.identifier.clone());
        }
        store.remove_cache_entry(&img.identifier)?;
    }
    store.event(
        &caller.user,
        "imagelist.revoke",
        &target,
        &serde_json::json!({"kind": kind, "images": revoked.iter().map(|i| &i.identifier).collect::<Vec<_>>(), "reason": req.reason}),
    )?;
    Ok(Revoked {
        kind: kind.to_string(),
        removed_from_cache: removed,
        revoked_images: revoked,
        target,
    })
}

/// What one subscription update did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = SubscriptionUpdate)]
pub struct UpdateReport {
    pub subscription: String,
    pub url: String,
    /// `accepted`, `unchanged` or `refused`.
    pub result: String,
    pub version: Option<String>,
    pub refused: Option<RefusedDoc>,
    pub new: Vec<String>,
    pub replaced: Vec<String>,
    pub expired: Vec<String>,
    pub cached: Vec<String>,
    pub failed: Vec<FailedDoc>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefusedDoc {
    pub code: ErrorCode,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailedDoc {
    pub image: String,
    pub code: ErrorCode,
    pub reason: String,
}

impl UpdateReport {
    /// The list was refused or an image could not be cached (the CLI exits 1).
    pub fn failed(&self) -> bool {
        self.refused.is_some() || !self.failed.is_empty()
    }
}

struct Site<'a> {
    store: &'a Store,
    cache: Cache,
    hook: Option<Hook>,
    session: String,
    sub: &'a SubscriptionRow,
    env: &'a Env,
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
            let repo = self.env.images()?;
            let name = repository_name_of(&img.identifier);
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
    env: &Env,
    caller: &Caller,
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
        cache: cache(env)?,
        hook,
        session: vfarm_imagelist::subscription::new_id(),
        sub,
        env,
    };
    let mut report = UpdateReport {
        subscription: sub.id.clone(),
        url: sub.url.clone(),
        result: "refused".into(),
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
        report.result = "refused".into();
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
            report.result = "unchanged".into();
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
        &caller.user,
        "subscription.update",
        &sub.id,
        &serde_json::json!({"version": l.version, "sha512": verified.raw_sha512}),
    )?;
    report.result = "accepted".into();
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

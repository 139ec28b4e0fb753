//! The site CA in `<data>/ca/`: create it, issue host and user certificates, revoke, publish
//! the CRL — each recorded in the audit log with the caller. Where the issued key and
//! certificate are written is the front end's business (the CLI writes them to files).

use std::path::PathBuf;

use anyhow::Result;
use vfarm_auth::ca::{ca_dir, Issued, SiteCa};

use crate::{Caller, Env};

fn audit(
    env: &Env,
    caller: &Caller,
    action: &str,
    object: &str,
    detail: serde_json::Value,
) -> Result<()> {
    let method = if caller.local { "local" } else { "api" };
    env.store()?
        .audit(&caller.user, method, action, object, "ok", &detail)?;
    Ok(())
}

/// The site CA of this data dir.
pub fn open(env: &Env) -> Result<SiteCa> {
    Ok(SiteCa::open(&ca_dir(&env.data_dir))?)
}

/// Create the site CA (refused when one exists).
pub fn init(env: &Env, caller: &Caller, subject: &str, days: u32) -> Result<SiteCa> {
    caller.require_admin("creating the site CA")?;
    let ca = SiteCa::init(&ca_dir(&env.data_dir), subject, days, chrono::Utc::now())?;
    let info = ca.info()?;
    audit(
        env,
        caller,
        "ca.init",
        &info.subject,
        serde_json::json!({ "hash": info.hash }),
    )?;
    Ok(ca)
}

/// A host certificate (serverAuth and clientAuth) for `hostname`.
pub fn issue_host(env: &Env, caller: &Caller, hostname: &str, days: u32) -> Result<Issued> {
    caller.require_admin("issuing host certificates")?;
    let issued = open(env)?.issue_host(hostname, days, chrono::Utc::now())?;
    let detail = serde_json::json!({ "serial": issued.serial });
    audit(env, caller, "ca.issue-host", &issued.subject, detail)?;
    Ok(issued)
}

/// A user certificate for `subject` (a DN in the CA's namespace).
pub fn issue_user(env: &Env, caller: &Caller, subject: &str, days: u32) -> Result<Issued> {
    caller.require_admin("issuing user certificates")?;
    let issued = open(env)?.issue_user(subject, days, chrono::Utc::now())?;
    let detail = serde_json::json!({ "serial": issued.serial });
    audit(env, caller, "ca.issue-user", &issued.subject, detail)?;
    Ok(issued)
}

/// Revoke the certificate with `serial`; the new CRL is published at once. Returns the
/// revoked subject and the CRL's path.
pub fn revoke(env: &Env, caller: &Caller, serial: &str) -> Result<(String, PathBuf)> {
    caller.require_admin("revoking certificates")?;
    let (subject, crl) = open(env)?.revoke(serial, chrono::Utc::now())?;
    audit(
        env,
        caller,
        "ca.revoke",
        &subject,
        serde_json::json!({ "serial": serial }),
    )?;
    Ok((subject, crl))
}

/// Publish a fresh CRL (its next update moves forward).
pub fn publish_crl(env: &Env, caller: &Caller) -> Result<PathBuf> {
    caller.require_admin("publishing the CRL")?;
    Ok(open(env)?.publish(chrono::Utc::now())?)
}
